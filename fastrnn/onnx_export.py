"""ONNX export: each layer-direction becomes one ONNX ``LSTM``, ``GRU`` or ``RNN`` node.

During ``torch.onnx.export(..., dynamo=True)`` (``torch.onnx.is_in_onnx_export()``),
:func:`fastrnn.ops.layer` calls :func:`layer` instead of the fastrnn op: it emits the
ONNX operator with ``torch.onnx.ops.symbolic_multi_out``, so the ONNX graph holds the
standard recurrent operator that every ONNX runtime implements, with the sequence length a
dynamic dimension (``T`` only appears as a dimension of the input and output).

What ONNX's operators can express: padded input (the ONNX ``sequence_lens`` input is not
used), LSTM without ``proj_size`` (ONNX ``LSTM`` has no projection), peephole LSTM (the
``P`` input, peepholes in ONNX's ``i, o, f`` order), GRU with torch's
``b_hn`` rule (``linear_before_reset=1``), RNN with tanh or relu. Anything else (a cell
other than torch's four among them) is refused with an error before the export does any
work, as are resets inside a sequence (no ONNX recurrent operator resets its state).

Gate orders differ: torch stacks LSTM gates as ``i, f, g, o`` and GRU gates as ``r, z, n``;
ONNX wants ``i, o, f, c`` and ``z, r, h``. The weights are reordered with torch ops, which
the exporter folds into constants.
"""

from __future__ import annotations

import torch

try:  # the ONNX exporter's flag (private: absent in other torch versions, then unused)
    from torch.onnx._internal.exporter import _flags as _onnx_flags
except ImportError:  # pragma: no cover
    _onnx_flags = None
try:  # the TorchScript-based exporter's flag, what torch.onnx.is_in_onnx_export() also reads
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _ts_globals
except ImportError:  # pragma: no cover
    _ts_globals = None

from .cells.variants import LSTM_PEEPHOLE
from .kinds import CellKind

#: torch's gate blocks in ONNX's order
_ONNX_GATE_ORDER = {CellKind.LSTM: (0, 3, 1, 2), LSTM_PEEPHOLE: (0, 3, 1, 2), CellKind.GRU: (1, 0, 2)}
_OP_TYPE = {CellKind.LSTM: "LSTM", LSTM_PEEPHOLE: "LSTM", CellKind.GRU: "GRU", CellKind.RNN_TANH: "RNN",
            CellKind.RNN_RELU: "RNN"}
_TORCH_CELLS = frozenset(kind.name for kind in _OP_TYPE)  # (the cells an ONNX node runs)
#: ONNX opset version of these operators' current definitions
_OPSET = 14


def exporting() -> bool:
    """True inside ``torch.onnx.export``.

    ``torch.onnx.is_in_onnx_export()`` answers that, except under TorchDynamo, which folds
    it to False; the ONNX exporter's own flag, read as a module attribute, is seen through
    (the exporter's ``torch.export(strict=True)`` capture runs under TorchDynamo).
    """
    if getattr(_onnx_flags, "_is_onnx_exporting", False):
        return True
    if _ts_globals is not None and not torch.compiler.is_compiling():
        # what torch.onnx.is_in_onnx_export() returns, without its two imports per call
        # (~6 us on a cold cache, paid by every layer-direction of every eager call;
        # TorchDynamo does not trace into that flag's property, it folds the function)
        return bool(_ts_globals.in_onnx_export)
    return torch.onnx.is_in_onnx_export()


PACKED_REASON = "a PackedSequence input cannot be exported to ONNX; export the padded model instead"


def unsupported_reason(kind: CellKind, batch_sizes, w_hr, dtype, resets=None) -> str | None:
    """Why a layer cannot be written as one ONNX recurrent node, or None."""
    if kind.name not in _TORCH_CELLS:
        return (f"cell {kind.name!r} has no ONNX operator (ONNX has LSTM, GRU and RNN nodes only: torch's "
                "own cells and the peephole LSTM)")
    if resets is not None:
        return "resets inside a sequence have no ONNX operator (ONNX's recurrent nodes never reset their state)"
    if batch_sizes is not None:
        return PACKED_REASON
    if w_hr is not None:
        return "LSTM with proj_size has no ONNX operator (ONNX LSTM has no projection)"
    if dtype not in (torch.float32, torch.float16, torch.float64):
        return f"ONNX recurrent operators take float16/float32/float64 input, not {dtype}"
    return None


def _onnx_gates(kind: CellKind, w: torch.Tensor) -> torch.Tensor:
    order = _ONNX_GATE_ORDER.get(kind)
    if order is None:
        return w
    blocks = w.chunk(len(order), 0)
    return torch.cat([blocks[i] for i in order], 0)


def layer(kind: CellKind, x, batch_sizes, h0, c0, weights, reverse: bool, params=None, resets=None):
    """One layer-direction as one ONNX node; returns ``(y (T, B, H), h_n (B, H), c_n | None)``."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    reason = unsupported_reason(kind, batch_sizes, w_hr, x.dtype, resets)
    if reason is not None:
        raise RuntimeError(f"fastrnn: ONNX export: {reason}")
    if torch.jit.is_tracing():
        raise RuntimeError(
            "fastrnn: the TorchScript-based ONNX exporter (torch.onnx.export(..., dynamo=False)) is "
            "not supported; use torch.onnx.export(..., dynamo=True)"
        )
    hidden = w_hh.shape[1]
    steps, batch = x.shape[0], x.shape[1]
    inputs = [x, _onnx_gates(kind, w_ih).unsqueeze(0), _onnx_gates(kind, w_hh).unsqueeze(0)]
    if b_ih is not None:
        inputs.append(torch.cat([_onnx_gates(kind, b_ih), _onnx_gates(kind, b_hh)]).unsqueeze(0))
    else:
        inputs.append(None)
    inputs += [None, h0.unsqueeze(0)]  # no sequence_lens: every sequence is T long
    attrs = {"hidden_size": hidden, "direction": "reverse" if reverse else "forward"}
    if kind is CellKind.GRU:
        attrs["linear_before_reset"] = 1  # torch's rule: b_hn inside the reset product
    if kind in (CellKind.RNN_TANH, CellKind.RNN_RELU):
        attrs["activations"] = ["Tanh" if kind is CellKind.RNN_TANH else "Relu"]
    shapes = [(steps, 1, batch, hidden), (1, batch, hidden)]
    lstm = kind.has_cell_state
    if lstm:
        inputs.append(c0.unsqueeze(0))
        shapes.append((1, batch, hidden))
    if kind is LSTM_PEEPHOLE:
        inputs.append(torch.cat([params[0], params[2], params[1]]).unsqueeze(0))  # ONNX's P: i, o, f
    outs = torch.onnx.ops.symbolic_multi_out(
        _OP_TYPE[kind], inputs, attrs, dtypes=[x.dtype] * len(shapes), shapes=shapes, version=_OPSET
    )
    y, h_n = outs[0].squeeze(1), outs[1].squeeze(0)
    c_n = outs[2].squeeze(0) if lstm else None
    return y, h_n, c_n
