"""The fastrnn / torch.nn report of a benchmark run: ratio table, JSON and PNG plot.

``conftest.py`` builds a *run* (a plain dict, the JSON written by ``--bench-out``) from the
benchmark entries and calls :func:`format_table`, :func:`write_json` and :func:`plot`.
Re-plot a saved run without timing anything again::

    python benchmarks/ratio_report.py benchmarks/results/cpu.json   # writes cpu.png beside it

A run::

    {"device": "CPU", "device_type": "cpu", "torch": "2.13.0+cpu", "triton": "3.9.0" | null,
     "threads": 1, "fastrnn_backend": "auto", "tier_forced": null, "aa": false,
     "python": "3.11.2", "lead": "paired_ratio_median", "cpus": 2,
     "load": {"start": [1.03, 1.5, 2.3], "end": [1.05, 1.3, 2.1]},   # os.getloadavg()
     "cases": [{"case": "LSTM-fwd-T100-B1-H128", "kind": "LSTM", "pass": "fwd", "shape": {...},
                "dtype": "fp32", "backend": "native", "tier": null, "rounds": 500,
                "warmup_rounds": 50, "torch_median_ms": 0.91, "torch_min_ms": 0.88,
                "fastrnn_median_ms": 0.92, "fastrnn_min_ms": 0.88,
                "paired_ratio_median": 1.003, "paired_ratio_q1": 0.98, "paired_ratio_q3": 1.02,
                "ratio_of_mins": 1.00, "ratio_of_medians": 1.01,
                # with "aa": true, the A/A control (second torch.nn / torch.nn):
                "aa_ratio_median": ..., "aa_ratio_q1": ..., "aa_ratio_q3": ..., "aa_ratio_of_mins": ...}, ...],
     "skipped": [{"reason": "...", "count": 48}]}

Every ratio is fastrnn time / torch.nn time, both timed in the same rounds: < 1 means
fastrnn is faster. The table leads with the *paired ratio*: the median over the rounds of
``fastrnn_i / torch_i``, where round ``i`` ran one of each back to back (alternating which
goes first), so a slowdown of the machine that hits both cancels in that round's ratio.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PASSES = ("fwd", "fwd+bwd")

#: What the table leads with, and why: printed above it.
EXPLANATION = (
    "ratio: median over the rounds of fastrnn time / torch.nn time in the same round (one round of each, back",
    "to back, alternating which goes first: drift of the machine that slows both cancels in each round's ratio);",
    "IQR: the middle half of those per-round ratios; of mins: fastrnn's fastest round / torch.nn's fastest.",
)


def header_line(run: dict) -> str:
    triton = run.get("triton") or "not installed"
    forced = f"  FASTRNN_TIER={run['tier_forced']}" if run.get("tier_forced") else ""
    backend = run["fastrnn_backend"]
    if backend == "auto":
        backend = "auto (chosen per case: backend column)"
    aa = "  A/A control on" if run.get("aa") else ""
    return (
        f"device: {run['device']}  torch {run['torch']}  triton {triton}  threads: {run['threads']}  "
        f"fastrnn backend: {backend}{forced}{aa}"
    )


def progress_line(done: int, total: int, case: dict) -> str:
    aa = f"  A/A {case['aa_ratio_median']:.3f}" if "aa_ratio_median" in case else ""
    return (
        f"[{done:>3}/{total}] {case['case']:<28} {case['backend']:<9} torch.nn {case['torch_median_ms']:9.3f} ms  "
        f"fastrnn {case['fastrnn_median_ms']:9.3f} ms  ratio {case['paired_ratio_median']:.3f}{aa}  "
        f"({case['rounds']} rounds)"
    )


def variant_progress_line(done: int, total: int, case: dict) -> str:
    return (
        f"[{done:>3}/{total}] {case['case']:<34} {case['backend']:<9} baseline {case['baseline_median_ms']:9.3f} ms  "
        f"fastrnn {case['fastrnn_median_ms']:9.3f} ms  ratio {case['ratio_median']:.3f} (target <= {case['target']})  "
        f"({case['rounds']} rounds)"
    )


def format_variant_table(run: dict) -> list[str]:
    """The variant cases: fastrnn / their baseline (paired ratio), the target, and for the
    LayerNorm layers fastrnn / torch.nn's layer without LayerNorm (scale)."""
    cases = run["variant_cases"]
    width = max([len("case")] + [len(c["case"]) for c in cases])
    head = (f"{'case':<{width}}  {'backend':<9}  {'baseline':<31}  {'base ms':>8}  {'fastrnn ms':>10}  "
            f"{'ratio':>6} {'IQR':>11}  {'target':>6}  {'met':>3}  {'vs torch.nn':>11}")
    lines = [head, "-" * len(head)]
    for c in cases:
        scale = _fmt(c.get("scale_ratio_median"), 11, 3)
        met = "yes" if c["ratio_median"] <= c["target"] else "NO"
        lines.append(f"{c['case']:<{width}}  {c['backend']:<9}  {c['baseline']:<31}  {c['baseline_median_ms']:8.3f}  "
                     f"{c['fastrnn_median_ms']:10.3f}  {c['ratio_median']:6.3f} {_iqr(c, 'ratio'):>11}  "
                     f"{c['target']:6.2f}  {met:>3}  {scale}")
    missed = [c for c in cases if c["ratio_median"] > c["target"]]
    lines += ["", f"{len(cases) - len(missed)} of {len(cases)} cases meet their target"
              + (f"; missed: {', '.join(c['case'] for c in missed)}" if missed else "")]
    return lines


