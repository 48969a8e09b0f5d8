"""What the GPU check runs: correctness cases, speed cases, tolerances, in priority order.

Plain Python (imports torch, never Triton): the plan is the same on a GPU and in the dry run;
only the shapes shrink in the dry run (Triton's interpreter runs ~70 ms per tiny launch).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch

#: Precision name -> (dtype, TF32 allowed). ``fp32`` is IEEE fp32 (TF32 off for cuDNN and
#: for torch's matmuls: torch leaves ``cudnn.allow_tf32`` on by default, so it is switched off
#: explicitly); ``tf32`` switches both flags on (fastrnn's kernels follow ``cudnn.allow_tf32``).
PRECISIONS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}

#: How each output / gradient is judged (see :func:`fastrnn.gpu_check.checks.compare`): the
#: error of fastrnn and of the baseline (cuDNN; the reference backend in the dry run), both in
#: the case's precision, against a float64 run of the same (rounded) weights and inputs, as a
#: normwise relative error ``max|a - truth| / max|truth|``. fastrnn passes when its error is at
#: most ``max(FLOOR[precision], BASELINE_FACTOR x baseline's error)``: no less accurate than
#: cuDNN by more than a small factor, and never failed for errors below what the precision
#: itself explains. The floors:
#:
#: - fp32 1e-4: unit roundoff 6e-8; the recurrence and the weight-gradient reductions (T x B
#:   rows, up to ~16k at the anchor shapes) grow it by orders of magnitude in the worst tensor,
#:   and fastrnn and cuDNN sum in different orders.
#: - tf32 1e-2: TF32 keeps a 10-bit mantissa (unit roundoff 4.9e-4) for every GEMM operand,
#:   the recurrent GEMM included, compounded over the time loop.
#: - fp16 1e-2: every stored value (y, saved gates, dxg) is rounded to fp16 (4.9e-4) each
#:   step; the accumulation is fp32.
#: - bf16 6e-2: the same with an 8-bit mantissa (unit roundoff 3.9e-3).
FLOOR = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 6e-2}
BASELINE_FACTOR = 4.0

#: Kernel tiers, in the order they are forced; the cooperative tier has three launch variants
#: (state in registers with 16 or 64 rows per program, or the tiled fallback), each reached by
#: its batch size (:func:`coop_batch`).
TIERS = ("step", "resident", "cooperative")
COOP_VARIANTS = ("R16", "R64", "tiled")
TIER_VARIANTS = ("step", "resident", "cooperative/R16", "cooperative/R64", "cooperative/tiled")

#: Structures every case runs as: a 2-layer bidirectional stack with h0 (and c0) given, or one
#: layer with no initial state (the zero-state path).
STRUCTURES = ("L2-bi-h0", "L1-noh0")
LAYOUTS = ("padded", "packed")


@dataclass(frozen=True)
class Shape:
    steps: int
    batch: int
    input: int
    hidden: int


#: Shapes of the correctness grid: on a GPU, and in the dry run (the interpreter).
SMALL = Shape(steps=7, batch=5, input=24, hidden=32)
SMALL_DRY = Shape(steps=3, batch=3, input=4, hidden=32)


@dataclass(frozen=True)
class CorrCase:
    kind: str
    tier: str  # a TIER_VARIANTS entry, or "auto"
    precision: str
    layout: str = "padded"
    structure: str = "L2-bi-h0"
    shape: Shape = SMALL
    anchor: bool = False

    @property
    def forced(self) -> str:
        """FASTRNN_TIER value of the case."""
        return self.tier.split("/")[0]

    @property
    def variant(self) -> str | None:
        return self.tier.split("/")[1] if "/" in self.tier else None

    @property
    def layers(self) -> int:
        return 2 if self.structure.startswith("L2") else 1

    @property
    def bidirectional(self) -> bool:
        return "-bi" in self.structure

    @property
    def h0(self) -> bool:
        return self.structure.endswith("-h0")

    @property
    def name(self) -> str:
        s = self.shape
        shape = f"T{s.steps}-B{s.batch}-I{s.input}-H{s.hidden}"
        tag = "anchor-" if self.anchor else ""
        return f"{tag}{self.tier}-{self.kind}-{self.precision}-{self.layout}-{self.structure}-{shape}"


def coop_batch(variant: str, hidden: int, sms: int, register_rows=(16, 64), block_h: int = 16,
               small: int = 5) -> int | None:
    """A batch whose cooperative launch takes ``variant`` on ``sms`` SMs, or None when none can.

    The rule of :func:`fastrnn.kernels.fits.cooperative_variant`: with ``P = cdiv(hidden,
    block_h)`` programs per group of rows, the register variant with the fewest rows per program
    ``r`` such that ``P x cdiv(batch, r) <= sms`` runs; past the largest, the tiled one. With
    ``g = sms // P`` groups: ``R16`` runs any batch up to ``16 g`` (``small``), ``R64`` one past
    that (``16 g + 1 <= 64 g``), ``tiled`` one past ``64 g``. The launch counter then says which
    variant really ran (recorded per case).
    """
    programs = -(-hidden // block_h)
    groups = sms // programs
    if groups < 1 or variant not in {f"R{r}" for r in register_rows} | {"tiled"}:
        return None  # too many programs, or no such variant for this configuration
    lo, hi = min(register_rows), max(register_rows)
    if variant == f"R{lo}":
        return min(small, lo * groups)
    if variant == f"R{hi}":
        return lo * groups + 1
    if variant == "tiled":
        return hi * groups + 1
    raise ValueError(f"unknown cooperative variant {variant!r}")


def _pairs(values: tuple) -> set:
    return {((i, a), (j, b)) for (i, a), (j, b) in itertools.combinations(enumerate(values), 2)}


def covering_order(cases: list, axes, strength: int = 2, cost=lambda case: 0) -> tuple[list, int]:
    """``cases`` reordered greedily so that each next case covers the most not-yet-covered
    pairs (``strength`` 2) or single values (1) of ``axes(case)``, the cheaper one (``cost``)
    among equals; returns the order and how many leading cases cover everything (the quick
    subset)."""
    remaining = list(cases)
    covered: set = set()
    order, prefix = [], None
    units = (lambda v: _pairs(v)) if strength == 2 else (lambda v: set(enumerate(v)))
    keyed = [(c, units(axes(c))) for c in remaining]
    while keyed:
        best = max(range(len(keyed)), key=lambda k: (len(keyed[k][1] - covered), -cost(keyed[k][0])))
        case, u = keyed.pop(best)
        if prefix is None and not (u - covered):
            prefix = len(order)
        covered |= u
        order.append(case)
    return order, (len(order) if prefix is None else prefix)


def _axes(case: CorrCase) -> tuple:
    return (case.kind, case.tier, case.precision, case.layout, case.structure)


def _cost(case: CorrCase) -> int:
    """Rough relative cost: layer-directions x batch rows (the tiled and 64-row cooperative
    variants need the largest batches)."""
    rows = {"cooperative/tiled": 13, "cooperative/R64": 4}.get(case.tier, 1)
    return (4 if case.structure == "L2-bi-h0" else 1) * rows


def correctness_cases(kinds: list[str], precisions: list[str], quick: bool, dry_run: bool) -> list[CorrCase]:
    """The grid kind x tier (each cooperative variant) x precision x layout x structure,
    ordered so that its first cases cover every pair of axis values (every value, in the dry
    run's quick mode); ``quick`` keeps that covering prefix. One anchor shape per tier comes
    after the covering prefix."""
    shape = SMALL_DRY if dry_run else SMALL
    # the dry run cannot run bf16 (Triton's interpreter): left out of what covers the other
    # axes there, one bf16 case stays in the list (reported n/a)
    covering = [p for p in precisions if not (dry_run and p == "bf16")]
    grid = [CorrCase(k, t, p, lay, st, shape)
            for k, t, p, lay, st in itertools.product(kinds, TIER_VARIANTS, covering, LAYOUTS, STRUCTURES)]
    order, prefix = covering_order(grid, _axes, strength=1 if (quick and dry_run) else 2, cost=_cost)
    if len(covering) < len(precisions):
        order.insert(prefix, CorrCase(kinds[0], TIER_VARIANTS[0], "bf16", "padded", STRUCTURES[1], shape))
        prefix += 1
    anchors = anchor_cases(dry_run)
    if quick:
        return order[:prefix] + anchors
    return order[:prefix] + anchors + order[prefix:]


def anchor_cases(dry_run: bool) -> list[CorrCase]:
    """One realistic shape per tier (fp16, one layer, padded, h0 given): the step and the
    cooperative tier at the B=16 T=1024 H=768 anchor, the resident tier at B=64 T=1000 H=128
    (GRU: its fp16 W_hh fits one SM at H=128; LSTM's does not)."""
    big = Shape(1024, 16, 768, 768) if not dry_run else Shape(4, 3, 4, 32)
    mid = Shape(1000, 64, 128, 128) if not dry_run else Shape(4, 3, 4, 32)
    return [
        CorrCase("LSTM", "step", "fp16", "padded", "L1-h0", big, anchor=True),
        CorrCase("GRU", "resident", "fp16", "padded", "L1-h0", mid, anchor=True),
        CorrCase("LSTM", "cooperative/R16", "fp16", "padded", "L1-h0", big, anchor=True),
    ]


# --------------------------------------------------------------------------------------
# Speed: the benchmark suite's CUDA anchor shapes (benchmarks/test_throughput.py)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedCase:
    kind: str
    direction: str  # "fwd" | "fwd+bwd"
    steps: int
    batch: int
    hidden: int
    precision: str
    tier: str = "auto"
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    #: (T, B, H) actually run, when it differs from the named shape (the dry run's tiny one)
    run_shape: tuple | None = None

    @property
    def name(self) -> str:
        n = f"{self.kind}-{self.direction}-T{self.steps}-B{self.batch}-H{self.hidden}"
        if self.layers > 1 or self.bidirectional:
            n += f"-L{self.layers}" + ("-bi" if self.bidirectional else "")
        if self.packed:
            n += "-packed"
        return f"{n}-{self.precision}-{self.tier}"


#: (T, B, H) of the benchmark suite's GPU anchors: NX-AI/flashrnn's H100 benchmark, and
#: cuDNN's persistent-kernel range.
ANCHORS = ((1024, 16, 768), (1000, 64, 128))
SPEED_PRECISIONS = ("fp16", "bf16", "fp32")


def speed_cases(quick: bool, dry_run: bool) -> list[SpeedCase]:
    """The anchors (LSTM and GRU; fp16, bf16, fp32; the ragged packed batch at B=64 T=1000
    H=128; the 2-layer bidirectional LSTM at both anchors), forward and forward+backward;
    ``auto`` for all of them first, then each tier forced. ``quick``: fp16 only, ``auto`` and
    the forced tiers at the B=16 T=1024 H=768 anchor. The dry run keeps the case list but
    runs every case at a tiny shape."""
    base = []
    for precision in SPEED_PRECISIONS:
        for direction in ("fwd+bwd", "fwd"):
            for kind in ("LSTM", "GRU"):
                for steps, batch, hidden in ANCHORS:
                    base.append(SpeedCase(kind, direction, steps, batch, hidden, precision))
                base.append(SpeedCase(kind, direction, 1000, 64, 128, precision, packed=True))
            for steps, batch, hidden in ANCHORS:
                base.append(SpeedCase("LSTM", direction, steps, batch, hidden, precision, layers=2,
                                      bidirectional=True))
    if quick:
        base = [c for c in base if c.precision == "fp16" and not c.packed and c.layers == 1]
    forced = [replace(c, tier=t) for t in TIERS for c in base]
    if quick:
        forced = [c for c in forced if (c.steps, c.batch, c.hidden) == ANCHORS[0] and c.kind == "LSTM"]
    cases = base + forced
    if dry_run:
        cases = [replace(c, run_shape=(3, 2, 32)) for c in cases]
        if quick:  # one auto and one forced case: the code path, not the numbers
            cases = cases[:1] + [c for c in cases if c.tier == "step"][:1]
    return cases
