"""What every tier's launcher allocates and how the ``saved`` tuple is laid out.

Precision: fp32 accumulation (fp64 for fp64 I/O); a cell state and the ``dh`` / ``dc``
state of backward are kept in that accumulation dtype whatever the I/O dtype; gates are
saved in the I/O dtype. fp32 GEMMs use TF32 only when ``torch.backends.cudnn.allow_tf32``
is on (cuDNN's rule for ``nn.LSTM``).

Saved for backward (one layout whatever tier ran, so every tier's backward reads every
tier's forward): the gates ``(N, G*H)``, then the cell state ``c`` ``(N, H)`` in the
accumulation dtype for a cell that has one, else ``e`` ``(N, H)`` (what a cell such as
GRU keeps besides its gates; a placeholder for a cell that keeps none); nothing for a
cell that saves nothing (plain RNNs: their backward reads ``y``).

With zoneout (:class:`fastrnn.regularisers.Zoneout`) the saved ``c`` is the zoned-out cell
state (what the next step reads) and up to two more tensors follow: ``cell_c`` ``(N, H)``
in the accumulation dtype, the cell's own new ``c`` before zoneout (its backward reads it),
when ``c`` is zoned out; ``cell_h`` ``(N, H)`` in the I/O dtype, the cell's own new ``h``,
when ``h`` is zoned out and the cell's backward reads ``h`` (plain RNNs). ``y`` holds the
zoned-out ``h``.
"""

from __future__ import annotations

import torch

#: Tests switch this on to allocate every buffer the kernels write filled with NaN, so a
#: store a kernel skips shows up as NaN instead of stale memory.
FILL_NAN = False


def new(shape, dtype, device) -> torch.Tensor:
    if FILL_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tf32() -> bool:
    return bool(torch.backends.cudnn.allow_tf32)


def saves(cell, save: bool) -> bool:
    """Whether a forward that was asked to ``save`` keeps anything for this cell."""
    return save and (cell.saves_gates or cell.saves_extra or cell.has_cell_state)


def zoned(cell, zoneout) -> tuple[bool, bool]:
    """``(keeps cell_c, keeps cell_h)`` for a call with ``zoneout`` (a Zoneout or ``(on_h, on_c)``)."""
    if zoneout is None:
        return False, False
    on_h, on_c = (zoneout.on_h, zoneout.on_c) if hasattr(zoneout, "on_h") else zoneout
    return bool(on_c and cell.has_cell_state), bool(on_h and cell.backward_reads_h)


def saved_layout(cell, rows, hidden, dtype, save, zoneout=None, **_loop):
    """Shapes and dtypes of the ``saved`` tuple (from sizes alone: fake tensors use it);
    ``zoneout``: ``(on_h, on_c)`` for a call with zoneout (other loop inputs change nothing)."""
    if not save:
        return []
    layout = []
    if saves(cell, save):
        if cell.has_cell_state:
            second = ((rows, hidden), acc_dtype(dtype))
        else:  # e, or the placeholder :func:`dummies` gives a cell that keeps none
            second = ((rows, hidden) if cell.saves_extra else (8,), dtype)
        layout = [((rows, cell.gates * hidden), dtype), second]
    keep_c, keep_h = zoned(cell, zoneout)
    if keep_c:
        layout.append(((rows, hidden), acc_dtype(dtype)))
    if keep_h:
        layout.append(((rows, hidden), dtype))
    return layout


def dummies(dtype: torch.dtype, device):
    """Placeholders for the pointer arguments a specialisation does not read, in the dtypes
    its signature expects: ``(I/O dtype, accumulation dtype)``."""
    return torch.empty(8, dtype=dtype, device=device), torch.empty(8, dtype=acc_dtype(dtype), device=device)


def recurrent_bias(cell, b_hh, hidden: int, dtype, device, prep, dummy):
    """The recurrent bias the kernels add inside the step for a cell that keeps it apart
    (zeros for a layer without bias); a placeholder for the other cells (their ``b_hh`` is
    folded into ``xg``)."""
    if not cell.recurrent_apart:
        return dummy
    return prep(b_hh) if b_hh is not None else torch.zeros(cell.gates * hidden, dtype=dtype, device=device)


def save_buffers(cell, n_rows: int, hidden: int, dtype, device, save: bool, dummy):
    """``(gates, e)`` the forward kernels fill when saving (placeholders otherwise); the
    cell-state buffer is tier-specific."""
    gates = new((n_rows, cell.gates * hidden), dtype, device) if save else dummy
    extra = new((n_rows, hidden), dtype, device) if (save and cell.saves_extra) else dummy
    return gates, extra


def saved(cell, save: bool, gates, c_seq, extra, cell_c=None, cell_h=None) -> tuple:
    """The ``saved`` tuple of every tier (:func:`saved_layout`); ``cell_c`` / ``cell_h``: the
    zoneout buffers, None when not kept."""
    zone = tuple(t for t in (cell_c, cell_h) if t is not None)
    if not save:
        return zone
    return ((gates, c_seq) if cell.has_cell_state else (gates, extra)) + zone


