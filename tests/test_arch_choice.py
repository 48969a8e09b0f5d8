"""The tier choice per GPU arch, with a fake device (``policy.device_limits``): on sm_86 /
sm_89 (101,376 B of shared memory per block) no chosen cooperative configuration or resident
entry needs more shared memory than that (kernels/fits.py records what each needs per arch),
entries that do not compile clean there are not chosen, and the choices on sm_80 / sm_90 are
the tables' own (every entry fits there).
"""

from __future__ import annotations

import pytest
import torch

from fastrnn.backends.triton import cooperative as coop_launcher
from fastrnn.backends.triton import policy, resident as resident_launcher, selfcheck
from fastrnn.backends.triton import tier_for
from fastrnn.kernels import fits, report

CPU = torch.device("cpu")
KINDS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
COOP_DTYPES = ((torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False))
HIDDEN = range(16, 16 * fits.REFERENCE_SMS + 1, 16)
SMALL = 101376


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setattr(selfcheck, "checked", {})
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    monkeypatch.setenv("FASTRNN_SELF_CHECK", "0")


def _fake_device(monkeypatch, arch: int, shared: int | None = None):
    shared = fits.SHARED_LIMIT[arch] if shared is None else shared
    monkeypatch.setattr(policy, "device_limits", lambda device: (arch, shared))


def _key(cfg, dtype, tf32):
    return fits.dtype_name(dtype), fits.dot_precision(dtype, tf32), cfg.slab_k


def _tables_choice(dtype, hidden, tf32):
    """The configuration the table gives with no device limit: the slab for the next power
    of two >= hidden where there is one, else the streaming one."""
    name, precision = fits.dtype_name(dtype), fits.dot_precision(dtype, tf32)
    return (fits.COOPERATIVE.get((name, precision, 1 << (hidden - 1).bit_length()))
            or fits.COOPERATIVE[(name, precision, 0)])


def test_every_cooperative_entry_has_a_shared_memory_record():
    compiled = {k for k in fits.COOPERATIVE if k[0] != "float64"}
    assert set(fits.COOPERATIVE_SHARED) == compiled
    assert all(set(v) == {80, 90, 100} for v in fits.COOPERATIVE_SHARED.values())
    assert fits.cooperative_shared(("float64", "ieee", 0), 86) == 0  # interpreter only: never compiled
    assert fits.cooperative_shared(("float16", "ieee", 1024), 86) == 164872  # unrecorded arch: the largest


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100])
def test_cooperative_configs_fit_the_arch(arch):
    """Every configuration chosen on an arch (tiled and register variants) fits its shared
    memory; where the slab does not fit, the layer streams W_hh (never no configuration)."""
    limit = fits.SHARED_LIMIT[arch]
    for dtype, tf32 in COOP_DTYPES:
        for hidden in HIDDEN:
            configs = fits.cooperative_configs(dtype, hidden, tf32, arch)
            assert configs, (dtype, tf32, hidden, arch)
            for cfg in configs:
                assert fits.cooperative_shared(_key(cfg, dtype, tf32), arch) <= limit, (dtype, tf32, hidden, cfg)
            tiled = _tables_choice(dtype, hidden, tf32)
            fits_here = (fits.cooperative_shared(_key(tiled, dtype, tf32), arch) <= limit
                         and not fits.cooperative_arch_miss(_key(tiled, dtype, tf32), 0, arch))
            expected = tiled if fits_here else fits.COOPERATIVE[_key(tiled, dtype, tf32)[:2] + (0,)]
            assert configs[0] == expected, (dtype, tf32, hidden, arch)


def test_sm80_and_sm90_keep_the_tables_choice():
    for arch in (80, 90):
        for dtype, tf32 in COOP_DTYPES:
            for hidden in HIDDEN:
                configs = fits.cooperative_configs(dtype, hidden, tf32, arch)
                assert configs == fits.cooperative_configs(dtype, hidden, tf32), (arch, dtype, hidden)
                assert configs[0] == _tables_choice(dtype, hidden, tf32), (arch, dtype, hidden)