def variant_markdown(run: dict) -> str:
    """The variant cases as a Markdown table for the README: one row per variant, layer and
    pass, one column per shape (in the run's order), each cell the paired-ratio median
    (fastrnn / baseline), marked with * where it misses the target."""
    cases = run["variant_cases"]

    def label(shape: dict) -> str:
        return " ".join(f"{k}={shape[k]}" for k in ("T", "B", "I", "H") if k != "I" or shape["I"] != shape["H"])

    shapes = list(dict.fromkeys(label(c["shape"]) for c in cases))
    rows: dict = {}
    for c in cases:
        key = (c["variant"], c["kind"], c["pass"], c["baseline"], c["target"])
        rows.setdefault(key, {})[label(c["shape"])] = c["ratio_median"]
    lines = ["| variant | layer | pass | baseline | target | " + " | ".join(shapes) + " |",
             "|---|---|---|---|---|" + "---|" * len(shapes)]
    for (variant, kind, pass_, baseline, target), ratios in rows.items():
        cells = [("—" if shape not in ratios else f"{ratios[shape]:.2f}" + ("*" if ratios[shape] > target else ""))
                 for shape in shapes]
        lines.append(f"| {variant} | {kind} | {pass_} | {baseline} | {target:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v, w, p=2):
    return f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}}"


def _iqr(c: dict, prefix: str) -> str:
    return f"{c[prefix + '_q1']:.3f}-{c[prefix + '_q3']:.3f}"


