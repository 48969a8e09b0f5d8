"""The fastrnn / torch.nn report of a benchmark run: ratio table, JSON and PNG plot.

``conftest.py`` builds a *run* (a plain dict, the JSON written by ``--bench-out``) from the
pytest-benchmark results and calls :func:`format_table`, :func:`write_json` and
:func:`plot`. Re-plot a saved run without timing anything again::

    python benchmarks/ratio_report.py benchmarks/results/cpu.json   # writes cpu.png beside it

A run::

    {"device": "CPU", "device_type": "cpu", "torch": "2.13.0+cpu", "triton": "3.9.0" | null,
     "threads": 2, "fastrnn_backend": "reference", "tier_forced": null, "python": "3.11.2",
     "cases": [{"case": "LSTM-fwd-T100-B1-H128", "kind": "LSTM", "pass": "fwd", "shape": {...},
                "dtype": "fp32", "tier": null, "rounds": {"torch": 200, "fastrnn": 200},
                "torch_median_ms": 0.91, "fastrnn_median_ms": 5.51, "ratio": 6.05,
                "torch_min_ms": 0.88, "fastrnn_min_ms": 5.40, "ratio_of_mins": 6.14}, ...],
     "skipped": [{"reason": "...", "count": 96}]}

Ratio = fastrnn time / torch.nn time, both measured in the same run: < 1 means fastrnn is
faster. The ratio of minimum times is steadier on a shared machine (noise only adds time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PASSES = ("fwd", "fwd+bwd")


def header_line(run: dict) -> str:
    triton = run.get("triton") or "not installed"
    forced = f"  FASTRNN_TIER={run['tier_forced']}" if run.get("tier_forced") else ""
    return (
        f"device: {run['device']}  torch {run['torch']}  triton {triton}  threads: {run['threads']}  "
        f"fastrnn backend: {run['fastrnn_backend']}{forced}"
    )


def format_table(run: dict) -> list[str]:
    """The ratio table as text lines: one row per case, medians and ratios."""
    cases = run["cases"]
    width = max([len("case")] + [len(c["case"]) for c in cases])
    tiers = any(c.get("tier") for c in cases)
    head = (f"{'case':<{width}}  {'torch.nn ms':>11}  {'fastrnn ms':>10}  {'ratio':>6}  {'ratio of mins':>13}"
            f"  {'rounds':>7}" + ("  tier" if tiers else ""))
    lines = [header_line(run), "", head, "-" * len(head)]
    fmt = lambda v, w, p=2: f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for c in cases:
        rounds = c.get("rounds") or {}
        line = (f"{c['case']:<{width}}  {fmt(c['torch_median_ms'], 11)}  {fmt(c['fastrnn_median_ms'], 10)}  "
                f"{fmt(c['ratio'], 6)}  {fmt(c['ratio_of_mins'], 13)}  {rounds.get('fastrnn', '-'):>7}")
        if tiers:
            line += f"  {c.get('tier') or '-'}"
        lines.append(line)
    ratios = [c["ratio"] for c in cases if c["ratio"] is not None]
    if ratios:
        worst = max(cases, key=lambda c: c["ratio"] if c["ratio"] is not None else -1)
        lines += ["", f"worst ratio {worst['ratio']:.2f} ({worst['case']}), best {min(ratios):.2f}; "
                      "< 1 means fastrnn is faster"]
    return lines


def markdown_table(run: dict) -> str:
    """The same table as markdown, for the README."""
    rows = ["| case | torch.nn median (ms) | fastrnn median (ms) | ratio | ratio of min times |",
            "|---|---|---|---|---|"]
    for c in run["cases"]:
        if c["ratio"] is None:
            continue
        rows.append(f"| {c['case']} | {c['torch_median_ms']:.2f} | {c['fastrnn_median_ms']:.2f} | "
                    f"**{c['ratio']:.2f}** | {c['ratio_of_mins']:.2f} |")
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
    return label


def plot(run: dict, path: Path) -> None:
    """Bars of the ratio per case, one panel per (kind, pass), a line at 1.0, device in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    cases = [c for c in run["cases"] if c["ratio"] is not None]
    if not cases:
        raise ValueError("no timed case in this run: nothing to plot")
    kinds = list(dict.fromkeys(c["kind"] for c in cases))
    passes = [p for p in PASSES if any(c["pass"] == p for c in cases)]
    per_panel = max(sum(1 for c in cases if c["kind"] == k and c["pass"] == p) for k in kinds for p in passes)
    fig, axes = plt.subplots(len(kinds), len(passes), squeeze=False, sharex=True,
                             figsize=(6.0 * len(passes), max(2.4, 0.8 + len(kinds) * (0.5 + 0.32 * per_panel))))
    ratios = [c["ratio"] for c in cases] + [c["ratio_of_mins"] for c in cases if c["ratio_of_mins"]]
    low, high = min(min(ratios), 1.0) / 1.3, max(max(ratios), 1.0) * 1.3
    ticks = [t for t in (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50) if low <= t <= high]
    for row, kind in enumerate(kinds):
        for col, direction in enumerate(passes):
            ax = axes[row][col]
            panel = [c for c in cases if c["kind"] == kind and c["pass"] == direction]
            ys = range(len(panel))
            values = [c["ratio"] for c in panel]
            colors = ["tab:green" if v <= 1.0 else "tab:red" for v in values]
            # bars grow from 1.0 (equal time) to the ratio: right of the line fastrnn is slower
            ax.barh(list(ys), [v - 1.0 for v in values], left=1.0, color=colors, alpha=0.75, height=0.7)
            mins = [c["ratio_of_mins"] for c in panel]
            ax.plot(mins, list(ys), "k|", markersize=10)
            for y, v in zip(ys, values):
                ax.text(v, y, f" {v:.2f} " if v > 1 else f" {v:.2f}", va="center", fontsize=8,
                        ha="left" if v > 1 else "right")
            ax.axvline(1.0, color="black", linewidth=1)
            ax.set_yticks(list(ys), [_label(c) for c in panel], fontsize=8)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlim(low, high)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(f"{kind} {direction}", fontsize=10)
            if row == len(kinds) - 1:
                ax.set_xlabel("fastrnn time / torch.nn time")
    fig.suptitle(f"fastrnn vs torch.nn on {run['device']} (torch {run['torch']}, threads: {run['threads']})")
    fig.text(0.5, 0.005, "bar: ratio of medians (green: fastrnn faster); |: ratio of minimum times; same run",
             ha="center", va="bottom", fontsize=8)
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
    print("\n".join(format_table(run)))
    plot(run, out)
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