def test_sm100_streams_where_the_slab_forwards_spill():
    """On sm_100 the entries fits.COOPERATIVE_ARCH_MISSES names (their kernels spill there)
    are not chosen, with their register variants; the others keep the tables' choice."""
    for dtype in (torch.float16, torch.bfloat16):
        assert fits.cooperative_config(dtype, 1024, False, 100).slab_k == 0
        assert fits.cooperative_config(dtype, 512, False, 100).slab_k == 0
        assert fits.cooperative_config(dtype, 256, False, 100).slab_k == 256
        assert all(c.slab_k == 0 for c in fits.cooperative_configs(dtype, 768, False, 100))
        assert fits.cooperative_config(dtype, 1024, False, 90).slab_k == 1024
    assert fits.cooperative_config(torch.float32, 256, True, 100).slab_k == 0
    assert fits.cooperative_config(torch.float32, 128, True, 100).slab_k == 128
    assert fits.cooperative_config(torch.float32, 512, False, 100).slab_k == 512

    def register_rows(arch):
        return sorted(c.block_b for c in fits.cooperative_configs(torch.float32, 1024, False, arch) if c.registers)

    assert 64 in register_rows(90) and 64 not in register_rows(100) and 16 in register_rows(100)
    limit = fits.SHARED_LIMIT[100]
    assert "sm_100" in fits.resident_refusal("LSTM", 64, 0, torch.float32, 100, limit)
    assert fits.resident_refusal("LSTM", 32, 0, torch.float32, 100, limit) is None
    assert fits.resident_refusal("LSTM", 64, 0, torch.float32, 90, limit) is None
    assert not fits.resident_regularised("RNN_TANH", torch.float32, 64, 100)
    assert fits.resident_regularised("RNN_TANH", torch.float32, 64, 90)
    # the TF32 forward at 32 runs 4 warps (resident_tiles.TF32_WARPS), which sm_100 compiles clean
    assert fits.resident_regularised("RNN_TANH", torch.float32, 32, 100)


def test_sm86_streams_where_the_large_slabs_do_not_fit():
    for arch in (86, 89):
        assert fits.cooperative_config(torch.float16, 1024, False, arch).slab_k == 0
        assert fits.cooperative_config(torch.bfloat16, 768, False, arch).slab_k == 0
        assert fits.cooperative_config(torch.float32, 512, False, arch).slab_k == 0
        assert fits.cooperative_config(torch.float16, 512, False, arch).slab_k == 512  # 82,944 B: fits
        assert fits.cooperative_config(torch.float32, 256, True, arch).slab_k == 256
    assert fits.cooperative_config(torch.float16, 1024, False, 80).slab_k == 1024
    assert fits.cooperative_config(torch.float32, 512, False, 90).slab_k == 512
    # A device reporting less than its arch's table value: its own number decides.
    assert fits.cooperative_config(torch.float16, 512, False, 90, shared_limit=SMALL).slab_k == 512
    assert fits.cooperative_config(torch.float16, 512, False, 90, shared_limit=65536).slab_k == 0
    assert fits.cooperative_config(torch.float16, 512, False, 90, shared_limit=1024) is None
    assert fits.cooperative_refusal("LSTM", 512, 0, torch.float16, 132, True, 90, 1024) is not None


