"""The three result files: ``gpu-<device>.json`` (everything), ``.png`` (speed ratios), ``.md``
(the verdict a person reads in a minute)."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

FAILING = ("fail", "error")


def verdict(results: dict) -> tuple[bool, list[str]]:
    """``(passed, reasons)``: any failing correctness case, self-check or extra check fails."""
    reasons = []
    for rec in results["correctness"]:
        if rec["status"] in FAILING:
            reasons.append(f"case {rec['case']}: {rec['status']} {_why(rec)}")
    for rec in results["self_check"]:
        if rec["verdict"] == "fail":
            reasons.append(f"self-check {rec['tier']} {rec['kind']} {rec['precision']}: {rec['why']}")
    for rec in results["extras"]:
        if rec["status"] in FAILING:
            reasons.append(f"{rec['check']}: {rec['status']} {rec.get('why', '')}")
    return not reasons, reasons


def _why(rec: dict) -> str:
    if rec.get("why"):
        return rec["why"]
    worst = rec.get("worst")
    if worst:
        return f"(worst {worst['tensor']}: error {worst['error']:.3g} > bound {worst['bound']:.3g})"
    return ""


def write_json(results: dict, out_dir: Path, slug: str) -> Path:
    """``gpu-<slug>.json``, written whole to a temporary name and then renamed (a run killed
    while writing leaves the previous complete file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu-{slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str, allow_nan=True))
    tmp.replace(path)
    return path


def write_all(results: dict, out_dir: Path, slug: str) -> list[Path]:
    stem = out_dir / f"gpu-{slug}"
    paths = [write_json(results, out_dir, slug), stem.with_suffix(".png"), stem.with_suffix(".md")]
    write_plot(results, paths[1])
    paths[2].write_text(markdown(results))
    return paths


def write_plot(results: dict, path: Path) -> None:
    """Median paired ratio fastrnn / cuDNN per speed case (quartiles as error bars), one panel
    per (kind, pass); correctness counts in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["speed"] if r.get("ratio_median") is not None]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["direction"])].append(r)
    keys = sorted(groups) or [("none", "")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(11, 2.2 + 0.28 * max([len(groups[k]) for k in keys] + [4])
                                                     * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        rs = groups.get(key, [])
        if not rs:
            ax.text(0.5, 0.5, "no timing rows", ha="center", va="center")
            ax.set_axis_off()
            continue
        labels = [r["case"].split("-", 2)[-1] for r in rs]
        med = [r["ratio_median"] for r in rs]
        err = [[max(0.0, r["ratio_median"] - r["ratio_q1"]) for r in rs],
               [max(0.0, r["ratio_q3"] - r["ratio_median"]) for r in rs]]
        colors = ["tab:green" if m <= 1 else "tab:red" for m in med]
        ax.barh(range(len(rs)), med, xerr=err, color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(rs)), labels, fontsize=7)
        ax.set_xscale("log")
        baseline = "reference backend (dry run)" if results["meta"]["dry_run"] else "cuDNN"
        ax.set_title(f"{key[0]} {key[1]}: fastrnn / {baseline} time (< 1: fastrnn faster)", fontsize=9)
    meta = results["meta"]
    counts = collections.Counter(r["status"] for r in results["correctness"])
    title = f"fastrnn on {meta['device']} - correctness {dict(counts)}"
    if meta["dry_run"]:
        title = "DRY RUN (Triton interpreter, reference backend as baseline): NOT MEASUREMENTS\n" + title
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def speed_summary(rows: list[dict]) -> list[str]:
    """One line per (tier setting, pass): geometric mean of the median ratios, best and worst."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r.get("ratio_median"):
            groups[(r["tier"], r["direction"])].append(r)
    out = []
    for (tier, direction), rs in sorted(groups.items()):
        gmean = math.exp(sum(math.log(r["ratio_median"]) for r in rs) / len(rs))
        best = min(rs, key=lambda r: r["ratio_median"])
        worst = max(rs, key=lambda r: r["ratio_median"])
        out.append(f"- {tier} {direction}: fastrnn / cuDNN time, geometric mean {gmean:.3g} over {len(rs)} cases "
                   f"(best {best['ratio_median']:.3g} {best['case']}, worst {worst['ratio_median']:.3g} {worst['case']})")
    return out or ["- no timing rows"]


