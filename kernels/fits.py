"""Which (cell kind, dtype, H, proj size, block configuration) each kernel tier can run.

One table per persistent tier, read by both the tier choice
(:func:`fastrnn.backends.triton.tier_for`) and the ahead-of-time compile report
(``python -m fastrnn.kernels.report``), so what a launch may pick is exactly what the
report compiles and checks. Plain Python: importing it needs no Triton.

**Step tier**: runs everything (any H, any proj size); no table.

**Resident tier** (:data:`RESIDENT`): one program per 16 batch rows holds all of
``W_hh`` on chip for the whole sequence, so ``W_hh`` must fit one SM. An entry exists for
each (kind, dtype, ``BLOCK_H``) whose forward and backward kernels compile with no spill
for sm_80 and sm_90 (fp32: in both IEEE and TF32 precision) and fit sm_90's shared
memory; ``shared`` is the shared memory per block each arch's compile used (the larger
of forward and backward, of IEEE and TF32), which the report re-checks (compiled <=
recorded). The tier choice runs an entry on a device only when ``shared`` (for that
arch; the largest recorded value for another arch) fits the device's shared memory per
block and :data:`RESIDENT_ARCH_MISSES` does not rule it out on the device's arch (entries
that spill when compiled for sm_86 / sm_89 / sm_100). Layers with ``proj_size`` use the step
tier. A cell the table does not name uses the entries of one it borrows from (:func:`resident_entries`).

**Cooperative tier** (:data:`COOPERATIVE`): ``cdiv(H, 16)`` programs of 16 hidden units
each (all their gates), at most one per SM, with a grid barrier per step; ``W_hh`` is
streamed from L2 in ``BLOCK_K`` chunks each step, or, where that compiles clean, kept on
chip for the whole loop (``slab_k > 0``; the backward may still stream,
``CoopConfig.backward_streams``). One configuration per (dtype, dot precision,
``slab_k``), the same for every kind, plus its register variants
(:data:`COOPERATIVE_REGISTERS`, 16 and, where they fit, 64 rows per program): a launch whose batch fits
one tile of rows per program (:func:`cooperative_variant`) keeps the cell state and
``dh`` / ``dc`` in registers; a larger batch runs the tiled configuration. An entry runs on
a device only where its shared memory (:data:`COOPERATIVE_SHARED`) fits the device's per
block; where the slab does not, the layer streams ``W_hh``. The report
compiles every configuration for every kind and both directions. On a GPU the tier runs layers with ``H % 16 == 0`` (the launches specialise
``H`` as a multiple of 16, which the report compiles), ``H <= 16 x SM count``, no
``proj_size``, fp32/fp16/bf16 (fp64 only in Triton's interpreter, for tests).

How the table was made: ``python -m fastrnn.kernels.report --sweep`` compiles, for
each kind, dtype and ``BLOCK_H`` in (32, 64, 128) (fp64: 32, 64), the forward and the
backward kernel with ``num_warps`` 4, 8, 16 in turn, keeps the first clean one of each,
and prints this table; after a kernel change the report re-checks every entry, and
``--sweep --only KIND,DTYPE,BLOCK_H`` re-picks the entries it flags. ``BLOCK_H = max(32, next power of two >= H)``: ``tl.dot`` needs
16, and 32 halves the compiled variants; for tiny H a step is latency-bound, so the
masked extra work is expected to cost little (not measured: no GPU here).

Duplicated warp work: with ``BLOCK_B = 16`` the MMA dots (fp16/bf16/fp64, fp32 TF32) put
the warps along ``BLOCK_H`` (``warpsPerCTA = [1, w]``, a 16x8 tile each), so ``w > BLOCK_H / 8``
warps compute the same tiles twice (the report's ``distinct_warps``). Entries are picked at
``BLOCK_H / 8`` warps where that compiles clean; fp32 entries whose IEEE (FMA) kernel needs
more run their TF32 kernels with fewer (``resident_tiles.TF32_WARPS``); the few that spill
with fewer warps keep repeated ones (``resident_tiles.REPEATED_WARPS``).

Misses worth knowing: LSTM fp16/bf16 at ``BLOCK_H`` 128 (forward: 24 B of spill on
sm_90 at 16 warps; backward: 172 KB of shared memory, over sm_80's limit),
fp32 RNN at 128 (the IEEE forward spills), fp32 LSTM/GRU at 128 (``W_hh`` is 256 / 192
KB; with the backward's scratch over every limit), fp64 LSTM/GRU at 64 (the same).
"""

from __future__ import annotations

from typing import NamedTuple

#: Largest shared memory one block may use (opt-in maximum), bytes, per compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}  # CUDA C++ Programming Guide,
# "Compute Capabilities": 163 KB (8.0), 99 KB (8.6, 8.9), 227 KB (9.0, 10.0) per block
#: The device the tier choice assumes where there is none to ask (Triton's interpreter).
REFERENCE_ARCH = 90
#: Smallest ``BLOCK_H`` of the resident tier.
MIN_BLOCK_H = 32


class KernelConfig(NamedTuple):
    """Block sizes and warps of one kernel (picked from the table, never from B or T)."""

    block_b: int
    block_h: int
    num_warps: int

    @property
    def label(self) -> str:
        return f"B{self.block_b}-H{self.block_h}-w{self.num_warps}"