@pytest.mark.parametrize("arch", [80, 86, 90])
def test_the_launcher_chooses_by_the_device(monkeypatch, arch):
    """The cooperative launcher's configurations and its per-batch choice read the device's
    arch and shared memory (a fake device); the layer chooses the cooperative tier there."""
    monkeypatch.setattr(coop_launcher, "sm_count", lambda device: 132)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    _fake_device(monkeypatch, arch)
    limit = fits.SHARED_LIMIT[arch]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for hidden in (256, 512, 768, 1024):
            configs = coop_launcher.configs(hidden, dtype, CPU)
            assert configs == fits.cooperative_configs(dtype, hidden, False, arch)
            for batch in (1, 16, 64, 1000):
                cfg = coop_launcher.launch_config(hidden, batch, dtype, CPU)
                assert cfg in configs
                assert fits.cooperative_shared(_key(cfg, dtype, False), arch) <= limit
            if arch == 86 and hidden > 512 and dtype != torch.float32:
                assert configs[0].slab_k == 0, (dtype, hidden)
            elif arch != 86:
                assert configs[0] == _tables_choice(dtype, hidden, False), (dtype, hidden)
            assert "configurations " + ", ".join(c.label for c in configs) == selfcheck.variant(
                "cooperative", hidden, dtype, CPU)
    # The tier choice: a refusal through the device's shared memory.
    assert policy.refusal("cooperative", "LSTM", 1024, 0, torch.float16, CPU) is None
    _fake_device(monkeypatch, arch, 1024)
    assert "shared memory" in policy.refusal("cooperative", "LSTM", 1024, 0, torch.float16, CPU)


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100])
def test_resident_choice_fits_the_arch(monkeypatch, arch):
    """Wherever the tier choice picks the resident tier on an arch, the entry's recorded
    shared memory fits it and fits.RESIDENT_ARCH_MISSES does not rule it out; on sm_80 /
    sm_90 every entry runs where its shared memory fits (the table's choice)."""
    _fake_device(monkeypatch, arch)
    limit = fits.SHARED_LIMIT[arch]
    count = 0
    for kind in KINDS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for hidden in (1, 16, 32, 33, 48, 64, 65, 100, 128, 129):
                tier = tier_for(kind, hidden, 0, dtype, CPU)
                fit = fits.resident_fit(kind, dtype, hidden)
                if tier == "resident":
                    count += 1
                    assert fits.shared_needed(fit, arch) <= limit, (kind, dtype, hidden)
                    assert not fits.resident_arch_miss(kind, dtype, fit.forward.block_h, arch)
                if arch in (80, 90):
                    assert (tier == "resident") == (fit is not None and fits.shared_needed(fit, arch) <= limit)
    assert count > 0


def test_resident_arch_misses():
    """An entry that does not compile clean on an arch is not chosen there (all of it, or
    only with regularisers), but still everywhere else."""
    assert fits.resident_refusal("RNN_TANH", 64, 0, torch.float64, 86, SMALL) is not None
    assert fits.resident_refusal("RNN_TANH", 64, 0, torch.float64, 90, fits.SHARED_LIMIT[90]) is None
    assert fits.resident_refusal("RNN_TANH", 64, 0, torch.float32, 86, SMALL) is None  # plain calls: clean
    assert not fits.resident_regularised("RNN_TANH", torch.float32, 64, 86)
    assert fits.resident_regularised("RNN_TANH", torch.float32, 64, 80)
    assert fits.resident_regularised("RNN_TANH", torch.float32, 64)
    cell_refusal = resident_launcher.refuses_extras
    from fastrnn import cells

    assert cell_refusal(cells.RNN_TANH, 64, torch.float32, ("zoneout",)) is None
    assert cell_refusal(cells.RNN_TANH, 64, torch.float32, ("resets",), CPU) is None


def test_resident_arch_miss_sends_regularised_calls_to_the_step_tier(monkeypatch):
    from fastrnn import cells

    _fake_device(monkeypatch, 86)
    assert resident_launcher.refuses_extras(cells.RNN_TANH, 64, torch.float32, ("zoneout",), CPU) is not None
    _fake_device(monkeypatch, 80)
    assert resident_launcher.refuses_extras(cells.RNN_TANH, 64, torch.float32, ("zoneout",), CPU) is None


@pytest.mark.parametrize("arch", [86, 89])
def test_report_marks_what_the_choice_never_launches_on_the_arch(arch):
    """A row the tier choice cannot pick on sm_86 / sm_89 (its entry's recorded shared
    memory passes 101,376 B, or fits.RESIDENT_ARCH_MISSES) is "not launched" there; every
    other persistent row's record fits."""
    specs = report.specialisations("resident") + report.specialisations("cooperative")
    idle = [s for s in specs if not report.launched_on(s, arch)]
    assert {s.config.slab_k for s in idle if isinstance(s.config, fits.CoopConfig)} == {512, 1024}
    for spec in specs:
        need = report.recorded_shared(spec, arch)
        assert (need <= SMALL) or spec in idle, (spec.kernel_name, spec.label, spec.config)
        if report.launched_on(spec, 80):
            assert report.launched_on(spec, 90)
    for spec in specs:
        if isinstance(spec.config, fits.CoopConfig):
            assert report.launched_on(spec, 80) and report.launched_on(spec, 90)


