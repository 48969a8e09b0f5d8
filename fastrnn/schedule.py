"""The time schedule of one recurrent layer: which rows of the flat sequence each step owns.

Every sequence the engine sees is *flat*: a 2-D tensor ``(N, features)`` whose rows are
grouped by timestep, step ``t`` owning rows ``offsets[t] : offsets[t] + batch_sizes[t]``.
This is exactly the layout of ``PackedSequence.data``, and a padded ``(T, B, F)`` tensor
reshaped to ``(T * B, F)`` is the special case where every batch size equals ``B``.
So packed and padded input run through the same loop without any repacking, and a
step with fewer active sequences simply computes fewer rows.

Batch sizes never increase with ``t`` (torch's packing sorts sequences by length).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

#: Up to this many state elements :meth:`Schedule.previous_product` builds the previous
#: states and multiplies once (measured: 20 us against 28 us at T=10, B=1, H=32).
_SMALL_PREVIOUS = 1 << 16


@dataclass(frozen=True)
class Schedule:
    """Per-step batch sizes of a flat sequence.

    Attributes:
        batch_sizes: active rows at each timestep, non-increasing, ``len == T``.
        offsets: first flat row of each timestep.
        batch: ``B``, the number of sequences (``batch_sizes[0]``; 0 for an empty batch).
    """

    batch_sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    batch: int

    @staticmethod
    def uniform(steps: int, batch: int) -> "Schedule":
        """Schedule of a padded ``(T, B, F)`` sequence: every step has ``B`` rows."""
        return Schedule((batch,) * steps, tuple(t * batch for t in range(steps)), batch)

    @staticmethod
    def from_batch_sizes(batch_sizes: torch.Tensor | list[int]) -> "Schedule":
        """Schedule of a ``PackedSequence`` from its ``batch_sizes`` (CPU int64 tensor)."""
        sizes = tuple(int(b) for b in (batch_sizes.tolist() if torch.is_tensor(batch_sizes) else batch_sizes))
        offsets, total = [], 0
        for b in sizes:
            offsets.append(total)
            total += b
        return Schedule(sizes, tuple(offsets), sizes[0] if sizes else 0)

    @property
    def steps(self) -> int:
        """``T``, the number of timesteps."""
        return len(self.batch_sizes)

    @property
    def rows(self) -> int:
        """``N``, the number of rows of the flat sequence."""
        return self.offsets[-1] + self.batch_sizes[-1] if self.batch_sizes else 0

    @cached_property
    def is_uniform(self) -> bool:
        """True when every step has all ``B`` rows (padded input)."""
        return all(b == self.batch for b in self.batch_sizes)

    def order(self, reverse: bool) -> range:
        """Timesteps in processing order: ``0..T-1``, or ``T-1..0`` for the reverse direction."""
        return range(self.steps - 1, -1, -1) if reverse else range(self.steps)

    def step_lists(self, reverse: bool) -> tuple[list, list, list]:
        """``(order, offsets, batch_sizes)`` as lists, the C++ loops' schedule arguments, made
        once per direction."""
        lists = self._step_lists.get(reverse)
        if lists is None:
            lists = self._step_lists[reverse] = (list(self.order(reverse)), list(self.offsets), list(self.batch_sizes))
        return lists

    @cached_property
    def _step_lists(self) -> dict:
        return {}

    def device_tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch_sizes, offsets)`` as int32 tensors on ``device``, for kernels that read
        the schedule themselves; made (one host-to-device copy each) once per schedule and
        device, then reused."""
        key = str(torch.device(device))
        if key not in self._device_tables:
            if self.rows >= 2**31:
                raise ValueError(f"fastrnn: {self.rows} rows do not fit the int32 step tables")
            self._device_tables[key] = tuple(
                torch.tensor(v, dtype=torch.int32).to(device) for v in (self.batch_sizes, self.offsets)
            )
        return self._device_tables[key]

    @cached_property
    def _device_tables(self) -> dict:
        return {}

    @cached_property
    def _lengths(self) -> torch.Tensor:
        """Length of each of the ``B`` sequences (CPU int64)."""
        sizes = torch.tensor(self.batch_sizes, dtype=torch.int64)
        return (sizes.unsqueeze(0) > torch.arange(self.batch).unsqueeze(1)).sum(1)

    def _prev_index(self, reverse: bool) -> torch.Tensor:
        """For each flat row, the row of ``cat([init, seq])`` holding its previous state."""
        batch = self.batch
        index = torch.empty(self.rows, dtype=torch.int64)
        last_row = torch.arange(batch, dtype=torch.int64)  # rows of `init` to start from
        for t in self.order(reverse):
            off, bs = self.offsets[t], self.batch_sizes[t]
            index[off : off + bs] = last_row[:bs]
            last_row[:bs] = torch.arange(off, off + bs) + batch
        return index

    @cached_property
    def _prev_index_forward(self) -> torch.Tensor:
        return self._prev_index(False)

    @cached_property
    def _prev_index_reverse(self) -> torch.Tensor:
        return self._prev_index(True)

    def previous(self, seq: torch.Tensor, init: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The state each step started from, as a flat sequence.

        Args:
            seq: ``(N, H)`` states produced at each step.
            init: ``(B, H)`` initial state.
            reverse: processing direction.

        Returns:
            ``(N, H)``: row ``r`` of step ``t`` holds that sequence's state before step ``t``.
        """
        if self.rows == 0:
            return seq
        if self.is_uniform:
            b = self.batch
            return torch.cat([seq[b:], init]) if reverse else torch.cat([init, seq[:-b]])
        index = self._prev_index_reverse if reverse else self._prev_index_forward
        return torch.cat([init, seq]).index_select(0, index.to(seq.device))

    def batch_rows(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """``(N, F)``: each flat row gets its sequence's row of ``per_sequence`` ``(B, F)``
        (step ``t``'s rows are sequences ``0 .. batch_sizes[t] - 1``)."""
        if self.is_uniform:
            return per_sequence.repeat(self.steps, 1)
        return torch.cat([per_sequence[:bs] for bs in self.batch_sizes])

    def scale_rows(self, seq: torch.Tensor, per_sequence: torch.Tensor) -> torch.Tensor:
        """``seq`` ``(N, F)`` times :meth:`batch_rows` of ``per_sequence`` (a new tensor; for
        padded input a broadcast, without the ``(N, F)`` copy of ``per_sequence``)."""
        if self.is_uniform:
            return (seq.view(self.steps, self.batch, -1) * per_sequence).view(seq.shape)
        return seq * self.batch_rows(per_sequence)

    def entering_resets(self, resets: torch.Tensor, reverse: bool) -> torch.Tensor:
        """Where the state entering each row's step is zero, for one direction.

        Args:
            resets: ``(N,)`` bool, True where a sequence starts a new episode at that row.
            reverse: processing direction.

        Returns:
            ``(N,)`` bool. Going forward that is ``resets`` itself. The reverse direction
            enters step ``t`` with the state it computed at ``t + 1``, which ends an episode
            (so is dropped) when ``t + 1`` starts one; the first step it processes for a
            sequence starts from ``h0`` unless nothing follows.
        """
        if not reverse or self.rows == 0:
            return resets
        b = self.batch
        if self.is_uniform:
            return torch.cat([resets[b:], resets.new_zeros(b)])
        return torch.cat([resets.new_zeros(b), resets]).index_select(0, self._prev_index_reverse.to(resets.device))

    def previous_product(self, grad: torch.Tensor, seq: torch.Tensor, init: torch.Tensor, reverse: bool) -> torch.Tensor:
        """``grad^T @ previous(seq, init, reverse)`` without building the previous states.

        Args:
            grad: ``(N, G)`` per-row gradients; seq: ``(N, H)``; init: ``(B, H)``.

        Returns:
            ``(G, H)``: the weight gradient of a product with the previous state.
        """
        b = self.batch
        if not self.is_uniform or self.rows == 0 or self.rows == b or seq.numel() <= _SMALL_PREVIOUS:
            # (small: one copy and one product cost less than the two products on slices)
            return grad.t() @ self.previous(seq, init, reverse)
        if reverse:
            return torch.addmm(grad[-b:].t() @ init, grad[:-b].t(), seq[b:])
        return torch.addmm(grad[:b].t() @ init, grad[b:].t(), seq[:-b])

    def final(self, seq: torch.Tensor, reverse: bool) -> torch.Tensor:
        """Each sequence's state after its last processed step.

        Args:
            seq: ``(N, H)`` states produced at each step.
            reverse: processing direction (the reverse direction ends at timestep 0).

        Returns:
            ``(B, H)``, a new tensor (never a view of ``seq``: an in-place change to
            ``h_n`` must not alter the output sequence).
        """
        if reverse:
            return seq[: self.batch].clone()
        if self.is_uniform:
            return seq[self.rows - self.batch :].clone()
        index = torch.tensor(self.offsets, dtype=torch.int64)[self._lengths - 1] + torch.arange(self.batch)
        return seq.index_select(0, index.to(seq.device))
