"""The ahead-of-time compile report: every step-kernel specialisation compiles for sm_80
and sm_90 with no spills and shared memory within the per-block limit.

The report compiles real GPU code, which needs Triton's interpreter off: it runs in a
subprocess whose environment drops the interpreter switch that tests/conftest.py sets.
About 1 s per compile (176 compiles, 2 processes) on a cold Triton cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from fastrnn.kernels import report
from fastrnn.kernels.recurrent_step import CONFIGS, KIND_IDS, specialisations

ROW = re.compile(r"^(forward|backward):(\S+)\s+(\S+)\s+(\S+)\s+(sm_\d+)\s+(-?\d+)\s+(-?\d+)\s+(-?\d+)\s+(.*)$")


def _env_without_interpreter():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_specialisations_cover_the_launch_choices():
    specs = specialisations()
    # forward: LSTM/GRU x SAVE + 2 RNNs; backward: LSTM x DM_GIVEN + 3 -> 11 per dtype-config,
    # dtypes fp32, fp32-tf32, fp16, bf16.
    assert len(specs) == 11 * len(CONFIGS) * 4
    assert {s.kind for s in specs} == set(KIND_IDS)
    assert len({(s.kernel_name, s.kind, s.label, s.config) for s in specs}) == len(specs)


def test_kernel_report_all_rows_pass():
    out = subprocess.run(
        [sys.executable, "-m", "fastrnn.kernels.report"], env=_env_without_interpreter(),
        capture_output=True, text=True, timeout=900,
    )
    rows = [m for m in (ROW.match(line) for line in out.stdout.splitlines()) if m]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(rows) == len(specialisations()) * len(report.ARCHS)
    for m in rows:
        regs, spills, shared = int(m.group(6)), int(m.group(7)), int(m.group(8))
        assert m.group(9) == "pass", m.group(0)
        assert 0 < regs <= report.MAX_REGISTERS, m.group(0)
        assert spills == 0, m.group(0)
        assert 0 <= shared <= report.SHARED_LIMIT[int(m.group(5)[3:])], m.group(0)
    assert {m.group(5) for m in rows} == {"sm_80", "sm_90"}


def test_report_refuses_under_interpreter():
    """In this (interpreted) process the kernels cannot be compiled: a clear refusal."""
    assert report.main([]) == 2
