"""pytest-benchmark setup: threads, compact output led by the fastrnn / torch.nn ratio table.

``pytest benchmarks/ --benchmark-only`` prints one progress line per case while it runs
and, at the end, the ratio table (per case: the backend fastrnn's ``auto`` chose, each
implementation's median and minimum, the median and interquartile range of the paired
per-round ratios, the ratio of minimum times; above it device, torch/triton versions and
threads), then the skipped cases with their reason. pytest-benchmark's own wide per-group
tables are off (``--benchmark-tables`` brings them back). Each case times torch.nn and
fastrnn interleaved, round by round (``interleave.py``, ``test_throughput.py``).

``--bench-out PREFIX`` also writes the run as ``PREFIX.json`` and a plot ``PREFIX.png``
(paired-ratio median per case with its interquartile range, one panel per kind and pass, a
line at 1.0, device in the title); the README's figure is
``pytest benchmarks/ --benchmark-only --bench-out benchmarks/results/cpu``.
``--benchmark-json PATH`` (pytest-benchmark's) writes one entry per case: its statistics
are the fastrnn rounds; its ``extra_info`` has every round of both, the order and the
interleaved statistics.

Environment:

- ``FASTRNN_BENCH_DEVICE``: ``cuda`` or ``cpu`` (default: ``cuda`` when available).
- ``FASTRNN_BENCH_THREADS``: torch's intra-op threads (default: the CPUs this process may
  run on, ``os.sched_getaffinity``); set with ``torch.set_num_threads`` before any case
  runs, so ``OMP_NUM_THREADS`` does not decide it. Recorded in the output and the JSON.
- ``FASTRNN_BENCH_ROUNDS``: timed rounds per case (default: chosen per case for about
  ``FASTRNN_BENCH_SECONDS`` of timing per implementation, 2 s on the CPU and 0.5 s on
  CUDA, within [5, 500]); ``FASTRNN_BENCH_WARMUP``: interleaved warm-up rounds (default a
  tenth of the rounds, at least 1).
- ``FASTRNN_BENCH_AA=1``: the A/A control, a second torch.nn module timed as a third arm
  of the same interleaving; the table gains its paired ratio to torch.nn (the noise floor).
- ``FASTRNN_BACKEND`` / ``FASTRNN_TIER``: fastrnn's backend and kernel tier, as everywhere.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ratio_report  # noqa: E402


def _threads() -> int:
    value = os.environ.get("FASTRNN_BENCH_THREADS", "")
    if value:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pytest_addoption(parser):
    group = parser.getgroup("fastrnn benchmarks")
    group.addoption("--bench-out", metavar="PREFIX", default=None,
                    help="write the run as PREFIX.json and its ratio plot as PREFIX.png")
    group.addoption("--benchmark-tables", action="store_true", default=False,
                    help="also print pytest-benchmark's per-group tables")


class _State:
    def __init__(self, config):
        self.config = config
        self.to_time = 0
        self.done = 0
        self.skipped: dict[str, list[str]] = {}
        self.load_start = _load()


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    torch.set_num_threads(_threads())
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not config.getoption("benchmark_tables") and not session.verbose:
        session.quiet = True  # pytest-benchmark's own tables: the ratio table replaces them
    config._fastrnn_bench = _State(config)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and config.getoption("verbose") <= 0:
        tr.showfspath = False  # no "benchmarks/test_throughput.py" line between the progress lines


def _run_header(config) -> dict:
    from test_throughput import aa_enabled, backend_setting, bench_device

    device = bench_device()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "threads": torch.get_num_threads(),
        "fastrnn_backend": backend_setting(),
        "tier_forced": os.environ.get("FASTRNN_TIER") or None,
        "aa": aa_enabled(),
        "python": platform.python_version(),
    }


def pytest_report_header(config):
    return ["fastrnn benchmarks: " + ratio_report.header_line(_run_header(config))]


def pytest_collection_finish(session):
    state = session.config._fastrnn_bench
    state.to_time = sum(1 for item in session.items if not item.get_closest_marker("skip"))


def pytest_report_teststatus(report, config):
    # Progress is our own line per timed case (below); the default dots and s's say nothing.
    if config.getoption("verbose") > 0:
        return None
    if report.when == "call" and report.passed:
        return "passed", "", ""
    if report.skipped:
        return "skipped", "", ""
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    state = item.config._fastrnn_bench
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        state.skipped.setdefault(reason.removeprefix("Skipped: "), []).append(item.name)
        return
    if report.when != "call" or not report.passed:
        return
    bench = item.funcargs.get("benchmark")
    info = getattr(bench, "extra_info", None) or {}
    if "paired_ratio" not in info and "variant_ratio" not in info:
        return
    state.done += 1
    tr = item.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and item.config.getoption("verbose") <= 0:
        if "variant_ratio" in info:
            tr.write_line(ratio_report.variant_progress_line(state.done, state.to_time, _variant_case(bench)))
        else:
            tr.write_line(ratio_report.progress_line(state.done, state.to_time, _case(bench)))


def _load() -> list[float] | None:
    """The system's load average (1, 5, 15 min), None where the OS has none: recorded at the
    start and the end of the run, since other jobs on the machine move every timing."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _case(bench) -> dict:
    """One row of the run (see ratio_report) from a case's benchmark entry."""
    info = bench.extra_info
    stats, ratio, aa = info["stats"], info["paired_ratio"], info.get("aa_paired_ratio")
    case = {
        "case": bench.group, "kind": info["kind"], "pass": info["pass"], "shape": info["shape"],
        "dtype": info["dtype"], "backend": info["backend"], "tier": info.get("tier"),
        "rounds": info["rounds"], "warmup_rounds": info["warmup_rounds"],
        "torch_median_ms": stats["torch"]["median_ms"], "torch_min_ms": stats["torch"]["min_ms"],
        "fastrnn_median_ms": stats["fastrnn"]["median_ms"], "fastrnn_min_ms": stats["fastrnn"]["min_ms"],
        "paired_ratio_median": ratio["median"], "paired_ratio_q1": ratio["q1"], "paired_ratio_q3": ratio["q3"],
        "ratio_of_mins": ratio["of_mins"], "ratio_of_medians": ratio["of_medians"],
    }
    if aa is not None:
        case.update({"aa_ratio_median": aa["median"], "aa_ratio_q1": aa["q1"], "aa_ratio_q3": aa["q3"],
                     "aa_ratio_of_mins": aa["of_mins"]})
    return case


