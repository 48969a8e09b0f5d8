"""``CellKind``: the cell definitions of :mod:`fastrnn.cells` under the names the engine uses.

``CellKind.LSTM`` *is* the :class:`~fastrnn.cells.Cell` definition of torch's LSTM (and so
on); ``CellKind("GRU")`` finds any defined cell by name, the user's own included. Iterating
gives torch's four cells.
"""

from __future__ import annotations

from . import cells
from .cells import Cell


class _Kinds:
    LSTM = cells.LSTM
    GRU = cells.GRU
    RNN_TANH = cells.RNN_TANH
    RNN_RELU = cells.RNN_RELU

    def __call__(self, name) -> Cell:
        return name if isinstance(name, Cell) else cells.get(name)

    def __iter__(self):
        return iter(cells.BUILTIN)

    @staticmethod
    def from_mode(mode: str, nonlinearity: str = "tanh") -> Cell:
        """Cell of a ``torch.nn`` module from its ``mode`` (and ``nonlinearity`` for RNN)."""
        if mode == "RNN":
            return cells.RNN_TANH if nonlinearity == "tanh" else cells.RNN_RELU
        return cells.get(mode)


CellKind = _Kinds()