def test_layernorm_resident_arch_misses(monkeypatch):
    """The LayerNorm cells' resident entries: on sm_86 their regularised kernels at
    fp16/bf16 64 spill, so calls with regularisers run the step tier's LayerNorm path there;
    plain calls stay resident."""
    from fastrnn.backends.triton import norm_resident
    from fastrnn.cells.variants import layer_norm_lstm

    for dtype in (torch.float16, torch.bfloat16):
        assert fits.resident_norm_refusal("LayerNormLSTM", 64, dtype, 86, SMALL) is None
        assert not fits.resident_norm_regularised("LayerNormLSTM", dtype, 64, True, 86)
        assert fits.resident_norm_regularised("LayerNormLSTM", dtype, 64, True, 90)
    cell = layer_norm_lstm()
    _fake_device(monkeypatch, 86)
    assert norm_resident.refuses_regularisers(cell, 64, torch.float16, CPU, ("zoneout",)) is not None
    _fake_device(monkeypatch, 90)
    assert norm_resident.refuses_regularisers(cell, 64, torch.float16, CPU, ("zoneout",)) is None


def test_cooperative_arch_misses(monkeypatch):
    """A cooperative configuration fits.COOPERATIVE_ARCH_MISSES rules out on an arch is not
    chosen there (a register variant: the others remain; a tiled entry: the layer streams),
    and the report marks its rows not launched there."""
    specs = report.specialisations("cooperative")
    monkeypatch.setitem(fits.COOPERATIVE_ARCH_MISSES, 86, frozenset({
        ("float16", "ieee", 0, 64), ("float16", "ieee", 256, 0)}))
    stream = fits.cooperative_configs(torch.float16, 1040, False, 86)  # past the slabs: streamed
    assert [c.block_b for c in stream] == [16, 16] and stream[1].registers
    assert [c.block_b for c in fits.cooperative_configs(torch.float16, 1040, False, 80)] == [16, 16, 64]
    assert fits.cooperative_config(torch.float16, 256, False, 86).slab_k == 0
    assert fits.cooperative_config(torch.float16, 256, False, 89).slab_k == 256
    idle = {(s.config.slab_k, s.config.block_b, s.config.registers) for s in specs
            if s.dtype == torch.float16 and not report.launched_on(s, 86)}
    assert idle == {(0, 64, True), (256, 16, False), (256, 16, True), (1024, 16, False), (1024, 16, True)}


# --------------------------------------------------------------------------------------
# The step tier and the LayerNorm row kernels: per-arch configurations
# --------------------------------------------------------------------------------------

STEP_DTYPES = ((torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False))
NORM_FAMILIES = ("LayerNormLSTM", "LayerNormGRU")


def _triton_cells():
    from fastrnn import cells

    return [c for c in cells.defined() if c.runs_on_triton]


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 100])
def test_step_and_row_configs_per_arch(arch):
    """On sm_80 / sm_90, the archs the tables are made for, every step and row-kernel choice
    is the one made from H alone (every cell, dtype, alignment and kernel). On sm_86 / sm_89
    the peephole LSTM's aligned fp32 IEEE forward runs the 16-wide step configuration at every
    H; the LayerNorm-LSTM's saving 16-bit forward of a 1024-wide row runs 8 warps; its 16-bit
    backward of a 2048-wide row with H not a multiple of 8 runs on fp32 copies. On sm_100 its
    fp32 saving forward of 256-wide rows runs 4 warps. Every other choice is the tables'."""
    from fastrnn.kernels import norm_rows, step_args

    small = arch in (86, 89)
    for cell in _triton_cells():
        for dtype, tf32 in STEP_DTYPES:
            for hidden in (1, 16, 17, 24, 32, 100, 1024):
                for aligned in (False, True):
                    for kernel in ("forward", "backward"):
                        got = step_args.step_config(hidden, cell, dtype, tf32, aligned, arch, kernel)
                        moved = (small and cell.name == "LSTM_PEEPHOLE" and dtype == torch.float32 and not tf32
                                 and aligned and kernel == "forward")
                        mma_forward = kernel == "forward" and (dtype != torch.float32 or tf32)
                        sixteen = step_args.SMALL_MMA_FORWARD if mma_forward else step_args.SMALL_CONFIG
                        want = sixteen if moved or hidden <= 16 else step_args.DEFAULT_CONFIG
                        assert got == want, (cell.name, dtype, tf32, hidden, aligned, kernel)
    for family in NORM_FAMILIES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            sixteen = small and family == "LayerNormLSTM" and dtype != torch.float32
            for hidden in range(1, norm_rows.max_hidden(dtype) + 1, 7):
                base = norm_rows.base_config(hidden, dtype)
                wide_rows = arch == 100 and family == "LayerNormLSTM" and dtype == torch.float32
                for save in (None, False, True):
                    got = norm_rows.row_config(hidden, dtype, arch, family, save)
                    moved = sixteen and save is True and base.block_h == 1024
                    moved_100 = wide_rows and save is True and base.block_h == 256
                    want = norm_rows.RowConfig(1, 1024, 8) if moved else base
                    assert got == (norm_rows.RowConfig(4, 256, 4) if moved_100 else want), (family, dtype, hidden, save)
                wide = sixteen and 1024 < hidden and hidden % 8 != 0
                assert norm_rows.fp32_backward(family, hidden, dtype, arch) == wide, (family, dtype, hidden)