class ResidentFit(NamedTuple):
    """A resident-tier entry: the forward and backward kernel configurations and the
    shared memory per block they need on each compiled arch (bytes)."""

    forward: KernelConfig
    backward: KernelConfig
    shared: dict


def _fit(block_h: int, fwd_warps: int, bwd_warps: int, shared80: int, shared90: int) -> ResidentFit:
    return ResidentFit(KernelConfig(16, block_h, fwd_warps), KernelConfig(16, block_h, bwd_warps),
                       {80: shared80, 90: shared90})


# (kind, dtype name, BLOCK_H) -> ResidentFit. Generated by compiling every candidate
# (see the module docstring); `python -m fastrnn.kernels.report` checks each entry.
RESIDENT: dict[tuple[str, str, int], ResidentFit] = {
    ('LSTM', 'float32', 32): _fit(32, 4, 4, 51200, 52224),
    ('LSTM', 'float32', 64): _fit(64, 8, 8, 135168, 136192),
    # LSTM float32 128: no clean configuration
    ('LSTM', 'float16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LSTM', 'float16', 64): _fit(64, 4, 4, 53248, 54272),
    # LSTM float16 128: no clean configuration
    ('LSTM', 'bfloat16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LSTM', 'bfloat16', 64): _fit(64, 4, 4, 53248, 54272),
    # LSTM bfloat16 128: no clean configuration
    ('LSTM', 'float64', 32): _fit(32, 4, 8, 102400, 103424),
    # LSTM float64 64: no clean configuration
    # the peephole LSTM: LSTM's entries (its three per-unit rows add registers, no shared
    # memory) except float64 32, whose backward spills 24 B on sm_90 with them
    ('LSTM_PEEPHOLE', 'float32', 32): _fit(32, 4, 4, 51200, 52224),
    ('LSTM_PEEPHOLE', 'float32', 64): _fit(64, 8, 8, 135168, 136192),
    ('LSTM_PEEPHOLE', 'float16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LSTM_PEEPHOLE', 'float16', 64): _fit(64, 4, 4, 53248, 54272),
    ('LSTM_PEEPHOLE', 'bfloat16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LSTM_PEEPHOLE', 'bfloat16', 64): _fit(64, 4, 4, 53248, 54272),
    # LSTM_PEEPHOLE float64 32: no clean configuration
    ('GRU', 'float32', 32): _fit(32, 4, 4, 43008, 44032),
    ('GRU', 'float32', 64): _fit(64, 16, 8, 110592, 111616),
    # GRU float32 128: no clean configuration
    ('GRU', 'float16', 32): _fit(32, 4, 4, 8192, 9216),
    ('GRU', 'float16', 64): _fit(64, 4, 8, 28672, 29696),
    ('GRU', 'float16', 128): _fit(128, 8, 16, 106496, 107520),
    ('GRU', 'bfloat16', 32): _fit(32, 4, 4, 8192, 9216),
    ('GRU', 'bfloat16', 64): _fit(64, 4, 8, 28672, 29696),
    ('GRU', 'bfloat16', 128): _fit(128, 8, 16, 106496, 107520),
    ('GRU', 'float64', 32): _fit(32, 4, 4, 86016, 87040),
    # GRU float64 64: no clean configuration
    ('RNN_TANH', 'float32', 32): _fit(32, 8, 4, 14336, 15360),
    ('RNN_TANH', 'float32', 64): _fit(64, 8, 4, 36864, 37888),
    # RNN_TANH float32 128: no clean configuration
    ('RNN_TANH', 'float16', 32): _fit(32, 4, 4, 4096, 5120),
    ('RNN_TANH', 'float16', 64): _fit(64, 4, 8, 12288, 13312),
    ('RNN_TANH', 'float16', 128): _fit(128, 4, 4, 38912, 39936),
    ('RNN_TANH', 'bfloat16', 32): _fit(32, 4, 4, 4096, 5120),
    ('RNN_TANH', 'bfloat16', 64): _fit(64, 4, 8, 12288, 13312),
    ('RNN_TANH', 'bfloat16', 128): _fit(128, 4, 4, 38912, 39936),
    ('RNN_TANH', 'float64', 32): _fit(32, 4, 4, 28672, 29696),
    ('RNN_TANH', 'float64', 64): _fit(64, 4, 4, 73728, 74752),
    ('RNN_RELU', 'float32', 32): _fit(32, 8, 4, 14336, 15360),
    ('RNN_RELU', 'float32', 64): _fit(64, 8, 4, 36864, 37888),
    # RNN_RELU float32 128: no clean configuration
    ('RNN_RELU', 'float16', 32): _fit(32, 4, 4, 4096, 5120),
    ('RNN_RELU', 'float16', 64): _fit(64, 4, 4, 12288, 13312),
    ('RNN_RELU', 'float16', 128): _fit(128, 4, 4, 38912, 39936),
    ('RNN_RELU', 'bfloat16', 32): _fit(32, 4, 4, 4096, 5120),
    ('RNN_RELU', 'bfloat16', 64): _fit(64, 4, 4, 12288, 13312),
    ('RNN_RELU', 'bfloat16', 128): _fit(128, 4, 4, 38912, 39936),
    ('RNN_RELU', 'float64', 32): _fit(32, 4, 4, 28672, 29696),
    ('RNN_RELU', 'float64', 64): _fit(64, 4, 4, 73728, 74752),
}

