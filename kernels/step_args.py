"""Launch choices of the step kernels (:mod:`fastrnn.kernels.recurrent_step`): the block
configuration picked from ``H``, the compile-time arguments of a launch, and the pointer /
integer arguments in order with the dtype each holds. Shared by the launchers and the
compile report, so the two cannot drift."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton.language as tl

from .fits import dtype_name
from .precision import ENABLE_FP_FUSION, mma_dots


class StepConfig(NamedTuple):
    """Block sizes and warps of a step kernel, picked from ``H`` (and for a few cells the arch:
    :func:`step_config`), never from B or T."""

    block_b: int
    block_h: int
    block_k: int
    num_warps: int

    @property
    def label(self) -> str:
        return f"B{self.block_b}-H{self.block_h}-K{self.block_k}-w{self.num_warps}"


# tl.dot needs every block dimension >= 16 when compiled. Small hidden sizes get 16-wide
# tiles (less masked work), everything else 32-wide tiles with 4 warps (warpsPerCTA
# [1, 4]: a 16x8 MMA tile each): a step kernel's grid is small (B/16 x H/32 programs), so
# wider tiles would leave SMs idle. The 16-wide forward's MMA dots (fp16, bf16, TF32)
# compile to warpsPerCTA [2, 1] with two warps, both on the same 16x16 tile, so it runs one
# warp (SMALL_MMA_FORWARD); its fp32 IEEE dots are FMA loops over every thread, and the
# IEEE GRU forward with SAVE spills with one warp (255 registers, 8-72 B): two warps there,
# and in the backward, whose dots compile to [1, 2].
SMALL_CONFIG = StepConfig(16, 16, 16, 2)
SMALL_MMA_FORWARD = StepConfig(16, 16, 16, 1)
DEFAULT_CONFIG = StepConfig(16, 32, 32, 4)
CONFIGS = (SMALL_CONFIG, SMALL_MMA_FORWARD, DEFAULT_CONFIG)


def configs(dtype: torch.dtype, tf32: bool, kernel: str) -> tuple:
    """The configurations :func:`step_config` can pick for a ``kernel`` ("forward" or
    "backward") of ``dtype`` / ``tf32``: the 16-wide one and the default."""
    mma_forward = kernel == "forward" and mma_dots(dtype, tf32)
    return (SMALL_MMA_FORWARD if mma_forward else SMALL_CONFIG), DEFAULT_CONFIG


#: Where :data:`DEFAULT_CONFIG` spills on an arch the tables are not made for, the
#: 16-wide configuration runs every ``H`` instead: ``(compute capability, cell name, dtype,
#: dot precision, H_ALIGNED, kernel)``. The peephole LSTM's aligned fp32 IEEE forward keeps
#: an 8-byte stack frame on sm_86 / sm_89 (101,376 B of shared memory per block) with it.
SMALL_ON_ARCH = frozenset((arch, "LSTM_PEEPHOLE", "float32", "ieee", True, "forward") for arch in (86, 89))


def step_config(hidden: int, cell=None, dtype: torch.dtype = torch.float32, tf32: bool = False,
                aligned: bool = False, arch: int | None = None, kernel: str = "forward") -> StepConfig:
    """The block configuration for hidden size ``hidden``: from ``H`` alone (every dtype) but
    where :data:`SMALL_ON_ARCH` names the case (``cell`` a Cell or its name, ``arch`` the
    device's compute capability as major*10+minor; None: the tables' own choice)."""
    if hidden <= 16 or small_on_arch(cell, dtype, tf32, aligned, arch, kernel):
        return configs(dtype, tf32, kernel)[0]
    return DEFAULT_CONFIG


def small_on_arch(cell, dtype: torch.dtype, tf32: bool, aligned: bool, arch: int | None, kernel: str) -> bool:
    """Whether :data:`SMALL_ON_ARCH` replaces :data:`DEFAULT_CONFIG` for this case on ``arch``."""
    if arch is None or cell is None:
        return False
    name = cell if isinstance(cell, str) else cell.name
    key = (arch, name, dtype_name(dtype), _precision(dtype, tf32), bool(aligned), kernel)
    return key in SMALL_ON_ARCH


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # TF32 only for fp32 and only when the user allowed it (cuDNN's rule for nn.LSTM).
    return "tf32" if (dtype == torch.float32 and tf32) else "ieee"


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _cell(cell):
    """The :class:`fastrnn.cells.Cell` for ``cell`` (a definition or its name)."""
    from fastrnn.cells import Cell, get

    return cell if isinstance(cell, Cell) else get(cell)


def saves_something(cell) -> bool:
    # what a saving forward keeps: gates, e, or every step's cell state (plain RNNs: nothing,
    # their backward reads y)
    return cell.saves_gates or cell.saves_extra or cell.has_cell_state


def has_projection(cell) -> bool:
    # proj_size (the host computes dm = dh @ W_hr and the kernel reads it) exists for LSTM only
    return cell.has_cell_state and cell.name == "LSTM"


def sizes_aligned(*sizes: int) -> bool:
    """Whether a launch runs the ``H_ALIGNED`` specialisation: every one of ``sizes`` (``H``
    and ``P``) a multiple of 8, so rows of 16-bit elements are 16-byte vector loads."""
    return all(n % 8 == 0 for n in sizes)


def _cell_constexprs(cell) -> dict:
    # PARAMS always present (0: none), so the report's compile names every argument
    return {"PARAMS": 0, **cell.kernel_constexprs()}


#: Compile options of every step launch (and of the report's compiles).
OPTIONS = dict(enable_fp_fusion=ENABLE_FP_FUSION)


def forward_constexprs(cell, save: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig,
                       aligned: bool = False) -> dict:
    """Compile-time arguments of the forward kernel for ``cell`` (a Cell or its name);
    SAVE only for a cell that keeps something."""
    cell = _cell(cell)
    return dict(
        **_cell_constexprs(cell), SAVE=bool(save) and saves_something(cell), ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        H_ALIGNED=bool(aligned),
    )


def backward_constexprs(cell, dm_given: bool, dtype: torch.dtype, tf32: bool, cfg: StepConfig,
                        aligned: bool = False) -> dict:
    """Compile-time arguments of the backward kernel for ``cell`` (DM_GIVEN only for LSTM)."""
    cell = _cell(cell)
    return dict(
        **_cell_constexprs(cell), DM_GIVEN=bool(dm_given) and has_projection(cell), ACC=_acc(dtype),
        PRECISION=_precision(dtype, tf32), BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        H_ALIGNED=bool(aligned),
    )


# Pointer arguments in order, with the dtype each holds: "io" (the layer's dtype), "acc"
# (fp32; fp64 for fp64 I/O) or "u8" (reset flags, zoneout masks). The launchers pass tensors
# of exactly these dtypes.
ZONE_POINTERS = (
    ("scale_ptr", "io"), ("mask_h_ptr", "u8"), ("mask_c_ptr", "u8"), ("cell_c_ptr", "acc"), ("cell_h_ptr", "io"),
)
FORWARD_POINTERS = (
    ("xg_ptr", "io"), ("w_hh_ptr", "io"), ("b_hh_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"),
    ("out_ptr", "io"), ("c_prev_ptr", "acc"), ("c_init_ptr", "io"), ("c_out_ptr", "acc"),
    ("gates_ptr", "io"), ("extra_ptr", "io"), ("p_ptr", "io"), ("rst_ptr", "u8"),
) + ZONE_POINTERS
FORWARD_INTS = ("off", "bs", "prev_off", "n_prev", "out_off", "c_prev_off", "c_out_off", "H", "P", "has_resets",
                "has_scale", "zoneout_h", "zoneout_c", "save_zoned", "p_h", "p_c")
BACKWARD_POINTERS = (
    ("dr_ptr", "io"), ("w_hh_ptr", "io"), ("dxg_ptr", "io"), ("dhg_ptr", "io"), ("dy_ptr", "io"),
    ("dh_ptr", "acc"), ("dc_ptr", "acc"), ("dm_ptr", "acc"), ("gates_ptr", "io"), ("c_seq_ptr", "acc"),
    ("c0_ptr", "io"), ("extra_ptr", "io"), ("h_seq_ptr", "io"), ("h0_ptr", "io"), ("p_ptr", "io"), ("rst_ptr", "u8"),
) + ZONE_POINTERS
BACKWARD_INTS = ("s_off", "s_bs", "k_len", "q_off", "q_bs", "q_prev_off", "q_n_prev", "H", "P", "has_resets",
                 "has_scale", "zoneout_h", "zoneout_c", "p_h", "p_c")
#: The runtime scalars among the ints that are fp32 (the zoneout probabilities).
FLOATS = ("p_h", "p_c")
