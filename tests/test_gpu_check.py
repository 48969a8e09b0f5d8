"""``python -m fastrnn.gpu_check``: its dry run on the CPU writes the three result files with
every case and field, and its exit status follows the correctness verdict.

The dry run is the GPU check's own code in Triton's interpreter (tiny shapes, the reference
backend standing in for cuDNN), run as a subprocess because the interpreter must be on
before the kernels are imported and the exit status is part of what is tested. A mismatch
is injected with ``--tol-scale 0`` (every bound becomes 0, so any rounding difference
fails): the same comparison code as a real run, no test-only branch. The plan's rules (which
batch reaches which cooperative variant, the covering order) are checked against the tier
choice's own table without running kernels.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fastrnn.gpu_check import plan

pytest.importorskip("triton", reason="the dry run needs Triton's interpreter")

BUILTIN = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def _run(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "fastrnn.gpu_check", "--out", str(out), "--dry-run", "--quick", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=800, env=env)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(out)
    return out, proc


def _load(out):
    return json.loads((out / "gpu-dry-run.json").read_text())


def test_dry_run_passes_and_writes_three_files(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-dry-run.json", "gpu-dry-run.md", "gpu-dry-run.png"]
    assert (out / "gpu-dry-run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "gpu-dry-run.md").read_text()
    assert md.startswith("# fastrnn GPU check: PASS")
    assert "Dry run" in md and "not measurements" in md
    data = _load(out)
    assert data["verdict"] == "PASS" and data["failures"] == []
    meta = data["meta"]
    assert meta["dry_run"] is True
    assert {"torch", "triton", "python", "fastrnn"} <= set(meta["versions"])
    assert "git_commit" in meta and meta["device"]
    # progress lines carry the elapsed time
    assert "s] --- correctness" in proc.stdout


def test_dry_run_covers_every_tier_variant_and_kind(quick_run):
    data = _load(quick_run[0])
    cases = data["correctness"]
    ran = [c for c in cases if c["status"] == "ok"]
    assert {c["tier"] for c in cases} == set(plan.TIER_VARIANTS)
    assert {c["tier"] for c in ran} >= set(plan.TIER_VARIANTS) - {c["tier"] for c in cases if c["status"] == "n/a"}
    assert {c["kind"] for c in cases} >= set(BUILTIN)
    assert {c["precision"] for c in cases} == set(plan.PRECISIONS)
    assert {c["layout"] for c in ran} == set(plan.LAYOUTS)
    assert {c["structure"] for c in ran} >= set(plan.STRUCTURES)
    assert sum(c["anchor"] for c in ran) == 3
    for c in cases:
        assert c["status"] in ("ok", "n/a"), c
        if c["status"] == "n/a":
            assert c["why"]
    for c in ran:
        forced = c["tier"].split("/")[0]
        assert c["ran_tiers"] == [forced], c["case"]
        if "/" in c["tier"]:  # the variant the batch was chosen for is the one that ran
            assert c["ran_variants"] == [c["tier"].split("/")[1]], c["case"]
        tensors = {r["tensor"] for r in c["rows"]}
        expected = {"y", "h_n", "dinput", "dweight_ih_l0", "dweight_hh_l0", "dbias_ih_l0", "dbias_hh_l0"}
        if c["kind"] == "LSTM":
            expected |= {"c_n"}
        if c["structure"] == "L2-bi-h0":
            expected |= {"dh0", "dweight_ih_l1_reverse", "dbias_hh_l1_reverse"}
            if c["kind"] == "LSTM":
                expected |= {"dc0"}
        assert expected <= tensors, (c["case"], expected - tensors)
        for r in c["rows"]:
            assert r["ok"] and 0 <= r["error"] <= r["bound"], (c["case"], r)


def test_dry_run_self_check_extras_and_speed_rows(quick_run):
    data = _load(quick_run[0])
    assert {(r["tier"], r["verdict"]) for r in data["self_check"]} == {("resident", "pass"), ("cooperative", "pass")}
    extras = {r["check"]: r for r in data["extras"]}
    assert extras["barrier stress"]["status"] == "ok"
    assert extras["barrier stress"]["max_difference_between_launches"] == 0.0
    assert extras["torch.compile reduce-overhead"]["status"] == "ok"
    variant_rows = extras["variant layers and resets per tier"]
    assert variant_rows["status"] == "ok", variant_rows
    assert {(r["model"], r["tier"]) for r in variant_rows["rows"]} == {
        (m, t) for m in ("LSTM-peephole+resets", "GRU+resets", "LayerNormLSTM", "LayerNormGRU", "LSTM-zoneout+rdrop",
                         "GRU-zoneout+rdrop+resets")
        for t in ("step", "resident", "cooperative")}
    assert extras["model on cuda:1"]["status"] == "skipped"
    assert {extras[f"compute-sanitizer {t}"]["status"] for t in ("racecheck", "synccheck")} == {"skipped"}
    speed = data["speed"]
    assert speed and all(r["dry_run"] and r["status"] == "dry-run" for r in speed)
    for r in speed:
        assert r["rounds"] >= 1 and r["ratio_median"] > 0 and r["fastrnn"]["per_step_us"] > 0
        assert r["baseline"].startswith("reference backend")
    assert {r["tier"] for r in speed} == {"auto", "step"}


def test_an_injected_mismatch_fails_the_run(tmp_path):
    proc = _run(tmp_path, "--only", "step-LSTM-fp32", "--tol-scale", "0")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = _load(tmp_path)
    assert data["verdict"] == "FAIL"
    statuses = [c["status"] for c in data["correctness"]]
    assert statuses and set(statuses) == {"fail"}
    assert all(not r["ok"] for c in data["correctness"] for r in c["rows"] if r["error"] > 0)
    assert (tmp_path / "gpu-dry-run.md").read_text().startswith("# fastrnn GPU check: FAIL")


@pytest.mark.parametrize("sms", [132, 108, 78, 2])
@pytest.mark.parametrize("hidden", [32, 128, 768])
@pytest.mark.parametrize("tf32", [False, True])
def test_coop_batch_reaches_the_variant_the_tier_choice_picks(sms, hidden, tf32):
    from fastrnn.kernels import fits

    for dtype in (torch.float16, torch.float32):
        configs = fits.cooperative_configs(dtype, hidden, tf32)
        rows = tuple(sorted(c.block_b for c in configs if c.registers))
        for variant in plan.COOP_VARIANTS:
            batch = plan.coop_batch(variant, hidden, sms, rows, fits.COOP_BLOCK_H)
            if -(-hidden // fits.COOP_BLOCK_H) > sms or variant not in [f"R{r}" for r in rows] + ["tiled"]:
                assert batch is None
                continue
            cfg = fits.cooperative_variant(configs, hidden, batch, sms)
            assert (f"R{cfg.block_b}" if cfg.registers else "tiled") == variant, (batch, cfg)


def test_quick_grid_covers_every_pair_of_values():
    kinds = list(BUILTIN) + ["CUSTOM"]
    cases = [c for c in plan.correctness_cases(kinds, list(plan.PRECISIONS), quick=True, dry_run=False)
             if not c.anchor]
    axes = [lambda c: c.kind, lambda c: c.tier, lambda c: c.precision, lambda c: c.layout, lambda c: c.structure]
    full = [c for c in plan.correctness_cases(kinds, list(plan.PRECISIONS), False, False) if not c.anchor]
    assert len(full) == 5 * 5 * 4 * 2 * 2
    values = [{a(c) for c in full} for a in axes]
    for i in range(len(axes)):
        for j in range(i + 1, len(axes)):
            seen = {(axes[i](c), axes[j](c)) for c in cases}
            assert seen == {(a, b) for a in values[i] for b in values[j]}, (i, j)


def test_sigterm_writes_what_was_gathered_and_says_incomplete(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "fastrnn.gpu_check", "--out", str(tmp_path), "--dry-run", "--quick",
           "--only", "cooperative/tiled"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:  # the tiled case takes seconds in the interpreter: stop it there
        lines.append(line)
        if "--- correctness" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, "".join(lines) + rest
    data = _load(tmp_path)
    assert data["verdict"] == "INCOMPLETE" and "SIGTERM" in data["meta"]["interrupted"]
    assert (tmp_path / "gpu-dry-run.md").read_text().startswith("# fastrnn GPU check: INCOMPLETE")
