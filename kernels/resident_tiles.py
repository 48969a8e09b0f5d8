"""Device helpers of the resident kernels (:mod:`fastrnn.kernels.resident`): the schedule of
a step, ``W_hh`` as on-chip tiles, the gate stores, and the optional inputs a call may bring
(a cell's per-unit parameters, reset flags, the regularisers' masks and flags); and the
plain-Python parts of a launch's compile-time choices (the cell, precision, ``H_ALIGNED``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cells import Cell, defined
from ..cells import get as cell_named
from .fits import dtype_name, shared_on, tabled_name
from .precision import tf32_round


@triton.jit
def step_rows(t, sizes_ptr, offsets_ptr, uniform_b):
    """``(first row, active rows)`` of timestep ``t``: computed for a padded batch
    (``uniform_b > 0``), read from the schedule's device tensors for a packed one."""
    if uniform_b > 0:
        off = t.to(tl.int64) * uniform_b
        bs = uniform_b
    else:
        off = tl.load(offsets_ptr + t).to(tl.int64)
        bs = tl.load(sizes_ptr + t)
    return off, bs


@triton.jit
def aligned(H, H_ALIGNED: tl.constexpr):
    """``H``, known to the compiler as a multiple of 8 when ``H_ALIGNED`` (the launcher's
    promise): ``(H // 8) * 8`` is ``H`` then, and its divisibility makes every row of 16-bit
    elements a 16-byte vector load (``H`` is not specialised, so nothing else tells it)."""
    if H_ALIGNED:
        return (H // 8) * 8
    else:
        return H


@triton.jit
def dot_operand(x, PRECISION: tl.constexpr):
    """``x`` as a ``tl.dot`` operand: rounded to TF32 (nearest, as cuDNN) for a TF32 dot,
    which would otherwise truncate the fp32 bits; unchanged otherwise."""
    if PRECISION == "tf32":
        return tf32_round(x)
    else:
        return x


@triton.jit
def timestep(j, T, reverse):
    """Timestep processed ``j``-th: ``j`` forward, ``T - 1 - j`` for the reverse direction."""
    return j + reverse * (T - 1 - 2 * j)


@triton.jit
def _load_weight(w_ptr, units, ks, H, TRANSPOSED: tl.constexpr):
    """One gate block of ``W_hh`` (``H x H`` from ``w_ptr``) as a ``BLOCK_H x BLOCK_H`` tile.

    ``TRANSPOSED``: tile ``[k, j] = W[j, k]`` (the forward GEMM ``h @ W^T``); else
    ``[j, k] = W[j, k]`` (the backward GEMM ``dgates @ W``). Padding is zero.
    """
    if TRANSPOSED:
        offs = units[None, :] * H + ks[:, None]
        mask = (ks < H)[:, None] & (units < H)[None, :]
    else:
        offs = units[:, None] * H + ks[None, :]
        mask = (units < H)[:, None] & (ks < H)[None, :]
    return tl.load(w_ptr + offs, mask=mask, other=0.0)


@triton.jit
def load_weights(w_hh_ptr, cols, H, GATES: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``W_hh`` once: the ``GATES`` gate blocks as tiles of :func:`_load_weight` (slots
    ``>= GATES`` get the first tile again, never read)."""
    w0 = _load_weight(w_hh_ptr, cols, cols, H, TRANSPOSED)
    w1 = w0
    w2 = w0
    w3 = w0
    if GATES > 1:
        w1 = _load_weight(w_hh_ptr + H * H, cols, cols, H, TRANSPOSED)
    if GATES > 2:
        w2 = _load_weight(w_hh_ptr + 2 * H * H, cols, cols, H, TRANSPOSED)
    if GATES > 3:
        w3 = _load_weight(w_hh_ptr + 3 * H * H, cols, cols, H, TRANSPOSED)
    return w0, w1, w2, w3


@triton.jit
def store_gates(ptrs, v0, v1, v2, v3, H, mask, GATES: tl.constexpr):
    """Slots ``0 .. GATES-1`` into a ``(rows, GATES*H)`` buffer (slot ``k`` at ``ptrs + k*H``),
    converted to the buffer's dtype."""
    ty = ptrs.dtype.element_ty
    tl.store(ptrs, v0.to(ty), mask=mask)
    if GATES > 1:
        tl.store(ptrs + H, v1.to(ty), mask=mask)
    if GATES > 2:
        tl.store(ptrs + 2 * H, v2.to(ty), mask=mask)
    if GATES > 3:
        tl.store(ptrs + 3 * H, v3.to(ty), mask=mask)


@triton.jit
def load_params(p_ptr, cols, col_mask, H, PARAMS: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows ``0 .. PARAMS-1`` of the cell's ``(PARAMS, H)`` per-unit parameters for the hidden
    units ``cols``, as three ``(1, BLOCK_H)`` rows in ``ACC`` (zeros for rows the cell has not),
    broadcast over the batch rows by the cell's functions."""
    p0 = tl.zeros((1, BLOCK_H), dtype=ACC)
    p1 = p0
    p2 = p0
    if PARAMS > 0:
        p0 = tl.load(p_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if PARAMS > 1:
        p1 = tl.load(p_ptr + H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if PARAMS > 2:
        p2 = tl.load(p_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    return p0, p1, p2


@triton.jit
def reset_rows(resets_ptr, off, rows, bs):
    """``(BLOCK_B,)``: which of the step's rows (first flat row ``off``, ``bs`` active)
    start from a zero state (the call's uint8 reset flags; False for inactive rows)."""
    flags = tl.load(resets_ptr + off + rows, mask=rows < bs, other=0)
    return flags != 0


@triton.jit
def flag_rows(rows, flag):
    """``(BLOCK_B,)``: the runtime scalar ``flag`` as a row mask (folded into load and store
    masks, so a call without the flag loads and stores nothing and branches nowhere)."""
    return (rows * 0 + flag) != 0


@triton.jit
def zone_kept(mask_ptr, mode, offs, mask, rows):
    """Where a zoneout mask (``(N, H)`` uint8 at ``mask_ptr + offs``) keeps the previous
    state: read only in mode 1 (training); False everywhere in the other modes."""
    on = flag_rows(rows, mode == 1)[:, None]
    return tl.load(mask_ptr + offs, mask=mask & on, other=0) != 0


@triton.jit
def zone_blend(prev, new, mask_ptr, mode, p, offs, mask, rows):
    """Zoneout of a step's new state ``new``: mode 1 keeps ``prev`` where the mask is set,
    mode 2 (eval) gives ``new + p * (prev - new)``, mode 0 gives ``new`` itself."""
    kept = zone_kept(mask_ptr, mode, offs, mask, rows)
    return tl.where(mode == 2, new + p * (prev - new), tl.where(kept, prev, new))


@triton.jit
def zone_weight(mask_ptr, mode, p, offs, mask, rows):
    """The share of a zoned-out state's gradient that goes to the previous state: 1 where
    the mask keeps it (mode 1), ``p`` in mode 2, 0 otherwise (mode 0: no zoneout)."""
    kept = zone_kept(mask_ptr, mode, offs, mask, rows)
    return tl.where(kept, 1.0, (mode == 2).to(tl.float32) * p)


# --------------------------------------------------------------------------------------
# Launch choices
# --------------------------------------------------------------------------------------


def acc_type(dtype: torch.dtype):
    """The kernels' ``ACC``: fp64 for fp64 I/O, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def cell_of(kind) -> Cell:
    """The cell definition ``kind`` names (a :class:`~fastrnn.cells.Cell` passes as it is)."""
    return kind if isinstance(kind, Cell) else cell_named(kind)


def triton_cells() -> tuple[Cell, ...]:
    """Every defined cell with Triton functions (built-in ones first): the cells this tier compiles."""
    return tuple(cell for cell in defined() if cell.runs_on_triton)


def h_aligned(direction: str, hidden: int, aligned_backward: bool = False) -> bool:
    """Whether a launch of ``direction`` for hidden size ``hidden`` runs the ``H_ALIGNED``
    specialisation (rows of 8 elements, 16 bytes in fp16/bf16, load as vectors; the LSTM bf16
    ``BLOCK_H`` 64 forward drops from 176 scalar 16-bit loads and 254 registers to none and
    128 on sm_80): a forward with ``H % 8 == 0``; a backward too where ``aligned_backward``
    (:func:`aligned_backward`) says its entry's aligned kernel runs on the device."""
    return hidden % 8 == 0 and (direction == "forward" or aligned_backward)


#: The resident backward kernels compiled for 16-byte rows (``H_ALIGNED``), by entry
#: ``(cell or LayerNorm family, dtype name, BLOCK_H) -> {arch: shared memory per block}``
#: (the larger of the plain and ``REGULARISED`` kernels; an arch not listed: the largest
#: value, :func:`fits.shared_on`). With the hidden size known to be a multiple of 8
#: every 16-bit row loads as a vector, where the plain kernel loads them 2 bytes at a time;
#: the compiler stages those loads through shared memory, so they need 1.4-3.3x the plain
#: kernel's. The tier choice reads the plain kernels' record (:data:`fits.RESIDENT`); a
#: launch runs the aligned kernel where the device's shared memory also holds this one, the
#: plain one elsewhere. Every entry compiles with no spill for sm_80 / sm_86 / sm_89 / sm_90
#: / sm_100 but those of :data:`ALIGNED_BACKWARD_MISSES`.
ALIGNED_BACKWARD: dict[tuple[str, str, int], dict] = {
    (name, dtype, block_h): {80: sm80, 90: sm90}
    for dtype in ("float16", "bfloat16")
    for (name, block_h), (sm80, sm90) in {
        ("LSTM", 32): (30720, 31744), ("LSTM", 64): (75776, 76800),
        ("LSTM_PEEPHOLE", 32): (30720, 31744), ("LSTM_PEEPHOLE", 64): (75776, 76800),
        ("GRU", 32): (22528, 23552), ("GRU", 64): (57344, 58368), ("GRU", 128): (159744, 160768),
        ("RNN_TANH", 32): (8192, 9216), ("RNN_TANH", 64): (20480, 21504), ("RNN_TANH", 128): (53248, 54272),
        ("RNN_RELU", 32): (8192, 9216), ("RNN_RELU", 64): (18432, 19456), ("RNN_RELU", 128): (53248, 54272),
        ("LayerNormLSTM", 32): (39424, 40448), ("LayerNormLSTM", 64): (95232, 96256),
        ("LayerNormGRU", 32): (26752, 27776), ("LayerNormGRU", 64): (65792, 66816),
    }.items()
}

#: ``(cell name, dtype name, BLOCK_H, REGULARISED) -> archs`` where that aligned backward
#: spills (the regularised bf16 LSTM 32: 8 B on sm_80 / sm_86 / sm_89, at 4 warps, the most
#: its ``16 x 32`` dots give distinct tiles); the plain backward runs there.
ALIGNED_BACKWARD_MISSES = {("LSTM", "bfloat16", 32, True): (80, 86, 89)}

#: Warps of aligned backward kernels where they differ from their entry's: the LSTM 64 one
#: spills 8 B on sm_80 at the entry's 4 warps and compiles clean everywhere at 8.
ALIGNED_BACKWARD_WARPS = {("LSTM", dtype, 64): 8 for dtype in ("float16", "bfloat16")}


def _aligned_key(name: str, dtype, block_h: int) -> tuple:
    return (tabled_name(name), dtype_name(dtype), block_h)


def aligned_backward(name: str, dtype, block_h: int, regularised: bool, arch: int, shared_limit: int) -> bool:
    """Whether the backward of the entry ``(name, dtype, block_h)`` (a cell the tables do not
    name: the cell it borrows from) runs its ``H_ALIGNED`` kernel for ``H % 8 == 0`` on a
    device of compute capability ``arch`` with ``shared_limit`` bytes per block: the entry is
    one of :data:`ALIGNED_BACKWARD`, not of :data:`ALIGNED_BACKWARD_MISSES` there, and fits."""
    key = _aligned_key(name, dtype, block_h)
    shared = ALIGNED_BACKWARD.get(key)
    if shared is None or arch in ALIGNED_BACKWARD_MISSES.get((*key, bool(regularised)), ()):
        return False
    return shared_on(shared, arch) <= shared_limit


def aligned_shared(name: str, dtype, block_h: int, direction: str, aligned: bool, fit) -> dict | None:
    """The shared-memory record (``{arch: bytes}``) of an entry's ``direction`` kernel,
    ``H_ALIGNED`` or not (``fit``: the entry's :class:`~fastrnn.kernels.fits.ResidentFit`): the
    entry's, or for an aligned backward its :data:`ALIGNED_BACKWARD` record; None where no
    launch runs that kernel (an aligned backward the table has not)."""
    if direction == "forward" or not aligned:
        return dict(fit.shared)
    shared = ALIGNED_BACKWARD.get(_aligned_key(name, dtype, block_h))
    return None if shared is None else dict(shared)


def launched_on(spec, arch: int) -> bool:
    """False for a resident specialisation the launch never picks on ``arch`` although its entry
    runs there and its shared memory fits (the compile report checks those itself): an aligned
    backward of :data:`ALIGNED_BACKWARD_MISSES`."""
    if not (spec.constexprs["H_ALIGNED"] and spec.kernel_name.endswith("backward")):
        return True
    return aligned_backward(spec.kind, spec.dtype, spec.config.block_h, spec.constexprs["REGULARISED"], arch,
                            shared_limit=float("inf"))


#: Warps of resident TF32 kernels where they differ from the fp32 entry's, which fp32 IEEE
#: shares: ``(cell name, BLOCK_H, direction, REGULARISED) -> warps``. Those entries' warps are
#: what the IEEE kernel (FMA dots over every thread) needs to compile clean; TF32's MMA dots
#: lay 16x8 tiles over warps, and the ``16 x BLOCK_H`` results have fewer tiles than the
#: entry has warps, so each would be computed twice. With these warps every warp owns its
#: tiles and the kernels compile without spills on every arch that launches them. Left with
#: repeated warps: :data:`REPEATED_WARPS`.
TF32_WARPS = {
    **{(name, 32, "forward", reg): 4 for name in ("RNN_TANH", "RNN_RELU") for reg in (False, True)},
    **{("GRU", 64, "forward", reg): 8 for reg in (False, True)},
    **{(name, 32, "backward", False): 4 for name in ("LayerNormLSTM", "LayerNormGRU")},
}


def kernel_config(cfg, cell_name: str, dtype: torch.dtype, tf32: bool, direction: str, regularised: bool,
                  aligned: bool = False):
    """``cfg`` (a :class:`~fastrnn.kernels.fits.KernelConfig` of the tables) with the warps its
    kernel runs: :data:`TF32_WARPS` for an fp32 TF32 one it lists, :data:`ALIGNED_BACKWARD_WARPS`
    for an ``aligned`` backward (a cell the tables do not name: as the cell whose entries it
    borrows), else its own."""
    key = (tabled_name(cell_name), cfg.block_h, direction, bool(regularised))
    warps = TF32_WARPS.get(key) if tf32 and dtype == torch.float32 else None
    if aligned and direction == "backward":
        warps = ALIGNED_BACKWARD_WARPS.get(_aligned_key(cell_name, dtype, cfg.block_h), warps)
    return cfg if warps is None else cfg._replace(num_warps=warps)


#: The resident kernels whose warps still repeat each other's dot tiles (the report's
#: ``distinct_warps`` accepts these rows and lists them as open): ``(cell name, dtype name,
#: TF32, BLOCK_H, direction, REGULARISED)``. Each spills or crashes the compiler with half
#: the warps: the fp64 LSTM and LayerNorm-GRU backwards at 32 with 4 warps keep 16-144 B of
#: stack on sm_90 / sm_100 (and LLVM aborts on the LSTM's for sm_86 / sm_89); the regularised
#: TF32 LayerNorm backwards at 32 keep 8-16 B on sm_90 / sm_100.
REPEATED_WARPS = frozenset({
    *(("LSTM", "float64", False, 32, "backward", reg) for reg in (False, True)),
    ("LayerNormGRU", "float64", False, 32, "backward", False),
    *((name, "float32", True, 32, "backward", True) for name in ("LayerNormLSTM", "LayerNormGRU")),
})


def repeats_accepted(spec) -> bool:
    """Whether ``spec`` (a resident or resident LayerNorm specialisation) is one of
    :data:`REPEATED_WARPS`."""
    name = getattr(spec.kind, "name", spec.kind)
    key = (name, dtype_name(spec.dtype), "-tf32" in spec.label, spec.config.block_h,
           spec.kernel_name.rsplit("-", 1)[1], bool(spec.constexprs.get("REGULARISED")))
    return key in REPEATED_WARPS