#: Resident entries ``(kind, dtype name, BLOCK_H)`` whose regularised specialisations (the
#: kernels' ``REGULARISED``: zoneout or a recurrent-dropout scale) do not compile clean on
#: sm_80 / sm_90 although the plain ones do: a call with regularisers on such an entry runs
#: on the step tier (:func:`resident_regularised`). The report compiles the others.
RESIDENT_UNREGULARISED: frozenset[tuple[str, str, int]] = frozenset({
    ('LSTM', 'float32', 64),  # forward, sm_90: 8 B of spill
    ('LSTM', 'float16', 64), ('LSTM', 'bfloat16', 64),  # sm_90: forward 8 B, backward 24 B
    ('LSTM_PEEPHOLE', 'float32', 64),  # forward, sm_90: 40 B
    ('LSTM_PEEPHOLE', 'float16', 64), ('LSTM_PEEPHOLE', 'bfloat16', 64),  # sm_90: forward 32 B, backward 56-88 B
    ('GRU', 'float16', 128), ('GRU', 'bfloat16', 128),  # backward, sm_90: 24 B
    ('GRU', 'float64', 32),  # forward sm_80: 8 B; backward sm_90: 24 B
    ('RNN_TANH', 'float16', 128), ('RNN_TANH', 'bfloat16', 128),  # forward sm_90: 16 B; backward: 2 KB over the record
    ('RNN_RELU', 'float16', 128), ('RNN_RELU', 'bfloat16', 128),  # the same
    ('RNN_RELU', 'float32', 32),  # TF32 forward, sm_90: 8 B
})

#: Resident entries ``(kind or LayerNorm family, dtype name, BLOCK_H)`` that compile clean for
#: sm_80 and sm_90 but not for another arch, per compute capability: ``"all"`` (the entry does
#: not run there) or ``"regularised"`` (only its ``REGULARISED`` kernels spill: calls with
#: regularisers run on the step tier there). Entries whose recorded shared memory passes an
#: arch's limit need no line: they drop out by :func:`shared_needed`.
_SM86_MISSES = {  # the compile report's spills on sm_86
    ('LSTM_PEEPHOLE', 'float16', 64): "all",  # backward: 8 B
    ('RNN_TANH', 'float64', 64): "all", ('RNN_RELU', 'float64', 64): "all",  # forward: 2.3-5.6 KB
    ('RNN_TANH', 'float32', 64): "regularised", ('RNN_RELU', 'float32', 64): "regularised",  # TF32 forward: 8 B
    ('RNN_RELU', 'float16', 64): "regularised", ('RNN_RELU', 'bfloat16', 64): "regularised",  # forward: 8 B
    ('LayerNormLSTM', 'float16', 64): "regularised",  # the H_ALIGNED forward: 8 B
    ('LayerNormLSTM', 'bfloat16', 64): "regularised",  # backward: 8 B
}
_SM100_MISSES = {  # the compile report's spills on sm_100 (forwards: the LSTM's 104 B, the others 8 B, TF32 for fp32)
    ('LSTM', 'float32', 64): "all",
    ('RNN_TANH', 'float32', 64): "regularised", ('RNN_RELU', 'float32', 64): "regularised",
    ('LayerNormGRU', 'float32', 32): "regularised", ('LayerNormGRU', 'bfloat16', 64): "regularised",
}
RESIDENT_ARCH_MISSES: dict[int, dict[tuple[str, str, int], str]] = {86: _SM86_MISSES, 89: _SM86_MISSES,
                                                                    100: _SM100_MISSES}


def resident_arch_miss(kind, dtype, block_h: int, arch: int | None, regularised: bool = False) -> bool:
    """Whether :data:`RESIDENT_ARCH_MISSES` rules the entry of ``kind`` (a cell, its name or a
    LayerNorm family; a cell the tables do not name: the cell it borrows from), ``dtype`` and
    ``block_h`` out on ``arch``, for a call with (``regularised``) or without regularisers."""
    miss = RESIDENT_ARCH_MISSES.get(arch, {}).get((tabled_name(kind), dtype_name(dtype), block_h))
    return miss == "all" or (regularised and miss == "regularised")


# --- Cooperative tier ----------------------------------------------------------------------


class CoopConfig(NamedTuple):
    """Block sizes, warps, pipeline stages, where W_hh lives and where the state lives, for
    one cooperative launch."""

    block_b: int  # batch rows per tile (registers: per program)
    block_h: int  # hidden units per program
    block_k: int  # reduction chunk when W_hh is streamed
    num_warps: int
    num_stages: int  # software-pipelining depth of the streamed chunk loop
    slab_k: int  # 0: stream W_hh from L2 each step; else its on-chip slab, padded to slab_k >= H
    registers: bool = False  # True: one tile of block_b rows per program, state in registers
    backward_streams: bool = False  # True: the backward streams W_hh while the forward keeps the slab

    @property
    def backward_slab_k(self) -> int:
        """``SLAB_K`` of the backward kernel: ``slab_k``, or 0 (``W_hh`` streamed in
        ``block_k`` chunks) when ``backward_streams``."""
        return 0 if self.backward_streams else self.slab_k

    @property
    def label(self) -> str:
        where = f"S{self.slab_k}" if self.slab_k else f"K{self.block_k}"
        if self.slab_k and not self.backward_slab_k:
            where += f"-bK{self.block_k}"  # the backward streams
        rows = f"R{self.block_b}" if self.registers else f"B{self.block_b}"
        return f"{rows}-H{self.block_h}-{where}-w{self.num_warps}s{self.num_stages}"


