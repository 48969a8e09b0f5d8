"""The benchmark suite's report, run the way the README documents it, on a tiny case.

One subprocess runs ``pytest benchmarks/ --benchmark-only --bench-out PREFIX`` on the
smallest CPU case (RNN, T=10, B=1, H=32, forward) plus one GPU-only case, which the CPU
run collects and skips with its reason. Checked: the compact output (progress lines, the
ratio table first, no pytest-benchmark tables, the skip reason), the JSON (device,
versions, threads as set, both medians, the ratio computed from them) and the PNG plot; then
``python benchmarks/ratio_report.py`` re-plots the JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import torch

REPO = Path(__file__).resolve().parents[1]
COMMAND = "pytest benchmarks/ --benchmark-only --bench-out"
CASES = "RNN-fwd-T10-B1-I1-H32 or LSTM-fwd-T1024-B16-H768-fp16"


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(FASTRNN_BENCH_DEVICE="cpu", FASTRNN_BENCH_THREADS="1", FASTRNN_BENCH_SECONDS="0.05",
               OMP_NUM_THREADS="2")  # the suite's own thread setting wins over OpenMP's variable
    env.pop("FASTRNN_BENCH_ROUNDS", None)
    return env


def test_readme_documents_the_command():
    assert f"{COMMAND} benchmarks/results/cpu" in (REPO / "README.md").read_text()


def test_benchmark_report_json_and_plot(tmp_path):
    prefix = tmp_path / "run"
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--bench-out", str(prefix),
           "-k", CASES, "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr

    # progress while it runs: one line per timed entry, counted against the entries to time
    assert re.search(r"^\[  1/2\] RNN-fwd-T10-B1-I1-H32 +torch +median", out, re.M), out
    assert re.search(r"^\[  2/2\] RNN-fwd-T10-B1-I1-H32 +fastrnn +median", out, re.M), out
    # compact: the ratio table leads the summary, pytest-benchmark's wide tables are off
    summary = out[out.index("fastrnn / torch.nn: time ratio"):]
    assert "Name (time in" not in out
    header = summary.splitlines()[1]
    assert header.startswith(f"device: CPU  torch {torch.__version__}  triton ") and "threads: 1" in header
    assert re.search(r"^RNN-fwd-T10-B1-I1-H32 +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d +\d+", summary, re.M)
    # the GPU-only case is collected and skipped, and the default output says why
    assert "skipped 2 entries: CUDA-only case (issue 9's GPU anchor shapes); this run is on the CPU" in summary
    assert re.search(r"2 passed, 2 skipped, \d+ deselected", out)

    run = json.loads(prefix.with_suffix(".json").read_text())
    assert (run["device"], run["device_type"], run["torch"], run["threads"]) == ("CPU", "cpu", torch.__version__, 1)
    assert run["fastrnn_backend"] == "reference"
    (case,) = run["cases"]
    assert (case["case"], case["kind"], case["pass"], case["dtype"]) == ("RNN-fwd-T10-B1-I1-H32", "RNN", "fwd", "fp32")
    assert case["shape"] == {"T": 10, "B": 1, "I": 1, "H": 32, "layers": 1, "bidirectional": False, "packed": False}
    assert case["torch_median_ms"] > 0 and case["fastrnn_median_ms"] > 0
    assert case["ratio"] == case["fastrnn_median_ms"] / case["torch_median_ms"]
    assert case["ratio_of_mins"] == case["fastrnn_min_ms"] / case["torch_min_ms"]
    # rounds: chosen once per case from a 0.05 s target, shared by both entries, within [5, 500]
    assert case["rounds"]["torch"] == case["rounds"]["fastrnn"] and 5 <= case["rounds"]["torch"] <= 500
    assert run["skipped"] == [{"reason": "CUDA-only case (issue 9's GPU anchor shapes); this run is on the CPU",
                               "count": 2}]

    png = prefix.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 600 and height >= 200

    replot = subprocess.run([sys.executable, "benchmarks/ratio_report.py", str(prefix.with_suffix(".json")),
                             str(tmp_path / "again.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert replot.returncode == 0, replot.stderr
    assert "RNN-fwd-T10-B1-I1-H32" in replot.stdout
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