def test_report_marks_the_step_and_row_configurations_per_arch():
    """The report compiles every arch of ARCHS; a step or row-kernel row is "not launched"
    exactly where its launcher picks another configuration: the six spilling rows' variants on
    sm_86 / sm_89 and the two on sm_100, the rows that replace them elsewhere."""
    assert report.ARCHS == (80, 86, 89, 90, 100)
    specs = report.specialisations("step") + report.specialisations("norm")

    def idle(arch):
        return sorted((s.kernel_name, s.kind, s.label, s.config.label) for s in specs if not report.launched_on(s, arch))

    moved = [("norm-forward", "LayerNormLSTM", f"{d}{a}-save", "B1-H1024-w8")
             for d in ("bfloat16", "float16") for a in ("", "-a8")]
    moved_100 = [("norm-forward", "LayerNormLSTM", f"float32{a}-save", "B4-H256-w4") for a in ("", "-a8")]
    assert idle(80) == idle(90) == sorted(moved + moved_100)
    assert idle(100) == sorted(moved + [("norm-forward", "LayerNormLSTM", f"float32{a}-save", "B4-H256-w8")
                                        for a in ("", "-a8")])
    spilled = sorted([("forward", "LSTM_PEEPHOLE", "float32-a8", "B16-H32-K32-w4"),
                      ("forward", "LSTM_PEEPHOLE", "float32-a8-save", "B16-H32-K32-w4")]
                     + [("norm-forward", "LayerNormLSTM", f"{d}{a}-save", "B1-H1024-w16")
                        for d in ("bfloat16", "float16") for a in ("", "-a8")]
                     + [("norm-backward", "LayerNormLSTM", d, "B1-H2048-w8") for d in ("bfloat16", "float16")])
    assert idle(86) == idle(89) == sorted(spilled + moved_100)


def _spy(monkeypatch, module, name):
    """Record what ``module.name`` returns, calling through."""
    real, seen = getattr(module, name), []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("arch", [86, 90])
def test_step_launcher_reads_the_arch(monkeypatch, arch):
    """The peephole LSTM in fp32 at H = 24 (aligned) on a fake device: its forward runs the
    16-wide configuration on sm_86 and the default one on sm_90, its backward the default one
    on both; outputs and gradients equal the reference backend's either way."""
    from test_triton_extras_step import TOL, _pair, _problem, _whole

    from fastrnn.backends.triton import buffers
    from fastrnn.kernels import recurrent_step, step_args

    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    _fake_device(monkeypatch, arch)
    seen = _spy(monkeypatch, recurrent_step, "step_config")
    fast, ref = _pair("LSTM", 24, torch.float32, 0, peephole=True)
    leaves, flags, lengths = _problem(fast, True, True, torch.float32, 0)
    got = _whole(fast, leaves, flags, lengths, True, True)
    want = _whole(ref, leaves, flags, lengths, True, True)
    for key in want:
        torch.testing.assert_close(got[key], want[key], **TOL[torch.float32], msg=lambda m, key=key: f"{key}: {m}")
    # per stepper: (unaligned, aligned) of the forward, then of the backward
    forward, backward = seen[:2], seen[2:4]
    assert forward == [step_args.DEFAULT_CONFIG, step_args.SMALL_CONFIG if arch == 86 else step_args.DEFAULT_CONFIG]
    assert backward == [step_args.DEFAULT_CONFIG] * 2