#: Hidden units per cooperative program: the finest split ``tl.dot`` allows, so a layer
#: spreads over as many SMs as it can (H = 768 -> 48 programs).
COOP_BLOCK_H = 16
#: Hidden sizes a cooperative launch on a GPU must be a multiple of (see the module docstring).
COOP_H_MULTIPLE = 16
#: SM count the tier choice assumes where there is no device to ask (an H100 SXM).
REFERENCE_SMS = 132

# (dtype name, dot precision, slab_k) -> CoopConfig. Made by compiling candidates for sm_80
# and sm_90 (every kind, forward and backward) and keeping the first clean one; the report
# re-checks each. Every launch also passes maxnreg=255 (one program per SM leaves registers
# to spare; without it ptxas capped some kernels at 128 registers and spilled).
# Rejected, with their spills: fp32 IEEE (an FMA dot) with 2-3 stages, 8-24 B, so it runs
# unpipelined; fp32 TF32 at BLOCK_K 32, 8-32 B; bf16 at BLOCK_K 64, 32 B.
# On-chip slabs (the gate-stacked form of fastrnn.kernels.cooperative, 8 warps, 1 stage;
# H = next power of two up to the slab): the forward is clean at every slab whose
# operands fit sm_80's shared memory: fp16/bf16 up to 1024 (164 KB), fp32 IEEE up to 512
# (164 KB); fp32 TF32 up to 256 (TF32 512: 240 B of spill on sm_90). The backward's
# stacked dot carries the dgates of every gate ([SLAB_K, SLOTS * BLOCK_B]) beside the
# slab: clean for fp16/bf16 up to 256 (bf16 LSTM 512: 24-56 B of spill); fp32 TF32 at 256
# spills 32-544 B, so fp32 backwards stream (``backward_streams``), as fp32 IEEE, whose
# FMA dot at 128 spills 1.5 KB. 64-row register variants beside a slab only at 128
# (fp16/bf16): at 1024 their [SLAB_K, 64] operand leaves no shared memory (256 KB).
COOPERATIVE: dict[tuple[str, str, int], CoopConfig] = {
    ("float32", "ieee", 0): CoopConfig(16, COOP_BLOCK_H, 16, 4, 1, 0),
    ("float32", "tf32", 0): CoopConfig(16, COOP_BLOCK_H, 16, 4, 3, 0),
    ("float16", "ieee", 0): CoopConfig(16, COOP_BLOCK_H, 32, 4, 3, 0),
    ("bfloat16", "ieee", 0): CoopConfig(16, COOP_BLOCK_H, 32, 4, 3, 0),
    **{(name, "ieee", slab): CoopConfig(16, COOP_BLOCK_H, 32, 8, 1, slab, False, slab > 256)
       for name in ("float16", "bfloat16") for slab in (128, 256, 512, 1024)},
    **{("float32", "tf32", slab): CoopConfig(16, COOP_BLOCK_H, 16, 8, 1, slab, False, True)
       for slab in (128, 256)},
    **{("float32", "ieee", slab): CoopConfig(16, COOP_BLOCK_H, 16, 8, 1, slab, False, True)
       for slab in (128, 256, 512)},
    # Triton's interpreter only (tests); never compiled, never chosen on a GPU.
    ("float64", "ieee", 0): CoopConfig(16, COOP_BLOCK_H, 16, 4, 1, 0),
}

#: Rows per program of the register variants (``CoopConfig.registers``), smallest first.
COOP_REGISTER_ROWS = (16, 64)

