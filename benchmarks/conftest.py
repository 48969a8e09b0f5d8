"""pytest-benchmark setup: threads, rounds, compact output led by the fastrnn / torch.nn ratio table.

``pytest benchmarks/ --benchmark-only`` prints one progress line per timed entry while it
runs and, at the end, the ratio table (per-case medians of torch.nn and fastrnn, their
ratio and the ratio of minimum times, with device, torch/triton versions and threads),
then the skipped cases with their reason. pytest-benchmark's own wide per-group tables are
off (``--benchmark-tables`` brings them back).

``--bench-out PREFIX`` also writes the run as ``PREFIX.json`` and a plot ``PREFIX.png``
(ratio per case, one panel per kind and pass, a line at 1.0, device in the title); the
README's figure is ``pytest benchmarks/ --benchmark-only --bench-out benchmarks/results/cpu``.

Environment:

- ``FASTRNN_BENCH_DEVICE``: ``cuda`` or ``cpu`` (default: ``cuda`` when available).
- ``FASTRNN_BENCH_THREADS``: torch's intra-op threads (default: the CPUs this process may
  run on, ``os.sched_getaffinity``); set with ``torch.set_num_threads`` before any case
  runs, so ``OMP_NUM_THREADS`` does not decide it. Recorded in the output and the JSON.
- ``FASTRNN_BENCH_ROUNDS``: timed rounds per entry (default: chosen per case for about
  ``FASTRNN_BENCH_SECONDS`` of timing, 2 s on the CPU and 0.5 s on CUDA, within [5, 500]).
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


def pytest_report_header(config):
    from test_throughput import _backend_name, bench_device

    device = bench_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return [f"fastrnn benchmarks: {name}, torch {torch.__version__}, triton {_triton_version() or 'not installed'}, "
            f"threads: {torch.get_num_threads()}, fastrnn backend {_backend_name(device)}"]


def pytest_collection_finish(session):
    state = session.config._fastrnn_bench
    state.to_time = sum(1 for item in session.items if not item.get_closest_marker("skip"))


def pytest_report_teststatus(report, config):
    # Progress is our own line per timed entry (below); the default dots and s's say nothing.
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
    stats = _stats(bench)
    if stats is None:
        return
    state.done += 1
    tr = item.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and item.config.getoption("verbose") <= 0:
        info = bench.extra_info
        tr.write_line(
            f"[{state.done:>3}/{state.to_time}] {bench.group:<34} {info['impl']:<8} "
            f"median {stats.median * 1e3:9.3f} ms  min {stats.min * 1e3:9.3f} ms  ({stats.rounds} rounds)"
        )


def _stats(bench):
    """pytest-benchmark's Stats of a fixture or session entry, None when no round was timed."""
    metadata = getattr(bench, "stats", None)
    stats = getattr(metadata, "stats", metadata)
    return stats if stats else None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def build_run(config) -> dict:
    """The run as a plain dict (see ratio_report): device, versions, threads, cases, skips."""
    from test_throughput import _backend_name, bench_device

    session = getattr(config, "_benchmarksession", None)
    groups: dict[str, dict[str, object]] = {}
    for bench in session.benchmarks if session is not None else ():
        impl = bench.extra_info.get("impl")
        if impl in ("torch", "fastrnn"):
            groups.setdefault(bench.group, {})[impl] = bench
    device = bench_device()
    cases = []
    for group, pair in groups.items():
        info = (pair.get("fastrnn") or pair.get("torch")).extra_info

        def stat(impl, name):
            stats = _stats(pair.get(impl))
            return getattr(stats, name) * 1e3 if stats is not None else None

        t_med, f_med, t_min, f_min = stat("torch", "median"), stat("fastrnn", "median"), stat("torch", "min"), \
            stat("fastrnn", "min")
        cases.append({
            "case": group, "kind": info["kind"], "pass": info["pass"], "shape": info["shape"],
            "dtype": info["dtype"], "tier": pair["fastrnn"].extra_info.get("tier") if "fastrnn" in pair else None,
            "rounds": {impl: b.extra_info.get("rounds") for impl, b in pair.items()},
            "torch_median_ms": t_med, "fastrnn_median_ms": f_med,
            "ratio": f_med / t_med if t_med and f_med else None,
            "torch_min_ms": t_min, "fastrnn_min_ms": f_min,
            "ratio_of_mins": f_min / t_min if t_min and f_min else None,
        })
    state = config._fastrnn_bench
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "threads": torch.get_num_threads(),
        "fastrnn_backend": _backend_name(device),
        "tier_forced": os.environ.get("FASTRNN_TIER") or None,
        "python": platform.python_version(),
        "cases": cases,
        "skipped": [{"reason": reason, "count": len(ids)} for reason, ids in state.skipped.items()],
    }


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if config.option.collectonly or not hasattr(config, "_fastrnn_bench"):
        return
    write = terminalreporter.write_line
    run = build_run(config)
    terminalreporter.section("fastrnn / torch.nn: time ratio, same run (< 1 means fastrnn is faster)")
    if run["cases"]:
        for line in ratio_report.format_table(run):
            write(line)
    else:
        write(ratio_report.header_line(run))
        write("no timings collected (benchmarks disabled, deselected, skipped or failed)")
    for skip in run["skipped"]:
        write(f"skipped {skip['count']} entries: {skip['reason']}")
    prefix = config.getoption("bench_out")
    if prefix and run["cases"]:
        json_path, png_path = Path(f"{prefix}.json"), Path(f"{prefix}.png")
        ratio_report.write_json(run, json_path)
        ratio_report.plot(run, png_path)
        write(f"wrote {json_path} and {png_path}")