def format_table(run: dict) -> list[str]:
    """The ratio table as text lines: one row per case, led by the paired-ratio median."""
    cases = run["cases"]
    width = max([len("case")] + [len(c["case"]) for c in cases])
    tiers = any(c.get("tier") for c in cases)
    aa = any("aa_ratio_median" in c for c in cases)
    groups = (f"{'':<{width}}  {'':<9}  {'torch.nn ms':^17}  {'fastrnn ms':^17}  {'ratio fastrnn / torch.nn':^27}"
              + (f"  {'A/A torch.nn / torch.nn':^23}" if aa else ""))
    head = (f"{'case':<{width}}  {'backend':<9}  {'median':>8} {'min':>8}  {'median':>8} {'min':>8}  "
            f"{'ratio':>6} {'IQR':>11} {'of mins':>8}" + (f"  {'ratio':>6} {'IQR':>11}" if aa else "")
            + f"  {'rounds':>6}" + ("  tier" if tiers else ""))
    lines = [header_line(run), *EXPLANATION, "", groups, head, "-" * len(head)]
    load = run.get("load") or {}
    if load.get("start") and load.get("end"):
        lines.insert(1, f"load average (1, 5, 15 min) at the start {' '.join(f'{v:.2f}' for v in load['start'])}, "
                        f"at the end {' '.join(f'{v:.2f}' for v in load['end'])}; CPUs: {run.get('cpus', '?')}")
    for c in cases:
        line = (f"{c['case']:<{width}}  {c['backend']:<9}  {_fmt(c['torch_median_ms'], 8, 3)} "
                f"{_fmt(c['torch_min_ms'], 8, 3)}  {_fmt(c['fastrnn_median_ms'], 8, 3)} "
                f"{_fmt(c['fastrnn_min_ms'], 8, 3)}  {_fmt(c['paired_ratio_median'], 6, 3)} "
                f"{_iqr(c, 'paired_ratio'):>11} {_fmt(c['ratio_of_mins'], 8, 3)}")
        if aa:
            line += f"  {_fmt(c.get('aa_ratio_median'), 6, 3)} {_iqr(c, 'aa_ratio') if 'aa_ratio_q1' in c else '-':>11}"
        line += f"  {c['rounds']:>6}"
        if tiers:
            line += f"  {c.get('tier') or '-'}"
        lines.append(line)
    worst = max(cases, key=lambda c: c["paired_ratio_median"])
    best = min(cases, key=lambda c: c["paired_ratio_median"])
    worst_min = max(cases, key=lambda c: c["ratio_of_mins"])
    lines += ["", f"worst ratio {worst['paired_ratio_median']:.3f} ({worst['case']}), best "
                  f"{best['paired_ratio_median']:.3f} ({best['case']}); worst ratio of mins "
                  f"{worst_min['ratio_of_mins']:.3f} ({worst_min['case']}); < 1 means fastrnn is faster"]
    if aa:
        medians = [c["aa_ratio_median"] for c in cases if "aa_ratio_median" in c]
        mins = [c["aa_ratio_of_mins"] for c in cases if "aa_ratio_of_mins" in c]
        lines.append(f"A/A control (a second torch.nn module against torch.nn, same interleaving): ratios "
                     f"{min(medians):.3f}-{max(medians):.3f}, ratios of mins {min(mins):.3f}-{max(mins):.3f}: "
                     "the noise floor of this run")
    return lines


def markdown_table(run: dict) -> str:
    """The same table as markdown, for the README."""
    aa = any("aa_ratio_median" in c for c in run["cases"])
    rows = ["| case | backend | torch.nn median (ms) | fastrnn median (ms) | ratio (paired median) | IQR "
            "| ratio of min times |" + (" A/A ratio |" if aa else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if aa else "")]
    for c in run["cases"]:
        row = (f"| {c['case']} | {c['backend']} | {c['torch_median_ms']:.3f} | {c['fastrnn_median_ms']:.3f} | "
               f"**{c['paired_ratio_median']:.3f}** | {_iqr(c, 'paired_ratio')} | {c['ratio_of_mins']:.3f} |")
        if aa:
            row += f" {c['aa_ratio_median']:.3f} |" if "aa_ratio_median" in c else " - |"
        rows.append(row)
    return "\n".join(rows)


def write_json(run: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1) + "\n")


def _label(case: dict) -> str:
    s = case["shape"]
    label = f"T={s['T']} B={s['B']} H={s['H']}"
    if s["I"] != s["H"]:
        label = f"T={s['T']} B={s['B']} I={s['I']} H={s['H']}"
    if s.get("layers", 1) > 1 or s.get("bidirectional"):
        label += f" L{s['layers']}{' bi' if s.get('bidirectional') else ''}"
    if s.get("packed"):
        label += " packed"
    if case.get("dtype", "fp32") != "fp32":
        label += f" {case['dtype']}"
    if case.get("backend"):
        label += f" [{case['backend']}]"
    return label