# (dtype name, dot precision, slab_k, rows) -> CoopConfig with registers=True: the register
# variants of each COOPERATIVE entry (the same block_k / slab_k; warps and stages kept where
# that compiles clean). Made by compiling BLOCK_B 16, 32, 64 and 128 for sm_80 and sm_90
# (LSTM, GRU, RNN tanh, forward and backward) with the entry's warps, then 8 / 16 warps:
# clean at 16, 32 and 64 rows with the entry's warps (max 255 registers, 62 KB shared), except
# fp32 IEEE at 64 rows (the backward spills 8-24 B at 4 warps; clean at 8). 128 rows spill
# 8-360 B with the entry's warps (clean with 8 warps streamed, 16 with the slab). Only 16 (the
# smallest tl.dot tile: small batches pay no padded rows) and 64 are kept, to bound the compile
# report's time; a larger batch per program runs the tiled entry.
COOPERATIVE_REGISTERS: dict[tuple[str, str, int, int], CoopConfig] = {
    ("float32", "ieee", 0, 16): CoopConfig(16, COOP_BLOCK_H, 16, 4, 1, 0, True),
    ("float32", "ieee", 0, 64): CoopConfig(64, COOP_BLOCK_H, 16, 8, 1, 0, True),
    ("float32", "tf32", 0, 16): CoopConfig(16, COOP_BLOCK_H, 16, 4, 3, 0, True),
    ("float32", "tf32", 0, 64): CoopConfig(64, COOP_BLOCK_H, 16, 4, 3, 0, True),
    ("float16", "ieee", 0, 16): CoopConfig(16, COOP_BLOCK_H, 32, 4, 3, 0, True),
    ("float16", "ieee", 0, 64): CoopConfig(64, COOP_BLOCK_H, 32, 4, 3, 0, True),
    ("bfloat16", "ieee", 0, 16): CoopConfig(16, COOP_BLOCK_H, 32, 4, 3, 0, True),
    ("bfloat16", "ieee", 0, 64): CoopConfig(64, COOP_BLOCK_H, 32, 4, 3, 0, True),
    # The slab entries' 16-row variants (64 rows with a slab: only where it stays clean).
    **{(name, precision, slab, 16): cfg._replace(block_b=16, registers=True)
       for (name, precision, slab), cfg in COOPERATIVE.items() if slab},
    ("float16", "ieee", 128, 64): CoopConfig(64, COOP_BLOCK_H, 32, 8, 1, 128, True),
    ("bfloat16", "ieee", 128, 64): CoopConfig(64, COOP_BLOCK_H, 32, 8, 1, 128, True),
    # Triton's interpreter only (tests); never compiled, never chosen on a GPU.
    ("float64", "ieee", 0, 16): CoopConfig(16, COOP_BLOCK_H, 16, 4, 1, 0, True),
    ("float64", "ieee", 0, 64): CoopConfig(64, COOP_BLOCK_H, 16, 4, 1, 0, True),
}


# (dtype name, dot precision, slab_k) -> {arch: bytes}: each COOPERATIVE entry's shared memory
# per block (the largest over kinds, directions and register variants) as the report measures
# it. An entry runs only where that fits the device (:func:`cooperative_config`): on sm_86 /
# sm_89 (101,376 B) fp16/bf16's 1024 slab and fp32 IEEE's 512 slab drop out and stream W_hh
# from L2. fp64 (never compiled) has no record.
COOPERATIVE_SHARED: dict[tuple[str, str, int], dict] = {
    ("float32", "ieee", 0): {80: 5120, 90: 6144, 100: 6144},
    ("float32", "ieee", 128): {80: 40960, 90: 41984, 100: 41984},
    ("float32", "ieee", 256): {80: 81920, 90: 82944, 100: 82944},
    ("float32", "ieee", 512): {80: 163840, 90: 164864, 100: 164864},
    ("float32", "tf32", 0): {80: 40960, 90: 43008, 100: 46144},
    ("float32", "tf32", 128): {80: 40960, 90: 41984, 100: 41992},
    ("float32", "tf32", 256): {80: 81920, 90: 82944, 100: 82952},
    **{(name, "ieee", slab): shared for name in ("float16", "bfloat16") for slab, shared in (
        (0, {80: 40960, 90: 62464, 100: 62528}), (128, {80: 32768, 90: 82944, 100: 82952}),
        (256, {80: 49152, 90: 66560, 100: 66568}), (512, {80: 81920, 90: 82944, 100: 82952}),
        (1024, {80: 163840, 90: 164864, 100: 164872}))},
}


