"""The benchmark suite's report, run the way the README documents it, on tiny cases.

A subprocess runs ``pytest benchmarks/ --benchmark-only --bench-out PREFIX --benchmark-json
PATH`` on the two smallest RNN cases (T=10, B=1, H=32: forward, where ``auto`` picks
``native``, and forward+backward, where it picks ``reference``) plus one GPU-only case, which
the CPU run collects and skips with its reason. Checked: the compact output (progress lines,
the ratio table first with what it leads with, no pytest-benchmark tables, the skip reason),
the interleaving (the recorded order of each round alternates, every round of both is
recorded), the statistics (recomputed here from the recorded rounds), pytest-benchmark's
entry (one per case, its rounds are the fastrnn rounds), the JSON and the PNG plot; then
``python benchmarks/ratio_report.py`` re-plots the JSON. A second, smaller run switches the
A/A control on. :class:`interleave.Rounds` is checked directly with arms that only log their
calls.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import interleave  # noqa: E402

COMMAND = "pytest benchmarks/ --benchmark-only --bench-out"
FWD, TRAIN = "RNN-fwd-T10-B1-I1-H32", "RNN-fwd+bwd-T10-B1-I1-H32"
GPU_CASE = "LSTM-fwd-T1024-B16-H768-fp16"
SKIP_REASON = "CUDA-only case (GPU anchor shapes); this run is on the CPU"


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "FASTRNN_BACKEND", "FASTRNN_BENCH_ROUNDS", "FASTRNN_BENCH_WARMUP",
                        "FASTRNN_BENCH_AA")
           and not k.startswith("PYTEST_XDIST")}  # (pytest-benchmark turns itself off under xdist)
    env.update(FASTRNN_BENCH_DEVICE="cpu", FASTRNN_BENCH_THREADS="1", FASTRNN_BENCH_SECONDS="0.02",
               OMP_NUM_THREADS="2")  # the suite's own thread setting wins over OpenMP's variable
    env.update(extra)
    return env


def _bench(tmp_path, cases, **env):
    prefix, bench_json = tmp_path / "run", tmp_path / "pytest-benchmark.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--bench-out", str(prefix),
           "--benchmark-json", str(bench_json), "-k", " or ".join(cases), "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(prefix.with_suffix(".json").read_text()), json.loads(bench_json.read_text())


def _quartiles(values):
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def test_readme_documents_the_command():
    assert f"{COMMAND} benchmarks/results/cpu" in (REPO / "README.md").read_text()


def test_benchmark_report_interleaved(tmp_path):
    out, run, bench = _bench(tmp_path, [FWD, TRAIN, GPU_CASE])

    # progress while it runs: one line per case, counted against the cases to time
    assert re.search(rf"^\[  1/2\] {FWD} +native +torch\.nn +\d+\.\d+ ms +fastrnn +\d+\.\d+ ms +ratio \d\.\d+ ",
                     out, re.M), out
    assert re.search(rf"^\[  2/2\] {re.escape(TRAIN)} +reference +torch\.nn ", out, re.M), out
    # compact: the ratio table leads the summary and says what it leads with; no wide tables
    summary = out[out.index("fastrnn / torch.nn: time ratio, interleaved"):].splitlines()
    assert "Name (time in" not in out
    assert summary[1].startswith(f"device: CPU  torch {torch.__version__}  triton ")
    assert "threads: 1  fastrnn backend: auto (chosen per case: backend column)" in summary[1]
    assert re.match(r"load average \(1, 5, 15 min\) at the start [\d.]+ [\d.]+ [\d.]+, at the end [\d.]+ [\d.]+ "
                    r"[\d.]+; CPUs: \d+$", summary[2]), summary[2]
    assert summary[3].startswith("ratio: median over the rounds of fastrnn time / torch.nn time in the same round")
    assert "drift of the machine that slows both cancels" in summary[4]
    # the GPU-only case is collected and skipped, and the default output says why
    assert f"skipped 1 case: {SKIP_REASON}" in summary
    assert re.search(r"2 passed, 1 skipped, \d+ deselected", out)

    assert (run["device"], run["device_type"], run["torch"], run["threads"]) == ("CPU", "cpu", torch.__version__, 1)
    assert (run["fastrnn_backend"], run["aa"], run["lead"]) == ("auto", False, "paired_ratio_median")
    assert run["skipped"] == [{"reason": SKIP_REASON, "count": 1}]
    assert len(run["load"]["start"]) == len(run["load"]["end"]) == 3 and run["cpus"] >= 1
    cases = {c["case"]: c for c in run["cases"]}
    assert sorted(cases) == sorted([FWD, TRAIN])
    # auto's rule (fastrnn.backends.native.auto_cpu_backend): torch's kernels for inference,
    # fastrnn's own engine for RNN training
    assert (cases[FWD]["backend"], cases[TRAIN]["backend"]) == ("native", "reference")
    assert cases[FWD]["shape"] == {"T": 10, "B": 1, "I": 1, "H": 32, "layers": 1, "bidirectional": False,
                                   "packed": False}

    # pytest-benchmark: one entry per case; its timed function is one fastrnn round
    entries = {b["group"]: b for b in bench["benchmarks"]}
    assert sorted(entries) == sorted([FWD, TRAIN])
    for name, case in cases.items():
        entry = entries[name]
        info = entry["extra_info"]
        rounds = info["rounds"]
        assert entry["stats"]["rounds"] == rounds == case["rounds"] and 5 <= rounds <= 500
        assert (info["kind"], info["pass"], info["dtype"], info["device"], info["timed"]) == \
            ("RNN", name.split("-")[1], "fp32", "cpu", "fastrnn")
        assert info["backend"] == case["backend"] and info["torch_threads"] == 1
        assert case["warmup_rounds"] >= 1
        # interleaved: torch-first and fastrnn-first rounds alternate, each round one of each
        assert info["order"] == ["tf", "ft"] * (rounds // 2) + ["tf"] * (rounds % 2)
        torch_ms, fast_ms = info["times_ms"]["torch"], info["times_ms"]["fastrnn"]
        assert len(torch_ms) == len(fast_ms) == rounds and min(torch_ms) > 0 and min(fast_ms) > 0
        # pytest-benchmark timed the same fastrnn rounds around the suite's own timer
        assert entry["stats"]["min"] * 1e3 >= min(fast_ms) - 1e-5
        assert entry["stats"]["median"] * 1e3 >= statistics.median(fast_ms) - 1e-5
        # the statistics, recomputed from the recorded rounds
        ratios = [f / t for f, t in zip(fast_ms, torch_ms)]
        q1, q3 = _quartiles(ratios)
        approx = lambda v: pytest.approx(v, rel=1e-4)  # noqa: E731 (times are recorded to 1 ns)
        assert case["torch_median_ms"] == approx(statistics.median(torch_ms))
        assert case["torch_min_ms"] == approx(min(torch_ms))
        assert case["fastrnn_median_ms"] == approx(statistics.median(fast_ms))
        assert case["fastrnn_min_ms"] == approx(min(fast_ms))
        assert case["paired_ratio_median"] == approx(statistics.median(ratios))
        assert (case["paired_ratio_q1"], case["paired_ratio_q3"]) == (approx(q1), approx(q3))
        assert case["ratio_of_mins"] == approx(min(fast_ms) / min(torch_ms))
        # the table's row shows the same numbers
        row = next(line for line in summary if line.startswith(name + " "))
        assert row.split()[1:] == [
            case["backend"], f"{case['torch_median_ms']:.3f}", f"{case['torch_min_ms']:.3f}",
            f"{case['fastrnn_median_ms']:.3f}", f"{case['fastrnn_min_ms']:.3f}",
            f"{case['paired_ratio_median']:.3f}", f"{case['paired_ratio_q1']:.3f}-{case['paired_ratio_q3']:.3f}",
            f"{case['ratio_of_mins']:.3f}", str(rounds)]

    png = tmp_path / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 600 and height >= 200

    replot = subprocess.run([sys.executable, "benchmarks/ratio_report.py", str(tmp_path / "run.json"),
                             str(tmp_path / "again.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert replot.returncode == 0, replot.stderr
    assert FWD in replot.stdout and TRAIN in replot.stdout
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_aa_control(tmp_path):
    out, run, bench = _bench(tmp_path, [FWD], FASTRNN_BENCH_AA="1", FASTRNN_BENCH_ROUNDS="12")
    assert run["aa"] is True and "A/A control on" in out
    (case,) = run["cases"]
    info = bench["benchmarks"][0]["extra_info"]
    # three arms: the order inside a round goes through all six permutations in turn
    orders = info["order"]
    assert len(orders) == 12 and sorted(orders[:6]) == ["aft", "atf", "fat", "fta", "taf", "tfa"]
    assert orders[6:] == orders[:6]
    torch_ms, aa_ms = info["times_ms"]["torch"], info["times_ms"]["torch_aa"]
    ratios = [a / t for a, t in zip(aa_ms, torch_ms)]
    assert case["aa_ratio_median"] == pytest.approx(statistics.median(ratios), rel=1e-4)
    assert case["aa_ratio_of_mins"] == pytest.approx(min(aa_ms) / min(torch_ms), rel=1e-4)
    assert re.search(r"^A/A control \(a second torch\.nn module against torch\.nn, same interleaving\): ratios "
                     r"\d\.\d{3}-\d\.\d{3}", out, re.M), out


def _logging_arms(names, log):
    return {n: interleave.Arm(run=lambda n=n: log.append(n), prep=lambda n=n: log.append(f"prep {n}")) for n in names}


def test_rounds_run_in_the_recorded_order():
    log = []
    rounds = interleave.Rounds(_logging_arms(("torch", "fastrnn"), log), 4, timed="fastrnn")
    for _ in range(4):  # what benchmark.pedantic does: setup, then the timed function, per round
        rounds.setup()
        rounds.target()
    times = rounds.finish()
    assert [e for e in log if not e.startswith("prep")] == [
        "torch", "fastrnn", "fastrnn", "torch", "torch", "fastrnn", "fastrnn", "torch"]
    # every run right after its own prep (gradients reset, untimed)
    assert all(log[i] == f"prep {log[i + 1]}" for i in range(0, len(log), 2))
    assert rounds.order_letters == ["tf", "ft", "tf", "ft"]
    assert {n: len(ts) for n, ts in times.items()} == {"torch": 4, "fastrnn": 4}


def test_rounds_with_a_single_timed_call():
    # pytest-benchmark's --benchmark-disable calls setup and the timed function once
    log = []
    rounds = interleave.Rounds(_logging_arms(("torch", "fastrnn"), log), 10, timed="fastrnn")
    rounds.setup()
    rounds.target()
    times = rounds.finish()
    assert [e for e in log if not e.startswith("prep")] == ["torch", "fastrnn"]
    assert {n: len(ts) for n, ts in times.items()} == {"torch": 1, "fastrnn": 1}


def test_paired_statistics():
    stats = interleave.paired([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])  # per-round ratios 2, 3, 2
    assert stats == {"median": 2.0, "q1": 2.0, "q3": 2.5, "of_mins": 2.0, "of_medians": 3.0}
    assert interleave.arm_stats([0.002, 0.001, 0.004]) == pytest.approx(
        {"median_ms": 2.0, "min_ms": 1.0, "q1_ms": 1.5, "q3_ms": 3.0})
    with pytest.raises(ValueError, match="same, non-zero number of rounds"):
        interleave.paired([1.0], [1.0, 2.0])