def forward_result(cell, save: bool, y, c_buf, gates, extra, schedule, reverse: bool, cell_c=None, cell_h=None):
    """The :class:`~fastrnn.backends.base.ForwardResult` of a tier that writes every step's
    ``y`` (and, with ``save``, every step's ``c``; else the final ``(B, H)`` ``c``) in
    schedule order: ``h_n`` / ``c_n`` are read from the rows of each sequence's last step."""
    from ..base import ForwardResult

    c_n = None
    if cell.has_cell_state:
        c_n = (schedule.final(c_buf, reverse) if save else c_buf).to(y.dtype)
    return ForwardResult(y, schedule.final(y, reverse), c_n, saved(cell, save, gates, c_buf, extra, cell_c, cell_h))


def unpack_zoneout(cell, saved_tuple, zoneout) -> tuple:
    """``(cell_c, cell_h)`` of a ``saved`` tuple (None where not kept)."""
    keep_c, keep_h = zoned(cell, zoneout)
    tail = list(saved_tuple[len(saved_tuple) - int(keep_c) - int(keep_h):])
    return (tail.pop(0) if keep_c else None), (tail.pop(0) if keep_h else None)


def unpack_saved(cell, saved_tuple, dummy_io, dummy_acc) -> tuple:
    """``(gates, e, c_seq)`` from a ``saved`` tuple, placeholders where the cell has none
    (the zoneout buffers after them: :func:`unpack_zoneout`)."""
    if len(saved_tuple) < 2:
        return dummy_io, dummy_io, dummy_acc
    gates, second = saved_tuple[:2]
    return (gates, dummy_io, second) if cell.has_cell_state else (gates, second, dummy_acc)


def grad_buffers(cell, n_rows: int, hidden: int, dtype, device):
    """``(dxg, dhg)`` the backward kernels fill; one buffer unless the cell keeps the
    recurrent pre-activation apart (its recurrent gradient differs from the input one)."""
    dxg = new((n_rows, cell.gates * hidden), dtype, device)
    return dxg, (new((n_rows, cell.gates * hidden), dtype, device) if cell.recurrent_apart else dxg)


def step_tables(schedule, device):
    """``(uniform_b, sizes, offsets)`` for the persistent kernels: a padded batch passes its
    ``B`` and placeholder tensors (no host-to-device copy), a packed one its per-step
    batch sizes and first rows as int32 device tensors (made once per schedule)."""
    if schedule.is_uniform:
        dummy = torch.empty(8, dtype=torch.int32, device=device)
        return schedule.batch, dummy, dummy
    sizes, offsets = schedule.device_tables(device)
    return 0, sizes, offsets


_FLAG_PLACEHOLDERS: dict = {}


def flag_placeholder(device) -> torch.Tensor:
    """A zero uint8 tensor for a flags / mask pointer a call does not have (the kernels never
    read it: its runtime flag is off), made once per device instead of once per call."""
    key = str(torch.device(device))
    placeholder = _FLAG_PLACEHOLDERS.get(key)
    if placeholder is None:
        placeholder = _FLAG_PLACEHOLDERS[key] = torch.zeros(16, dtype=torch.uint8, device=device)
    return placeholder


def loop_tensors(cell, hidden: int, params, resets, zoneout, recurrent_scale, dummy_io, prep):
    """What every tier's kernels read of a call's optional inputs (see
    :mod:`fastrnn.backends.base`): ``(tensors, scalars)``.

    ``tensors``: ``params`` (the cell's per-unit rows; zeros for a cell with rows called
    without them, as the first-use check does; else the placeholder), ``resets`` (the flags
    as their uint8 bytes), ``scale`` (recurrent dropout), ``mask_h`` / ``mask_c`` (zoneout's
    training masks as uint8); placeholders where the call has none. ``scalars``:
    ``has_resets``, ``has_scale``, ``zoneout_h`` / ``zoneout_c`` (0 none, 1 the mask, 2 the
    eval probability) and ``p_h`` / ``p_c`` (always Python floats: one fp32 signature).
    """
    device = dummy_io.device
    flags = flag_placeholder(device)
    if params is None:
        params = dummy_io.new_zeros(cell.param_rows, hidden) if cell.param_rows else dummy_io
    tensors = dict(params=prep(params.to(dummy_io.dtype)), mask_h=flags, mask_c=flags,
                   resets=flags if resets is None else prep(resets.view(torch.uint8)),
                   scale=dummy_io if recurrent_scale is None else prep(recurrent_scale))
    scalars = dict(has_resets=int(resets is not None), has_scale=int(recurrent_scale is not None),
                   zoneout_h=0, zoneout_c=0, p_h=0.0, p_c=0.0)
    if zoneout is not None:
        states = (("h", zoneout.mask_h, zoneout.p_h),)
        if cell.has_cell_state:
            states += (("c", zoneout.mask_c, zoneout.p_c),)
        for which, mask, p in states:
            if mask is not None:
                tensors[f"mask_{which}"] = prep(mask.view(torch.uint8))
                scalars[f"zoneout_{which}"] = 1
            elif p > 0:
                scalars[f"zoneout_{which}"], scalars[f"p_{which}"] = 2, float(p)
    return tensors, scalars
