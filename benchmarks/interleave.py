"""Interleaved timing: torch.nn and fastrnn (and, for the A/A control, a second torch.nn)
take turns, one round each, so that whatever slows the machine down slows both.

Why: on a shared machine the speed drifts over seconds (other jobs, frequency, caches).
Timed one after the other, two implementations see different machines; an A/A test
(torch.nn against itself, each timed as its own entry, back to back) gave median ratios of
0.81-1.07 on this project's 2-core VM. Interleaved, round ``i`` of each implementation runs
within milliseconds of the other's, and the *paired ratio* ``fastrnn_i / torch_i`` cancels
the drift that hits both; its median over the rounds is the suite's headline number.

The order inside a round cycles through every permutation of the arms (two arms:
torch-first, fastrnn-first, torch-first, ...; three: all six orders in turn), so neither
implementation always runs first (warmer or colder caches, a pending interrupt).

:class:`Rounds` splits the timed rounds around the rounds of one arm (``fastrnn``) so that
pytest-benchmark's ``benchmark.pedantic`` can run that arm as its timed function: the other
arms run, timed here, in pedantic's ``setup`` (untimed by pytest-benchmark). Every arm,
that one included, is timed here by the same code (:func:`time_call`), so the ratios compare
like with like.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

#: One letter per arm in the recorded round order (``"tf"``: torch first, then fastrnn).
LETTERS = {"torch": "t", "fastrnn": "f", "torch_aa": "a", "baseline": "b", "scale": "s"}


@dataclass
class Arm:
    """One implementation of a case: ``run`` is one round (forward, or forward+backward;
    it synchronises the device itself); ``prep`` (untimed) runs before each round (resets
    gradients), or None."""

    run: Callable[[], object]
    prep: Callable[[], object] | None = None


def time_call(arm: Arm, timer: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one round of ``arm`` takes (``prep`` untimed)."""
    if arm.prep is not None:
        arm.prep()
    start = timer()
    arm.run()
    return timer() - start


def round_orders(arms: Sequence[str], rounds: int) -> list[tuple[str, ...]]:
    """The order of the arms in each round: every permutation in turn (two arms: alternate)."""
    perms = list(itertools.permutations(arms))
    return [perms[i % len(perms)] for i in range(rounds)]


def run_rounds(arms: dict[str, Arm], rounds: int) -> dict[str, list[float]]:
    """``rounds`` interleaved rounds (untimed use: warm-up, calibration); seconds per arm."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for order in round_orders(list(arms), rounds):
        for name in order:
            times[name].append(time_call(arms[name]))
    return times


class Rounds:
    """The timed rounds of one case, split around the rounds of the arm ``timed``.

    Use with pytest-benchmark::

        rounds = Rounds(arms, n, timed="fastrnn")
        benchmark.pedantic(rounds.target, setup=rounds.setup, rounds=n)
        rounds.finish()

    ``setup`` runs (and times) the other arms' runs that come before the timed arm's next
    run in the interleaved sequence, then the timed arm's ``prep``; ``target`` is one round
    of the timed arm; ``finish`` runs what is left of the rounds the timed arm completed (the
    arms after it in the last round). pytest-benchmark's ``--benchmark-disable`` calls
    ``setup`` and ``target`` once: then one round is recorded. :meth:`run` does all of it
    without pytest-benchmark.
    """

    def __init__(self, arms: dict[str, Arm], rounds: int, timed: str = "fastrnn"):
        if timed not in arms:
            raise ValueError(f"timed arm {timed!r} is not one of {list(arms)}")
        self.arms, self.timed = arms, timed
        self.order = round_orders(list(arms), rounds)
        self._times: dict[str, list[float | None]] = {name: [None] * rounds for name in arms}
        # segments[k]: the (round, arm) runs between the timed arm's runs k-1 and k;
        # segments[rounds]: those after its last run
        self._segments: list[list[tuple[int, str]]] = [[]]
        for i, order in enumerate(self.order):
            for name in order:
                if name == timed:
                    self._segments.append([])
                else:
                    self._segments[-1].append((i, name))
        self.done = 0  # rounds of the timed arm run so far

    def _run(self, segment) -> None:
        for i, name in segment:
            self._times[name][i] = time_call(self.arms[name])

    def setup(self) -> None:
        self._run(self._segments[self.done])
        arm = self.arms[self.timed]
        if arm.prep is not None:
            arm.prep()

    def target(self) -> None:
        start = time.perf_counter()
        self.arms[self.timed].run()
        self._times[self.timed][self.done] = time.perf_counter() - start
        self.done += 1

    def finish(self) -> dict[str, list[float]]:
        """Run the rest of the completed rounds; seconds per arm, one per completed round."""
        self._run([(i, name) for i, name in self._segments[self.done] if i < self.done])
        return self.times

    def run(self) -> dict[str, list[float]]:
        for _ in self.order:
            self.setup()
            self.target()
        return self.finish()

    @property
    def times(self) -> dict[str, list[float]]:
        """Seconds per arm, one per round the timed arm completed (after :meth:`finish`)."""
        out = {}
        for name, ts in self._times.items():
            done = [t for t in ts[: self.done] if t is not None]
            if len(done) != self.done:
                raise RuntimeError(f"a completed round of {name!r} has not run yet: call finish() first")
            out[name] = done
        return out

    @property
    def order_letters(self) -> list[str]:
        """The completed rounds' orders, e.g. ``["tf", "ft", ...]`` (see :data:`LETTERS`)."""
        return ["".join(LETTERS.get(name, name[0]) for name in order) for order in self.order[: self.done]]


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def arm_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, minimum and quartiles of one arm's rounds, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    q1, q3 = _quartiles(ms)
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "q1_ms": q1, "q3_ms": q3}


def paired(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Ratios of two arms timed in the same rounds: per-round ratios (median, quartiles),
    ratio of the minima and of the medians."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired ratios need the same, non-zero number of rounds for both arms")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, q3 = _quartiles(ratios)
    return {
        "median": statistics.median(ratios), "q1": q1, "q3": q3,
        "of_mins": min(numerator) / min(denominator),
        "of_medians": statistics.median(numerator) / statistics.median(denominator),
    }
