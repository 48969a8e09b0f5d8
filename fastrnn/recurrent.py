"""``Recurrent``: a multi-layer recurrent module for any :class:`~fastrnn.cells.Cell`.

``fastrnn.Recurrent(cell, input_size, hidden_size, ...)`` is what ``fastrnn.LSTM`` is for
torch's LSTM, for a cell of the user's own (see ``examples/custom_cell.py``) or one of
torch's four: a ``torch.nn.RNNBase`` with torch's parameter names, shapes and init
(``weight_ih_l{k}`` ``(gates*H, I)``, ``weight_hh_l{k}`` ``(gates*H, H)``, ``bias_ih_l{k}``,
``bias_hh_l{k}``, ``_reverse`` for the second direction, all ``U(-1/sqrt(H), 1/sqrt(H))``),
``batch_first``, unbatched input, ``PackedSequence``, dropout between layers and
bidirectional layers. Its inputs and outputs are ``torch.nn.LSTM``'s when the cell carries a
cell state (``hx = (h0, c0)``, returns ``(output, (h_n, c_n))``), ``torch.nn.GRU``'s
otherwise (``hx = h0``, returns ``(output, h_n)``). It runs on fastrnn's engine through the
same route as the drop-in modules (``_FastRNNBase.forward``, :func:`fastrnn.functional.stack`,
one :func:`fastrnn.ops.layer` per layer-direction), on every backend that can run the cell:
``reference`` always, ``triton`` when the cell has Triton functions, ``native`` only for
torch's cells. ``proj_size`` is LSTM's alone.

Example::

    >>> import torch, fastrnn
    >>> rnn = fastrnn.Recurrent(fastrnn.cells.GRU, 10, 20, num_layers=2, batch_first=True)
    >>> out, h_n = rnn(torch.randn(4, 7, 10))
    >>> out.shape, h_n.shape
    (torch.Size([4, 7, 20]), torch.Size([2, 4, 20]))
"""

from __future__ import annotations

import torch
from torch import nn

from .backends import validate_backend_name
from .cells import LSTM, Cell
from .kinds import CellKind
from .modules import _FastRNNBase

__all__ = ["Recurrent"]

# Weights whose rows are the cell's stacked gate blocks (weight_hr is not).
_GATED = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class Recurrent(_FastRNNBase, nn.RNNBase):
    """A stack of recurrent layers of ``cell`` (see the module docstring).

    Args:
        cell: a :class:`fastrnn.Cell`, or the name of a defined one.
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device, dtype: as in ``torch.nn.LSTM``.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"native"`` (torch's cells
            only), or None to follow ``FASTRNN_BACKEND``.
        proj_size: LSTM's projection (``cell`` must be ``fastrnn.cells.LSTM``).
    """

    def __init__(
        self,
        cell: Cell | str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
        proj_size: int = 0,
    ) -> None:
        cell = CellKind(cell)
        if cell.param_rows:
            raise ValueError(
                f"fastrnn.Recurrent: cell {cell.name!r} has per-unit parameters of its own, which Recurrent "
                "does not create; use the layer made for it (fastrnn.LSTM(peephole=True), fastrnn.LayerNormLSTM, "
                "fastrnn.LayerNormGRU)"
            )
        if proj_size != 0 and cell is not LSTM:
            raise ValueError(
                f"fastrnn.Recurrent: proj_size is only supported for the LSTM cell, not for {cell.name!r}"
            )
        # torch's checks and parameter names, built on the meta device (no memory, no
        # random draws) with the one-gate layout; then every gated weight gets its
        # (gates * H) rows and torch's init runs once, drawing what torch.nn.LSTM draws
        # for a cell of four gates.
        nn.RNNBase.__init__(
            self, "RNN_TANH", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
            dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, device="meta", dtype=dtype,
        )
        for name in self._flat_weights_names:
            old = getattr(self, name)
            rows = old.shape[0] * (cell.gates if name.startswith(_GATED) else 1)
            setattr(self, name, nn.Parameter(torch.empty((rows, *old.shape[1:]), device=device, dtype=dtype)))
        self.mode = cell.name
        self.cell = cell
        self._init_flat_weights()
        self.reset_parameters()
        self.backend = validate_backend_name(backend)

    @property
    def _kind(self) -> Cell:
        return self.cell

    def extra_repr(self) -> str:
        return f"{self.cell.name}, {super().extra_repr()}"

    def flatten_parameters(self) -> None:
        """Nothing to do: fastrnn reads the parameters as they are (cuDNN's flat weight
        buffer is for torch's own cuDNN kernels, which do not run here)."""

    def _runs_torch_forward(self, input, hx) -> bool:
        # Every call takes the engine path; torch.nn's forward knows only its own modules.
        return False

    def check_forward_args(self, input, hidden, batch_sizes):
        if self.cell.has_cell_state:
            return nn.LSTM.check_forward_args(self, input, hidden, batch_sizes)
        return nn.RNNBase.check_forward_args(self, input, hidden, batch_sizes)

    def permute_hidden(self, hx, permutation):
        if self.cell.has_cell_state:
            return nn.LSTM.permute_hidden(self, hx, permutation)
        return nn.RNNBase.permute_hidden(self, hx, permutation)

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