def plot(run: dict, path: Path) -> None:
    """Bars of the paired-ratio median per case from 1.0, a whisker over the interquartile
    range of the paired ratios, a diamond at the ratio of minimum times (and a grey dot at the
    A/A control's ratio when it ran); one panel per (kind, pass), a line at 1.0, device in
    the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    cases = run["cases"]
    if not cases:
        raise ValueError("no timed case in this run: nothing to plot")
    aa = any("aa_ratio_median" in c for c in cases)
    kinds = list(dict.fromkeys(c["kind"] for c in cases))
    passes = [p for p in PASSES if any(c["pass"] == p for c in cases)]
    per_panel = max(sum(1 for c in cases if c["kind"] == k and c["pass"] == p) for k in kinds for p in passes)
    fig, axes = plt.subplots(len(kinds), len(passes), squeeze=False, sharex=True,
                             figsize=(6.5 * len(passes), max(2.4, 0.8 + len(kinds) * (0.5 + 0.32 * per_panel))))
    ratios = [v for c in cases for v in (c["paired_ratio_q1"], c["paired_ratio_q3"], c["ratio_of_mins"])]
    if aa:
        ratios += [c["aa_ratio_median"] for c in cases if "aa_ratio_median" in c]
    low, high = min(min(ratios), 1.0) / 1.3, max(max(ratios), 1.0) * 1.3
    ticks = [t for t in (0.25, 0.5, 0.75, 0.9, 1, 1.1, 1.5, 2, 3, 5, 10, 20, 50) if low <= t <= high]
    if high / low < 2:  # a tight range (every case near 1): finer ticks
        ticks = [t for t in (0.8, 0.85, 0.9, 0.95, 1, 1.05, 1.1, 1.15, 1.2, 1.3) if low <= t <= high]
    for row, kind in enumerate(kinds):
        for col, direction in enumerate(passes):
            ax = axes[row][col]
            panel = [c for c in cases if c["kind"] == kind and c["pass"] == direction]
            ys = list(range(len(panel)))
            values = [c["paired_ratio_median"] for c in panel]
            colors = ["tab:green" if v <= 1.0 else "tab:red" for v in values]
            # bars grow from 1.0 (equal time) to the ratio: right of the line fastrnn is slower
            ax.barh(ys, [v - 1.0 for v in values], left=1.0, color=colors, alpha=0.6, height=0.7)
            spread = [[v - c["paired_ratio_q1"] for v, c in zip(values, panel)],
                      [c["paired_ratio_q3"] - v for v, c in zip(values, panel)]]
            ax.errorbar(values, ys, xerr=spread, fmt="none", ecolor="black", elinewidth=1, capsize=3)
            ax.plot([c["ratio_of_mins"] for c in panel], ys, "D", color="tab:blue", markersize=3.5)
            if aa:
                pts = [(c["aa_ratio_median"], y) for c, y in zip(panel, ys) if "aa_ratio_median" in c]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="grey", markersize=4)
            for y, v, c in zip(ys, values, panel):
                right = max(v, c["paired_ratio_q3"])
                ax.text(right if v > 1 else min(v, c["paired_ratio_q1"]), y, f" {v:.3f} ", va="center",
                        fontsize=8, ha="left" if v > 1 else "right")
            ax.axvline(1.0, color="black", linewidth=1)
            ax.set_yticks(ys, [_label(c) for c in panel], fontsize=8)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlim(low, high)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(f"{kind} {direction}", fontsize=10)
            if row == len(kinds) - 1:
                ax.set_xlabel("fastrnn time / torch.nn time")
    fig.suptitle(f"fastrnn vs torch.nn on {run['device']} (torch {run['torch']}, threads: {run['threads']}), "
                 "interleaved rounds")
    note = ("bar: median of the per-round paired ratios (green: fastrnn faster); whisker: their interquartile "
            "range; blue diamond: ratio of minimum times")
    if aa:
        note += "; grey dot: A/A control (torch.nn / torch.nn)"
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python benchmarks/ratio_report.py RUN.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(argv[0])
    run = json.loads(source.read_text())
    out = Path(argv[1]) if len(argv) == 2 else source.with_suffix(".png")
    if run.get("cases"):
        print("\n".join(format_table(run)))
        plot(run, out)
        print(f"plot: {out}")
    if run.get("variant_cases"):
        print("\n".join(format_variant_table(run)))
        print()
        print(variant_markdown(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