def test_row_kernels_read_the_arch(monkeypatch):
    """The LayerNorm-LSTM in fp16 on a fake sm_86 device: at H = 1024 the saving forward runs
    8 warps; at H = 1028 (not a multiple of 8, a 2048-wide row) the backward runs on fp32
    copies. Outputs and gradients within fp16's rounding of the fp64 reference's (as
    tests/test_triton_layernorm.py's fp16 test), and of the same call on sm_90."""
    from test_triton_extras_step import _pair, _problem, _whole

    from fastrnn.backends.triton import buffers, norm
    from fastrnn.kernels import norm_rows

    monkeypatch.setattr(buffers, "FILL_NAN", True)
    monkeypatch.setenv("FASTRNN_TIER", "step")
    configs = _spy(monkeypatch, norm_rows, "row_config")
    wide = _spy(monkeypatch, norm, "_fp32_backward")
    for hidden, config, upcast in ((1024, norm_rows.RowConfig(1, 1024, 8), False),
                                   (1028, norm_rows.RowConfig(1, 2048, 8), True)):
        results = {}
        for arch in (86, 90):
            _fake_device(monkeypatch, arch)
            configs.clear()
            wide.clear()
            fast, ref = _pair("LayerNormLSTM", hidden, torch.float16, 3)
            leaves, flags, lengths = _problem(fast, False, True, torch.float16, 3)
            results[arch] = _whole(fast, leaves, flags, lengths, False, True)
            if arch == 86:
                assert configs[0] == config, hidden  # the forward's
                assert len(wide) == (1 if upcast else 0), hidden
                assert all(c == norm_rows.base_config(hidden, torch.float16) for c in configs[1:]), hidden
        ref = ref.to(torch.float64)
        ref.load_state_dict({k: v.to(torch.float64) for k, v in fast.state_dict().items()})
        want = _whole(ref, [t.detach().to(torch.float64).requires_grad_() for t in leaves], flags, lengths, False,
                      True)
        for key in want:
            got = results[86][key]
            assert got.dtype == torch.float16 and torch.isfinite(got).all(), (hidden, key)
            for other in (want[key], results[90][key].to(torch.float64)):
                torch.testing.assert_close(got.to(torch.float64), other, rtol=1e-2, atol=1e-2,
                                           msg=lambda m, key=key: f"H {hidden} {key}: {m}")


def test_aligned_backward_per_device():
    """A resident backward with H % 8 == 0 runs its H_ALIGNED kernel where the device's shared
    memory holds it and it compiles clean there (resident_tiles.ALIGNED_BACKWARD): the fp16 GRU
    128 one needs 159,744 B, more than a 99 KB part has; the regularised bf16 LSTM 32 one spills
    on sm_80 / sm_86 / sm_89 (the fp16 one does not); fp32 has none; the LSTM 64 one runs 8
    warps (4 spill on sm_80)."""
    from fastrnn.kernels.resident_tiles import aligned_backward, h_aligned, kernel_config

    limit = fits.SHARED_LIMIT
    assert aligned_backward("GRU", torch.float16, 128, False, 80, limit[80])
    assert not aligned_backward("GRU", torch.float16, 128, False, 86, limit[86])
    assert aligned_backward("LSTM", torch.bfloat16, 32, False, 80, limit[80])
    assert [aligned_backward("LSTM", torch.bfloat16, 32, True, arch, limit[arch]) for arch in (80, 86, 89, 90, 100)] \
        == [False, False, False, True, True]
    assert aligned_backward("LSTM", torch.float16, 32, True, 80, limit[80])
    assert not aligned_backward("LSTM", torch.float32, 32, False, 90, limit[90])
    assert h_aligned("backward", 48, True) and not h_aligned("backward", 44, True)
    assert not h_aligned("backward", 48, False) and h_aligned("forward", 48)
    fit = fits.RESIDENT["LSTM", "float16", 64]
    assert fit.backward.num_warps == 4
    assert kernel_config(fit.backward, "LSTM", torch.float16, False, "backward", False, True).num_warps == 8
    assert kernel_config(fit.backward, "LSTM", torch.float16, False, "backward", False, False).num_warps == 4