def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"float16"`` (the table's dtype key)."""
    return str(dtype).replace("torch.", "")


def resident_block_h(hidden: int) -> int:
    """``BLOCK_H`` of the resident kernels for hidden size ``hidden``."""
    return max(MIN_BLOCK_H, 1 << max(0, hidden - 1).bit_length())


def resident_entries(kind) -> dict[tuple[str, int], ResidentFit]:
    """The :data:`RESIDENT` entries of cell ``kind`` (a name or a ``fastrnn.cells.Cell``),
    keyed by ``(dtype name, BLOCK_H)``: its own where the table names the cell; else (a cell
    defined outside fastrnn) those of the table's cell with the fewest gates at least the
    cell's, the first in table order. What an entry measures, ``W_hh`` on chip beside the
    pointwise work, grows with the gate count; the compile report checks the borrowed
    entries for that cell all the same."""
    name = getattr(kind, "name", kind)
    own = {(d, bh): fit for (k, d, bh), fit in RESIDENT.items() if k == name}
    if own:
        return own
    donor = _donor(name)
    return {(d, bh): fit for (k, d, bh), fit in RESIDENT.items() if k == donor}


def tabled_name(kind) -> str | None:
    """The resident tables' name of ``kind`` (a cell, its name or a LayerNorm family): its own,
    or the cell it borrows entries from (:func:`_donor`)."""
    name = getattr(kind, "name", kind)
    return name if any(k == name for (k, _, _) in (*RESIDENT, *RESIDENT_NORM)) else _donor(name)


def _donor(name: str) -> str | None:
    """The tabled cell whose entries a cell the table does not name uses (None: no such cell)."""
    from ..cells import get  # the cell definitions (plain Python: no Triton)

    gates = get(name).gates
    tabled = [k for k in dict.fromkeys(k for (k, _, _) in RESIDENT) if get(k).gates >= gates]
    return min(tabled, key=lambda k: get(k).gates) if tabled else None


def resident_fit(kind, dtype, hidden: int) -> ResidentFit | None:
    """The resident-tier entry for ``(kind, dtype, hidden)`` (:func:`resident_entries`), or
    None when there is none."""
    return resident_entries(kind).get((dtype_name(dtype), resident_block_h(hidden)))


def resident_regularised(kind, dtype, hidden: int, arch: int | None = None) -> bool:
    """Whether the resident tier runs ``(kind, dtype, hidden)`` with zoneout or a
    recurrent-dropout scale: it has an entry, not one of :data:`RESIDENT_UNREGULARISED`
    (a cell the table does not name: those of the cell it borrows from) nor, on ``arch``
    (None: any of sm_80 / sm_90), of :data:`RESIDENT_ARCH_MISSES`."""
    key = (tabled_name(kind), dtype_name(dtype), resident_block_h(hidden))
    return (key in RESIDENT and key not in RESIDENT_UNREGULARISED
            and not resident_arch_miss(key[0], dtype, key[2], arch, regularised=True))


def shared_on(record: dict, arch: int | None) -> int:
    """Shared memory per block a record (``{compute capability: bytes}``) gives for ``arch``
    (major*10+minor); for an arch it was not compiled for, its largest value."""
    return record.get(arch, max(record.values()))


def shared_needed(fit: ResidentFit, arch: int | None) -> int:
    """Shared memory per block ``fit`` needs on ``arch`` (:func:`shared_on` of its record)."""
    return shared_on(fit.shared, arch)


def resident_refusal(kind: str, hidden: int, proj_size: int, dtype, arch: int | None, shared_limit: int) -> str | None:
    """Why the resident tier cannot run this layer on a device (None when it can)."""
    if proj_size:
        return "layers with proj_size run on the step tier"
    fit = resident_fit(kind, dtype, hidden)
    if fit is None:
        return (f"no resident configuration for {kind} {dtype_name(dtype)} with hidden size {hidden} "
                f"(its W_hh does not fit one SM without spilling)")
    need = shared_needed(fit, arch)
    if need > shared_limit:
        return f"it needs {need} bytes of shared memory per block, the device allows {shared_limit}"
    if resident_arch_miss(kind, dtype, fit.forward.block_h, arch):
        return f"its kernels do not compile clean for sm_{arch} (fits.RESIDENT_ARCH_MISSES)"
    return None


def dot_precision(dtype, tf32: bool) -> str:
    """``"tf32"`` for fp32 when TF32 is allowed (cuDNN's rule for nn.LSTM), else ``"ieee"``."""
    return "tf32" if (dtype_name(dtype) == "float32" and tf32) else "ieee"


def cooperative_shared(key: tuple[str, str, int], arch: int | None) -> int:
    """Shared memory per block the :data:`COOPERATIVE` entry ``key`` (with its register
    variants) needs on compute capability ``arch``: :data:`COOPERATIVE_SHARED` for that arch,
    the largest recorded value for another arch, 0 for an entry never compiled (fp64)."""
    recorded = COOPERATIVE_SHARED.get(key)
    return 0 if recorded is None else shared_on(recorded, arch)


#: Cooperative configurations ``(dtype name, dot precision, slab_k, rows)`` that compile clean
#: for sm_80 and sm_90 but spill on another arch, per compute capability: ``rows`` 0 is the
#: tiled entry (with it, its register variants), else the register variant of that many rows.
COOPERATIVE_ARCH_MISSES: dict[int, frozenset[tuple[str, str, int, int]]] = {100: frozenset({
    # sm_100: the fp16/bf16 tiled forwards of the 512 / 1024 slabs spill 8-728 B, the TF32
    # one of the 256 slab 8-112 B (those sizes stream W_hh there); the fp32 IEEE backward
    # of 64 register rows 8 B (64-row batches run the tiled configuration).
    *((name, "ieee", slab, 0) for name in ("float16", "bfloat16") for slab in (512, 1024)),
    ("float32", "tf32", 256, 0), ("float32", "ieee", 0, 64)})}


def cooperative_arch_miss(key: tuple[str, str, int], rows: int, arch: int | None) -> bool:
    """Whether :data:`COOPERATIVE_ARCH_MISSES` rules out the entry ``key``'s configuration of
    ``rows`` rows per program (0: the tiled one) on ``arch``."""
    misses = COOPERATIVE_ARCH_MISSES.get(arch, frozenset())
    return (*key, 0) in misses or (*key, rows) in misses


def _limit(arch: int | None, shared_limit: int | None) -> int:
    """The device's shared memory per block: ``shared_limit`` when given, else the table's
    for ``arch`` (an arch the table does not list: the smallest it lists)."""
    if shared_limit is not None:
        return shared_limit
    return SHARED_LIMIT.get(arch, min(SHARED_LIMIT.values()))


def cooperative_config(dtype, hidden: int, tf32: bool, arch: int | None = REFERENCE_ARCH,
                       shared_limit: int | None = None) -> CoopConfig | None:
    """The cooperative configuration for ``hidden`` units on a device of compute capability
    ``arch`` with ``shared_limit`` bytes of shared memory per block (None: the arch's, from
    :data:`SHARED_LIMIT`): the on-chip slab where the table has one for the next power of
    two >= ``hidden`` and it fits the device (:func:`cooperative_shared`), else the streaming
    one (None: no configuration for this dtype fits)."""
    name, precision = dtype_name(dtype), dot_precision(dtype, tf32)
    limit = _limit(arch, shared_limit)
    for key in ((name, precision, 1 << max(0, hidden - 1).bit_length()), (name, precision, 0)):
        if key in COOPERATIVE and cooperative_shared(key, arch) <= limit and not cooperative_arch_miss(key, 0, arch):
            return COOPERATIVE[key]
    return None


def cooperative_configs(dtype, hidden: int, tf32: bool, arch: int | None = REFERENCE_ARCH,
                        shared_limit: int | None = None) -> tuple[CoopConfig, ...]:
    """Every configuration a cooperative launch of ``hidden`` units may use on the device
    (``arch``, ``shared_limit`` as in :func:`cooperative_config`): the tiled one
    (:func:`cooperative_config`) first, then its register variants by increasing rows per
    program (empty: no configuration for this dtype)."""
    tiled = cooperative_config(dtype, hidden, tf32, arch, shared_limit)
    if tiled is None:
        return ()
    key = (dtype_name(dtype), dot_precision(dtype, tf32), tiled.slab_k)
    registers = [cfg for (name, precision, slab, rows), cfg in COOPERATIVE_REGISTERS.items()
                 if (name, precision, slab) == key and not cooperative_arch_miss(key, rows, arch)]
    return (tiled, *sorted(registers, key=lambda cfg: cfg.block_b))


def cooperative_groups(batch: int, cfg: CoopConfig) -> int:
    """Groups of batch rows a register variant needs: ``cdiv(batch, block_b)`` (at least 1)."""
    return max(1, -(-batch // cfg.block_b))


def cooperative_variant(configs, hidden: int, batch: int, sm_count: int) -> CoopConfig:
    """The configuration of :func:`cooperative_configs` a launch of ``batch`` rows uses.

    The register variant with the fewest rows per program whose grid, ``cdiv(hidden,
    block_h)`` slices x ``cdiv(batch, block_b)`` groups, fits ``sm_count`` programs (one
    per SM): every program then owns one tile of rows for the whole launch and keeps its
    state in registers. Else (more rows per program than the largest register tile) the
    tiled configuration, whose programs loop over 16-row tiles with the state in global
    buffers. Decided by ``batch``, never by the sequence length.
    """
    tiled, *registers = configs
    for cfg in registers:
        if -(-hidden // cfg.block_h) * cooperative_groups(batch, cfg) <= sm_count:
            return cfg
    return tiled


def cooperative_max_register_batch(dtype, hidden: int, sm_count: int, tf32: bool = False,
                                   arch: int | None = REFERENCE_ARCH) -> int:
    """Largest batch whose cooperative launches keep the state in registers (0: none)."""
    configs = cooperative_configs(dtype, hidden, tf32, arch)[1:]
    return max((cfg.block_b * (sm_count // -(-hidden // cfg.block_h)) for cfg in configs), default=0)


def cooperative_max_hidden(sm_count: int) -> int:
    """Largest hidden size of the cooperative tier on ``sm_count`` SMs (one program per SM)."""
    return COOP_BLOCK_H * sm_count


def cooperative_refusal(kind: str, hidden: int, proj_size: int, dtype, sm_count: int, on_gpu: bool,
                        arch: int | None = REFERENCE_ARCH, shared_limit: int | None = None) -> str | None:
    """Why the cooperative tier cannot run this layer (None when it can). ``on_gpu``: the
    launch is compiled for a GPU (Triton's interpreter compiles nothing: any H, fp64);
    ``arch`` and ``shared_limit``: the device's (:func:`cooperative_config`)."""
    if proj_size:
        return "layers with proj_size run on the step tier"
    if cooperative_config(dtype, hidden, False, arch, shared_limit) is None:
        return (f"no cooperative configuration for {dtype_name(dtype)} fits "
                f"{_limit(arch, shared_limit)} bytes of shared memory per block")
    if on_gpu and dtype_name(dtype) == "float64":
        return "float64 is not compiled for GPUs by this tier (the step tier runs it)"
    if on_gpu and hidden % COOP_H_MULTIPLE:
        return f"hidden_size must be a multiple of {COOP_H_MULTIPLE} (the compiled kernels assume it)"
    if -(-hidden // COOP_BLOCK_H) > sm_count:
        return (f"hidden_size {hidden} needs {-(-hidden // COOP_BLOCK_H)} programs, more than the "
                f"{sm_count} SMs (at most {cooperative_max_hidden(sm_count)})")
    return None

# --- Resident tier: the LayerNorm-LSTM / -GRU ---------------------------------------------

#: (cell family, dtype name, BLOCK_H) -> ResidentFit of the LayerNorm cells' resident kernels
#: (:mod:`fastrnn.kernels.resident_norm`): what compiles with no spill for sm_80 and sm_90
#: (fp32: IEEE and TF32; plain and ``H_ALIGNED`` forwards), shared memory as compiled (the
#: larger of the variants). ``BLOCK_H`` as the resident tier's (:func:`resident_block_h`).
RESIDENT_NORM: dict[tuple[str, str, int], ResidentFit] = {
    ('LayerNormLSTM', 'float32', 32): _fit(32, 4, 8, 68608, 69632),
    # LayerNormLSTM float32 64: no clean configuration (forward: 40 B of spill at best, 8 warps sm_90)
    ('LayerNormLSTM', 'float16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LayerNormLSTM', 'float16', 64): _fit(64, 8, 8, 53248, 54272),
    # LayerNormLSTM float16/bfloat16 128: no clean configuration (forward: 120 B at best)
    ('LayerNormLSTM', 'bfloat16', 32): _fit(32, 4, 4, 18432, 19456),
    ('LayerNormLSTM', 'bfloat16', 64): _fit(64, 8, 8, 53248, 54272),
    # LayerNormLSTM float64 32: no clean configuration (backward: 16 B at best; RESIDENT_NORM_INTERPRETED)
    ('LayerNormGRU', 'float32', 32): _fit(32, 4, 8, 51712, 52736),
    # LayerNormGRU float32 64: no clean configuration (forward: 40 B at best, 8 warps sm_90)
    ('LayerNormGRU', 'float16', 32): _fit(32, 4, 4, 8192, 9216),
    ('LayerNormGRU', 'float16', 64): _fit(64, 4, 8, 28672, 29696),
    # LayerNormGRU float16/bfloat16 128: no clean configuration (forward: 16 B at best, 8 warps sm_80)
    ('LayerNormGRU', 'bfloat16', 32): _fit(32, 4, 4, 8192, 9216),
    ('LayerNormGRU', 'bfloat16', 64): _fit(64, 4, 8, 28672, 29696),
    ('LayerNormGRU', 'float64', 32): _fit(32, 4, 8, 102912, 103936),
}

#: Entries of :data:`RESIDENT_NORM` whose ``REGULARISED`` kernels do not compile clean: a
#: call with zoneout or recurrent dropout there runs on the step tier's LayerNorm path.
RESIDENT_NORM_UNREGULARISED: frozenset[tuple[str, str, int]] = frozenset({
    ('LayerNormGRU', 'float64', 32),  # the regularised backward: 16 B of spill (sm_80)
})

#: ``(family, dtype name, BLOCK_H, direction)`` of the :data:`RESIDENT_NORM` kernels compiled
#: with ``maxnreg=255`` (the others with ptxas' own register limit): whichever compiled clean.
RESIDENT_NORM_MAXNREG: frozenset[tuple[str, str, int, str]] = frozenset({
    ('LayerNormLSTM', 'float32', 32, 'forward'), ('LayerNormLSTM', 'float16', 32, 'forward'),
    ('LayerNormLSTM', 'bfloat16', 32, 'forward'), ('LayerNormGRU', 'float32', 32, 'backward'),
    ('LayerNormGRU', 'float64', 32, 'forward'),
})


#: Entries for Triton's interpreter only (tests on CPU tensors): sizes and dtypes without a
#: clean compile, never compiled, never chosen on a GPU (as the cooperative tier's fp64).
RESIDENT_NORM_INTERPRETED: dict[tuple[str, str, int], ResidentFit] = {
    ('LayerNormLSTM', 'float64', 32): _fit(32, 4, 4, 0, 0),
}


def resident_norm_fit(family: str, dtype, hidden: int, on_gpu: bool = True) -> ResidentFit | None:
    """The :data:`RESIDENT_NORM` entry of ``family`` ("LayerNormLSTM" / "LayerNormGRU") for
    ``dtype`` and ``hidden`` (``on_gpu`` False: :data:`RESIDENT_NORM_INTERPRETED`'s too), None
    when there is none."""
    key = (family, dtype_name(dtype), resident_block_h(hidden))
    return RESIDENT_NORM.get(key) or (None if on_gpu else RESIDENT_NORM_INTERPRETED.get(key))


def resident_norm_regularised(family: str, dtype, hidden: int, on_gpu: bool = True,
                              arch: int | None = None) -> bool:
    """Whether the entry of ``(family, dtype, hidden)`` runs calls with regularisers (on
    ``arch``: :data:`RESIDENT_ARCH_MISSES`)."""
    key = (family, dtype_name(dtype), resident_block_h(hidden))
    if key in RESIDENT_NORM:
        return key not in RESIDENT_NORM_UNREGULARISED and not resident_arch_miss(family, dtype, key[2], arch, True)
    return not on_gpu and key in RESIDENT_NORM_INTERPRETED


def resident_norm_refusal(family: str, hidden: int, dtype, arch: int | None, shared_limit: int,
                          on_gpu: bool = True) -> str | None:
    """Why the resident tier cannot run a LayerNorm layer on a device (None when it can)."""
    fit = resident_norm_fit(family, dtype, hidden, on_gpu)
    if fit is None:
        return (f"no resident configuration for {family} {dtype_name(dtype)} with hidden size {hidden} "
                f"(fits.RESIDENT_NORM)")
    need = shared_needed(fit, arch)
    if need > shared_limit:
        return f"it needs {need} bytes of shared memory per block, the device allows {shared_limit}"
    if resident_arch_miss(family, dtype, fit.forward.block_h, arch):
        return f"its kernels do not compile clean for sm_{arch} (fits.RESIDENT_ARCH_MISSES)"
    return None