def _fmt(x, spec=".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def markdown(results: dict) -> str:
    meta = results["meta"]
    passed, reasons = verdict(results)
    lines = [f"# fastrnn GPU check: {results.get('verdict') or ('PASS' if passed else 'FAIL')}", ""]
    if meta["dry_run"]:
        lines += ["**Dry run**: Triton's interpreter on the CPU, tiny shapes, the reference backend standing in "
                  "for cuDNN. Timing rows are not measurements.", ""]
    lines += [f"- device: {meta['device']} ({meta.get('sms')} SMs), torch {meta['versions'].get('torch')}, "
              f"triton {meta['versions'].get('triton')}, CUDA {meta['versions'].get('cuda')}, "
              f"cuDNN {meta['versions'].get('cudnn')}",
              f"- commit: {meta.get('git_commit')}{' (dirty)' if meta.get('git_dirty') else ''}; "
              f"command: `{meta['command']}`",
              f"- elapsed {meta['elapsed_s']:.0f} s of a {meta['budget_s']:.0f} s budget; "
              f"{meta['not_run']} planned items not run (budget)", ""]
    if meta.get("interrupted"):
        lines += [f"**Incomplete**: {meta['interrupted']}.", ""]
    if reasons:
        lines += ["## Failures", ""] + [f"- {r}" for r in reasons[:30]]
        if len(reasons) > 30:
            lines.append(f"- ... and {len(reasons) - 30} more (see the JSON)")
        lines.append("")
    speed_errors = [r for r in results["speed"] if r["status"] == "error"]
    if speed_errors:
        lines += ["## Errors in the speed phase (not in the verdict: see the correctness cases)", ""]
        lines += [f"- {r['case']}: {str(r.get('why', ''))[:200]}" for r in speed_errors[:20]] + [""]
    lines += ["## Correctness (cases: ok / fail+error / n/a / not run)", "",
              "Each case: fastrnn vs torch.nn (cuDNN) vs a float64 run, every output and gradient; "
              "bounds in fastrnn/gpu_check/plan.py.", ""]
    precs = sorted({r["precision"] for r in results["correctness"]}, key=["fp32", "tf32", "fp16", "bf16"].index)
    lines.append("| tier | " + " | ".join(precs) + " |")
    lines.append("|---" * (len(precs) + 1) + "|")
    by = collections.defaultdict(collections.Counter)
    for r in results["correctness"]:
        by[(r["tier"], r["precision"])][r["status"]] += 1
    tier_order = ["step", "resident", "cooperative/R16", "cooperative/R64", "cooperative/tiled", "auto"]
    for tier in sorted({r["tier"] for r in results["correctness"]},
                       key=lambda t: (tier_order.index(t) if t in tier_order else len(tier_order), t)):
        cells = []
        for p in precs:
            c = by[(tier, p)]
            cells.append(f"{c['ok']} / {c['fail'] + c['error']} / {c['n/a']} / {c['not run']}")
        lines.append(f"| {tier} | " + " | ".join(cells) + " |")
    kinds = collections.defaultdict(collections.Counter)
    for r in results["correctness"]:
        kinds[r["kind"]][r["status"]] += 1
    lines += ["", "Per kind: " + "; ".join(f"{k}: {dict(c)}" for k, c in kinds.items()), ""]
    notes = [f"- {r['case']}: {'; '.join(r['notes'])}" for r in results["correctness"] if r.get("notes")]
    if notes:
        lines += ["Notes (which tier / variant really ran):", ""] + notes[:20] + [""]
    lines += ["## First-use self-check (forced tier vs step tier)", "", "| tier | kind | precision | verdict |",
              "|---|---|---|---|"]
    for r in results["self_check"]:
        lines.append(f"| {r['tier']} | {r['kind']} | {r['precision']} | {r['verdict']} "
                     f"{('(' + r['why'][:80] + ')') if r.get('why') and r['verdict'] != 'n/a' else ''} |")
    lines += ["", "## Other checks", "", "| check | status | detail |", "|---|---|---|"]
    for r in results["extras"]:
        detail = r.get("why") or r.get("streams") or r.get("mode") or ""
        if "errors" in r:
            detail = f"errors: {r['errors']}"
        lines.append(f"| {r['check']} | {r['status']} | {str(detail)[:100]} |")
    lines += ["", "## Speed vs cuDNN" + (" (DRY RUN: not measurements)" if meta["dry_run"] else ""), ""]
    lines += speed_summary(results["speed"]) + [""]
    lines += [
              "| case | tier ran | fastrnn ms | cuDNN ms | ratio (q1-q3) | us/step |", "|---|---|---|---|---|---|"]
    for r in results["speed"]:
        if r.get("ratio_median") is None:
            lines.append(f"| {r['case']} | {r['status']} | | | | {str(r.get('why', ''))[:60]} |")
            continue
        ran = "/".join(r["tiers"]) + (f" ({','.join(r['variants'])})" if r.get("variants") else "")
        lines.append(f"| {r['case']} | {ran} | {_fmt(r['fastrnn']['median_s'] * 1e3)} | "
                     f"{_fmt(r['cudnn']['median_s'] * 1e3)} | {_fmt(r['ratio_median'])} "
                     f"({_fmt(r['ratio_q1'])}-{_fmt(r['ratio_q3'])}) | {_fmt(r['fastrnn']['per_step_us'])} |")
    return "\n".join(lines) + "\n"
