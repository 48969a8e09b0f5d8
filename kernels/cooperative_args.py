"""Launch arguments of the cooperative kernels (:mod:`fastrnn.kernels.cooperative`), shared
by the launcher and the compile report so the two cannot drift: the compile-time arguments
of a configuration (:func:`constexprs`), the pointer and integer arguments in signature
order with the role of each pointer, the launch options, the configurations of a dtype
(:func:`configs_for`) and the record of one compiled variant (:class:`Specialisation`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton.language as tl

from ..cells import Cell
from ..cells import get as get_cell
from . import fits
from .fits import CoopConfig
from .precision import mma_dots

def _precision(dtype: torch.dtype, tf32: bool) -> str:
    return fits.dot_precision(dtype, tf32)  # TF32 only for fp32 when allowed (cuDNN's rule)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def cell_of(cell) -> Cell:
    """The :class:`~fastrnn.cells.Cell` of ``cell``: a definition, or its name."""
    return cell if isinstance(cell, Cell) else get_cell(cell)


def constexprs(cell, dtype: torch.dtype, tf32: bool, cfg: CoopConfig, forward: bool = True) -> dict:
    """Compile-time arguments of a cooperative kernel (``forward`` or backward): the cell's
    (:meth:`fastrnn.cells.Cell.kernel_constexprs`; ``PARAMS`` 0 for a cell without per-unit
    parameters, the kernels' default, named so the report compiles what a launch binds),
    then the dtype, precision and blocks (the backward's slab:
    :attr:`~fastrnn.kernels.fits.CoopConfig.backward_slab_k`)."""
    return dict(
        {"PARAMS": 0, **cell_of(cell).kernel_constexprs()}, ACC=_acc(dtype), PRECISION=_precision(dtype, tf32),
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        SLAB_K=cfg.slab_k if forward else cfg.backward_slab_k,
    )


def kernel_config(cfg: CoopConfig, cell, dtype: torch.dtype, tf32: bool, forward: bool = True) -> CoopConfig:
    """``cfg`` with the warps its forward or backward kernel runs: one where every dot of
    that kernel is a single ``16 x 16`` MMA tile (16 batch rows, and ``W_hh`` streamed gate
    by gate, or one gate's slab in the backward), since Triton lays more warps over such a
    tile and each computes it whole (``warpsPerCTA = [4, 1]``: 4 times the MMA and cell
    work). fp32 IEEE dots are FMA loops over all threads and keep the entry's warps, as do
    stacked dots of several gates (``M = 64``: every warp its own rows) and a 1-gate slab's
    forward, split over ``k`` into one part per warp (:func:`~fastrnn.kernels.
    cooperative_tiles.split_k`; with one warp its ``[SLAB_K, 16]`` operand spills)."""
    slab = cfg.slab_k if forward else cfg.backward_slab_k
    gates = cell_of(cell).gates
    one_tile = mma_dots(dtype, tf32) and cfg.block_b == 16 and (not slab or (gates == 1 and not forward))
    return cfg._replace(num_warps=1) if one_tile else cfg


#: The regularisers' pointers, last in both kernels: the recurrent-dropout scale, the zoneout
#: masks of h and c, the cell's own new c and h (kept with zoneout).
ZONEOUT_POINTERS = (
    ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"), ("cell_c_ptr", "acc"), ("cell_h_ptr", "io"),
)
#: The fp32 runtime scalars (the zoneout eval probabilities); every other one is int32.
FLOATS = ("p_h", "p_c")
# Pointer arguments in order, with what each holds: "io" (the layer's dtype), "acc" (fp32;
# fp64 for fp64 I/O), "i32" or "u8" (reset flags, zoneout masks); then the runtime scalars.
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h0_ptr", "io"), ("c0_ptr", "acc"),
    ("y_ptr", "io"), ("c_ptr", "acc"), ("gates_ptr", "io"), ("hn_ptr", "io"), ("sizes_ptr", "i32"),
    ("offsets_ptr", "i32"), ("sync_ptr", "i32"), ("resets_ptr", "u8"), ("p_ptr", "io"),
) + ZONEOUT_POINTERS
FORWARD_INTS = ("T", "B", "H", "reverse", "packed", "save", "has_resets", "timeout_us", "absent",
                "has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c")
BACKWARD_POINTERS = (
    ("w_hh_ptr", "io"), ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dy_ptr", "io"), ("dh_ptr", "acc"),
    ("dc_ptr", "acc"), ("gates_ptr", "io"), ("c_ptr", "acc"), ("c0_ptr", "acc"), ("hn_ptr", "io"),
    ("y_ptr", "io"), ("h0_ptr", "io"), ("sizes_ptr", "i32"), ("offsets_ptr", "i32"), ("sync_ptr", "i32"),
    ("resets_ptr", "u8"), ("p_ptr", "io"),
) + ZONEOUT_POINTERS
BACKWARD_INTS = ("T", "B", "H", "reverse", "packed", "has_resets", "timeout_us", "absent",
                 "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c")
#: Options every cooperative launch (and every compile of the report) uses.
LAUNCH_OPTIONS = dict(launch_cooperative_grid=True, maxnreg=255)


class Specialisation(NamedTuple):
    """One compiled variant the launcher can choose: what the compile report compiles."""

    kernel: object
    kernel_name: str
    kind: str  # the cell's name
    dtype: torch.dtype
    label: str
    config: CoopConfig
    constexprs: dict
    pointers: tuple  # ((name, "io" | "acc" | "i32" | "u8"), ...)
    ints: tuple  # names of the runtime scalar arguments, in order (int32 but for ``floats``)
    options: dict  # compile options besides num_warps (num_stages, cooperative launch, maxnreg)
    divisible_by_16: tuple  # ints the launches specialise as multiples of 16
    floats: tuple = FLOATS  # the fp32 ones among ``ints``


def configs_for(dtype: torch.dtype, tf32: bool) -> list[CoopConfig]:
    """Every configuration of :data:`fastrnn.kernels.fits.COOPERATIVE` and
    :data:`~fastrnn.kernels.fits.COOPERATIVE_REGISTERS` for ``dtype`` / ``tf32``."""
    key = (fits.dtype_name(dtype), _precision(dtype, tf32))
    tiled = [cfg for (name, precision, _), cfg in sorted(fits.COOPERATIVE.items()) if (name, precision) == key]
    registers = [cfg for (name, precision, *_), cfg in sorted(fits.COOPERATIVE_REGISTERS.items())
                 if (name, precision) == key]
    return tiled + registers



def kernel_names(cfg: CoopConfig) -> tuple[str, str]:
    """The report's names of :func:`kernels_for`."""
    prefix = "coop-reg" if cfg.registers else "coop"
    return f"{prefix}-forward", f"{prefix}-backward"

