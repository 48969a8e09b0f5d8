"""The four recurrent cell kinds and the facts about each that the engine needs."""

from __future__ import annotations

import enum


class CellKind(enum.Enum):
    """A recurrent cell kind, named after the ``mode`` string of ``torch.nn.RNNBase``.

    Gate order inside the stacked weights is torch's: LSTM ``i, f, g, o``; GRU ``r, z, n``.
    """

    LSTM = "LSTM"
    GRU = "GRU"
    RNN_TANH = "RNN_TANH"
    RNN_RELU = "RNN_RELU"

    @property
    def gates(self) -> int:
        """Number of stacked gate blocks in ``weight_ih`` / ``weight_hh``."""
        return {"LSTM": 4, "GRU": 3}.get(self.value, 1)

    @property
    def has_cell_state(self) -> bool:
        """True for LSTM, whose state is ``(h, c)``."""
        return self is CellKind.LSTM

    @property
    def recurrent_bias_inside(self) -> bool:
        """True when ``bias_hh`` cannot be folded into the input projection.

        GRU computes ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``: ``b_hn`` is scaled
        by ``r``, so the recurrent bias must be added to ``h @ W_hh^T`` inside the step.
        For LSTM and plain RNN, ``b_ih + b_hh`` is added once to the input projection.
        """
        return self is CellKind.GRU

    @staticmethod
    def from_mode(mode: str, nonlinearity: str = "tanh") -> "CellKind":
        """Kind of a ``torch.nn`` module from its ``mode`` (and ``nonlinearity`` for RNN)."""
        if mode == "RNN":
            return CellKind.RNN_TANH if nonlinearity == "tanh" else CellKind.RNN_RELU
        return _BY_VALUE[mode]  # (a dict lookup; CellKind(mode) costs ~1 us per call)


_BY_VALUE = {kind.value: kind for kind in CellKind}
