"""pytest-benchmark setup: the device to run on and the fastrnn / torch.nn ratio table.

``pytest benchmarks/ --benchmark-only`` times each case twice, once with ``torch.nn`` and
once with ``fastrnn``, in the same benchmark group, so pytest-benchmark's own tables
show each pair side by side. After those tables, ``pytest_terminal_summary`` below
prints one line per group: the two medians of this run and their ratio.

Environment:

- ``FASTRNN_BENCH_DEVICE``: ``cuda`` or ``cpu`` (default: ``cuda`` when available).
- ``FASTRNN_BENCH_ROUNDS``: timed rounds per case (default: 3 on the CPU for the large
  shapes, 10 for the small one, 20 on CUDA), after one untimed warm-up round.
- ``FASTRNN_BACKEND``: the fastrnn backend, as everywhere (default ``auto``).
"""

from __future__ import annotations

import pytest
import torch


def _seconds(bench, statistic: str) -> float | None:
    stats = getattr(bench, "stats", None) if bench is not None else None
    if not stats:  # no rounds were timed (e.g. --benchmark-disable) or the test failed
        return None
    return getattr(stats, statistic)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or config.option.collectonly:
        return
    groups: dict[str, dict[str, object]] = {}
    for bench in session.benchmarks:
        impl = bench.extra_info.get("impl_short")
        if impl is None:
            continue
        groups.setdefault(bench.group, {})[impl] = bench
    write = terminalreporter.write_line
    terminalreporter.section("fastrnn / torch.nn (time ratio, same run; < 1 means fastrnn is faster)")
    if not groups:
        write("no timings collected (benchmarks disabled, skipped or failed)")
        return
    first = next(iter(next(iter(groups.values())).values())).extra_info
    write(
        f"device: {first.get('device_name')}  torch {torch.__version__}  "
        f"fastrnn backend: {first.get('fastrnn_backend', '?')}  threads: {first.get('torch_threads')}"
    )
    header = f"{'group (median ms)':<34} {'torch.nn':>10} {'fastrnn':>10} {'ratio':>7} {'ratio of mins':>14}"
    write(header)
    write("-" * len(header))
    marked = False
    for group, pair in groups.items():
        t_torch, t_fast = _seconds(pair.get("torch"), "median"), _seconds(pair.get("fastrnn"), "median")
        m_torch, m_fast = _seconds(pair.get("torch"), "min"), _seconds(pair.get("fastrnn"), "min")
        mark = ""
        info = next(iter(pair.values())).extra_info
        if info.get("cudnn_persistent_eligible"):
            mark, marked = " *", True
        ms = lambda t: f"{t * 1e3:10.2f}" if t is not None else f"{'-':>10}"  # noqa: E731
        ratio = f"{t_fast / t_torch:7.2f}" if t_torch and t_fast else f"{'-':>7}"
        ratio_min = f"{m_fast / m_torch:14.2f}" if m_torch and m_fast else f"{'-':>14}"
        write(f"{group:<34} {ms(t_torch)} {ms(t_fast)} {ratio} {ratio_min}{mark}")
    if marked:
        write("* a case cuDNN's persistent RNN kernels cover (fp16, one layer, unidirectional,")
        write("  H % 128 == 0, batch <= 128, not GRU): fastrnn must win these (ratio < 1)")