def _variant_case(bench) -> dict:
    """One row of the variant table (``test_variants.py``) from a case's benchmark entry."""
    info = bench.extra_info
    stats, ratio, scale = info["stats"], info["variant_ratio"], info.get("scale_ratio")
    return {
        "case": bench.group, "variant": info["variant"], "kind": info["kind"], "pass": info["pass"],
        "shape": info["shape"], "dtype": info["dtype"], "backend": info["backend"], "baseline": info["baseline"],
        "target": info["target"], "rounds": info["rounds"],
        "baseline_median_ms": stats["baseline"]["median_ms"], "fastrnn_median_ms": stats["fastrnn"]["median_ms"],
        "ratio_median": ratio["median"], "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"],
        "ratio_of_mins": ratio["of_mins"], "scale_ratio_median": scale["median"] if scale else None,
    }


def build_run(config) -> dict:
    """The run as a plain dict (see ratio_report): device, versions, threads, cases, skips."""
    session = getattr(config, "_benchmarksession", None)
    cases = [_case(bench) for bench in (session.benchmarks if session is not None else ())
             if "paired_ratio" in bench.extra_info]
    state = config._fastrnn_bench
    return {
        **_run_header(config),
        "lead": "paired_ratio_median",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load": {"start": state.load_start, "end": _load()},
        "cases": cases,
        "variant_cases": [_variant_case(bench) for bench in (session.benchmarks if session is not None else ())
                          if "variant_ratio" in bench.extra_info],
        "skipped": [{"reason": reason, "count": len(ids)} for reason, ids in state.skipped.items()],
    }


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if config.option.collectonly or not hasattr(config, "_fastrnn_bench"):
        return
    write = terminalreporter.write_line
    run = build_run(config)
    terminalreporter.section("fastrnn / torch.nn: time ratio, interleaved in the same run (< 1: fastrnn is faster)")
    if run["cases"]:
        for line in ratio_report.format_table(run):
            write(line)
    elif not run["variant_cases"]:
        write(ratio_report.header_line(run))
        write("no timings collected (benchmarks disabled, deselected, skipped or failed)")
    if run["variant_cases"]:
        terminalreporter.section("variants: fastrnn time / baseline time, interleaved in the same run (target: at most the 'target' column)")
        for line in ratio_report.format_variant_table(run):
            write(line)
    for skip in run["skipped"]:
        write(f"skipped {skip['count']} case{'s' if skip['count'] != 1 else ''}: {skip['reason']}")
    prefix = config.getoption("bench_out")
    if prefix and (run["cases"] or run["variant_cases"]):
        json_path, png_path = Path(f"{prefix}.json"), Path(f"{prefix}.png")
        ratio_report.write_json(run, json_path)
        if run["cases"]:  # (the plot is of the torch.nn comparison; a variant-only run has none)
            ratio_report.plot(run, png_path)
            write(f"wrote {json_path} and {png_path}")
        else:
            write(f"wrote {json_path}")
