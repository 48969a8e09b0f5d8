"""A small reader of the PTX that Triton compiles, for facts the compile report checks.

Each kernel (``.entry``) of a PTX module is split into instructions (a guard ``@%p`` /
``@!%p``, an opcode, operands) and basic blocks (a block starts at a label and ends after a
branch, ``ret``, ``exit`` or ``trap``), which give the control-flow graph. On it:

- :func:`barrier_problems` checks the cooperative grid barrier by control flow
  (:func:`fastrnn.kernels.cooperative.grid_barrier`: ``bar.sync``, one thread's
  GPU-scope release add, one thread's ``%globaltimer``-bounded poll, a GPU-scope acquire
  fence, ``bar.sync``);
- :func:`static_profile` counts global memory instructions by width, MMAs, ``bar.sync`` and
  barrier releases inside and outside the time loop;
- :func:`scalar_16bit_global_loads` and :func:`tf32_mma_unrounded` find two known slow or
  inexact patterns (for TF32 operands kept in shared memory across a loop,
  :func:`fastrnn.kernels.ttgir.tf32_dot_unrounded` is exact where this one is not).

The reader itself (parsing, thread sets, paths, loops) is :mod:`fastrnn.kernels.ptx_reader`.

Which threads run an instruction. The values of registers computed from ``%tid.x`` (and
constants) are evaluated for every thread of the block (``.reqntid``; 1-D blocks, as Triton
launches them: ``%tid.y`` and ``%tid.z`` are 0), with unknown values for everything else
(kernel arguments, loads, loop-carried registers, registers written in more than one place
with different values). A branch edge is taken by the threads whose guard may be true (or
false, for the fall-through), and a block is reached by the union over its incoming
edges, iterated to a fixed point. An instruction runs on at most the threads that reach its
block and whose guard may be true. This follows ``setp.eq %p, %r, 0`` with
``%r = (%tid.x & 31) | (%tid.x >> 5)``, ``and.pred`` with program-uniform conditions, and
branches around a poll loop; it is sound as long as the evaluated operations are (an
operation it does not know gives "unknown", which only widens the thread sets).

Paths. "Every path from A to B passes a ``bar.sync``" is checked on the instruction graph:
B is not reachable from A once the CTA-wide barriers (``bar.sync`` / ``barrier.sync`` /
``bar.red`` without a thread count) are removed. Divergent barriers (a ``bar.sync`` inside
a branch only some threads take) are not detected.
"""

from __future__ import annotations

import re
from collections import Counter

from .ptx_reader import (REGISTER, Instr, Kernel, Threads, address_of, immediate, in_global_space, is_acquire_fence,
                         is_barrier, is_global_load, is_global_store, is_release, natural_loops, parse, reads_timer,
                         time_loop, unblocked, width_bytes)

__all__ = ["barrier_problems", "static_profile", "format_profile", "scalar_16bit_global_loads", "tf32_mma_unrounded",
           "parse", "Threads", "Kernel", "Instr", "time_loop"]


# --------------------------------------------------------------------------------------
# The grid barrier
# --------------------------------------------------------------------------------------


def _short(ins: Instr) -> str:
    guard = f"@{'!' if ins.negated else ''}{ins.guard} " if ins.guard else ""
    return f"`{guard}{ins.text}`"


def barrier_problems(ptx: str) -> list:
    """What is wrong with the grid barrier of each kernel in ``ptx`` (empty: nothing).

    Checked by control flow, per kernel, on the instructions that some thread may run:

    - there is a GPU-scope release atomic add (the arrival), and every path from a global
      store (``st.global``, or a ``red`` / ``atom`` other than a release) to it passes a
      ``bar.sync``: every thread's stores of the step are done before the one release;
    - the release and the poll run on at most one thread; the poll (a global load or atomic
      on the release's address, or an acquire load) sits in a loop that reads
      ``%globaltimer`` (its time limit);
    - there is a GPU-scope acquire (``fence.acquire.gpu`` on sm_90, ``fence.acq_rel.gpu``
      on sm_80, or an acquire load), and every path from it to a global load
      (``ld.global``, ``cp.async`` from global memory) passes a ``bar.sync``: no thread
      reads other programs' data before the polling thread has seen them arrive.

    A kernel with no release is reported as such (this is a check of barrier kernels).
    """
    problems = []
    for k in parse(ptx):
        problems += [f"{k.name}: {p}" for p in _kernel_barrier_problems(k)]
    return problems


def _kernel_barrier_problems(k: Kernel) -> list:
    threads = Threads(k)
    live = [ins for ins in k.instrs if threads.of(ins)]
    releases = [ins for ins in live if is_release(ins)]
    if not releases:
        return ["no grid-barrier release (a gpu-scope release atomic add)"]
    problems, preds = [], k.predecessors()
    addresses = {address_of(r) for r in releases}
    for r in releases:
        stores = [k.instrs[i] for i in unblocked(k, r.index, False, preds)
                  if is_global_store(k.instrs[i]) and not is_release(k.instrs[i]) and threads.of(k.instrs[i])]
        if stores:
            problems.append(f"global store {_short(stores[0])} reaches the release {_short(r)} with no bar.sync "
                            f"on the way ({len(stores)} such stores)")
        count = threads.of(r).bit_count()
        if count > 1:
            problems.append(f"the release {_short(r)} may run on {count} threads, not one")
    polls = [ins for ins in live if not is_release(ins) and (
        (ins.parts()[0] in ("ld", "atom") and address_of(ins) in addresses)
        or (ins.parts()[0] == "ld" and "acquire" in ins.parts() and in_global_space(ins)))]
    if not polls:
        problems.append("no poll of the barrier counter (a load or atomic on the release's address)")
    loops = natural_loops(k)
    for p in polls:
        count = threads.of(p).bit_count()
        if count > 1:
            problems.append(f"the poll {_short(p)} may run on {count} threads, not one")
        around = [body for body in loops.values() if p.block in body]
        inner = min(around, key=len) if around else set()
        if not any(reads_timer(k.instrs[i]) for b in inner for i in range(k.blocks[b][0], k.blocks[b][1] + 1)):
            problems.append(f"the poll {_short(p)} is not in a loop bounded by %globaltimer")
    acquires = [ins for ins in live if is_acquire_fence(ins) or (ins in polls and "acquire" in ins.parts())]
    if not acquires:
        problems.append("no gpu-scope acquire after the poll (fence.acquire.gpu / fence.acq_rel.gpu / ld.acquire)")
    for a in acquires:
        loads = [k.instrs[i] for i in unblocked(k, a.index, True)
                 if is_global_load(k.instrs[i]) and k.instrs[i] not in polls and threads.of(k.instrs[i])]
        if loads:
            problems.append(f"the acquire {_short(a)} reaches the global load {_short(loads[0])} with no bar.sync "
                            f"on the way ({len(loads)} such loads)")
    return problems


# --------------------------------------------------------------------------------------
# Profiles and patterns
# --------------------------------------------------------------------------------------


def _profile_key(ins: Instr) -> str | None:
    p = ins.parts()
    if is_barrier(ins):
        return "bar.sync"
    if is_release(ins):
        return "release"
    if p[0] == "ld" and in_global_space(ins):
        return f"ld.global.{width_bytes(ins)}B"
    if p[0] == "st" and in_global_space(ins):
        return f"st.global.{width_bytes(ins)}B"
    if p[0] == "cp" and is_global_load(ins):
        return f"cp.async.{width_bytes(ins)}B" if "bulk" not in p else "cp.async.bulk"
    if p[0] == "mma":
        return "mma.sync"
    if ins.opcode.startswith("wgmma.mma_async"):
        return "wgmma"
    if p[0] == "tcgen05" and len(p) > 1 and p[1] == "mma":
        return "tcgen05.mma"
    return None


_MMA_SHAPE = re.compile(r"\.m(\d+)n(\d+)k(\d+)\b")


def _mma_flops(ins: Instr, threads: int) -> int:
    """Floating-point operations of one execution of an MMA instruction by ``threads``
    threads: ``2*m*n*k`` per warp (``mma.sync``) or per warpgroup of 128 threads
    (``wgmma``); 0 where the shape is not in the opcode (``tcgen05.mma`` reads it from a
    descriptor)."""
    m = _MMA_SHAPE.search(ins.opcode)
    if m is None:
        return 0
    group = 128 if ins.opcode.startswith("wgmma") else 32
    return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) * max(1, -(-threads // group))


def static_profile(ptx: str) -> dict:
    """Per kernel: ``{"loop": label of the time loop's header or None, "inside": Counter,
    "outside": Counter}``, counting the instructions some thread may run.

    Keys: ``ld.global.<n>B`` / ``st.global.<n>B`` (``n``: bytes per thread and instruction,
    vector width included), ``cp.async.<n>B`` (asynchronous copies from global memory),
    ``mma.sync``, ``wgmma``, ``tcgen05.mma``, ``bar.sync``, ``release`` (grid-barrier
    arrivals). "inside" is the time loop of :func:`time_loop` (nested loops included).
    Counts are static: an instruction in a loop counts once.

    ``load_bytes`` (``{"inside": n, "outside": n}``): bytes the program's threads load from
    global memory, each load instruction counted once with the threads that may run it
    (vector width included; ``cp.async`` by its copy size); ``mma_flops``: ``2*m*n*k`` of
    each ``mma.sync`` per warp and ``wgmma`` per warpgroup that runs it (work duplicated
    across warps counts each time; ``tcgen05.mma`` carries no shape and counts 0).
    """
    out = {}
    for k in parse(ptx):
        threads, (header, body) = Threads(k), time_loop(k)
        inside, outside = Counter(), Counter()
        amounts = {"inside": Counter(), "outside": Counter()}
        for ins in k.instrs:
            key = _profile_key(ins)
            mask = threads.of(ins) if key else 0
            if not mask:
                continue
            where = "inside" if ins.block in body else "outside"
            (inside if where == "inside" else outside)[key] += 1
            if key.startswith(("ld.global", "cp.async")) and key != "cp.async.bulk":
                per_thread = width_bytes(ins) if key.startswith("ld") else immediate(ins.operands[2]) or 0 \
                    if len(ins.operands) > 2 else 0
                amounts[where]["load_bytes"] += per_thread * mask.bit_count()
            elif key in ("mma.sync", "wgmma"):
                amounts[where]["mma_flops"] += _mma_flops(ins, mask.bit_count())
        label = k.instrs[k.blocks[header][0]] if header is not None else None
        out[k.name] = {"loop": label.operands[0] if label is not None and label.opcode == "label" else None,
                       "inside": inside, "outside": outside,
                       "load_bytes": {w: amounts[w]["load_bytes"] for w in amounts},
                       "mma_flops": {w: amounts[w]["mma_flops"] for w in amounts}}
    return out


def format_profile(profile: dict) -> str:
    """One line per kernel of a :func:`static_profile` result."""
    lines = []
    for name, p in profile.items():
        def fmt(c):
            return " ".join(f"{key}={c[key]}" for key in sorted(c)) or "-"
        lines.append(f"{name}: loop {p['loop']}: inside [{fmt(p['inside'])}] outside [{fmt(p['outside'])}]")
    return "\n".join(lines)


def scalar_16bit_global_loads(ptx: str) -> int:
    """Number of scalar 16-bit global loads (``ld.global*.b16`` / ``.u16`` / ``.s16`` /
    ``.f16`` / ``.bf16``, no vector) in ``ptx``: what a row of fp16/bf16 compiles to when its
    alignment is unknown (a vectorised load moves 8 or 16 bytes per thread)."""
    count = 0
    for k in parse(ptx):
        for ins in k.instrs:
            p = ins.parts()
            if p[0] == "ld" and in_global_space(ins) and not any(re.fullmatch(r"v\d+", x) for x in p) \
                    and p[-1] in ("b16", "u16", "s16", "f16", "bf16"):
                count += 1
    return count


def _is_shared_write(ins: Instr) -> bool:
    p = ins.parts()
    shared = any(x == "shared" or x.startswith("shared::") for x in p)
    if p[0] == "stmatrix":
        return True
    if p[0] == "st" and shared:
        return width_bytes(ins) >= 4 or "v2" in p or "v4" in p  # b8/b16 scalars are no fp32 operand
    return p[0] == "cp" and shared and ins.opcode.find("global.shared") < 0


class _Rounding:
    """Whether registers / shared-memory reads hold values produced by ``cvt.rna.tf32.f32``."""

    def __init__(self, k: Kernel):
        self.k, self.preds = k, k.predecessors()
        self._regs: dict = {}
        self._reads: dict = {}

    def reg(self, reg: str) -> bool:
        if reg in self._regs:
            return self._regs[reg]
        self._regs[reg] = True  # a cycle adds no unrounded value by itself
        sites = self.k.defs.get(reg, [])
        self._regs[reg] = bool(sites) and all(self._site(self.k.instrs[i]) for i in sites)
        return self._regs[reg]

    def _site(self, ins: Instr) -> bool:
        p = ins.parts()
        if p[0] == "cvt" and "tf32" in p and ("rna" in p or "rn" in p):
            return True
        if p[0] in ("mov", "selp"):
            srcs = ins.operands[1:3] if p[0] == "selp" else ins.operands[1:]
            for s in srcs:
                regs = REGISTER.findall(s)
                if regs:
                    if not all(self.reg(r) for r in regs):
                        return False
                else:
                    text = s.strip()
                    v = int(text[2:], 16) if re.match(r"^0[fF][0-9a-fA-F]{8}$", text) else immediate(text)
                    if v is None or v & 0x1FFF:
                        return False
            return True
        if p[0] in ("ld", "ldmatrix") and any(x == "shared" or x.startswith("shared::") for x in p):
            return self.shared(ins.index)
        return False

    def shared(self, reader: int) -> bool:
        """Whether the shared-memory writes nearest before instruction ``reader`` (those
        reaching it through the fewest CTA barriers, counting up to 8) store rounded values."""
        if reader in self._reads:
            return self._reads[reader]
        self._reads[reader] = True
        writes = []
        for budget in range(1, 9):
            seen, work = set(), [(i, 0) for i in self.preds[reader]]
            while work:
                i, n = work.pop()
                ins = self.k.instrs[i]
                n += is_barrier(ins)
                if (i, n) in seen or n > budget:
                    continue
                seen.add((i, n))
                if _is_shared_write(ins):
                    writes.append(ins)
                work.extend((j, n) for j in self.preds[i])
            if writes:
                break
        ok = bool(writes)
        for w in writes:
            if w.parts()[0] == "cp":
                ok = False  # a raw copy of global memory
            elif not all(self.reg(r) for o in w.operands[1:] for r in REGISTER.findall(o)):
                ok = False
        self._reads[reader] = ok
        return ok


def tf32_mma_unrounded(ptx: str) -> list:
    """The TF32 ``mma`` / ``wgmma`` instructions of ``ptx`` whose A or B operand may hold
    fp32 values not produced by ``cvt.rna.tf32.f32`` (i.e. truncated by the tensor core
    instead of rounded to nearest); empty when every operand is rounded.

    Register data flow, backwards from each operand register: ``cvt.rna.tf32.f32`` (or
    ``cvt.rn...tf32``) is rounded; ``mov`` / ``selp`` pass on their sources (an immediate
    counts when its low 13 bits are zero); a register written in several places must be
    rounded at each; a loop-carried cycle adds nothing; a shared-memory read (``ld.shared``,
    ``ldmatrix``, and the shared-memory descriptor operand of ``wgmma``) is rounded when
    the values stored by the shared-memory writes nearest before it (fewest CTA barriers
    in between) are; ``cp.async`` (a raw copy of global memory) is not; anything else
    (arithmetic, global loads) is not.

    Limits: shared memory is matched by barrier distance, not by address, so a write to
    another buffer at the same distance is included (a false report) and a write further
    away is not (a miss); values that pass through global memory are not followed; exact
    operations on rounded values (negation, scaling by a power of two) are reported as
    unrounded. Measured on a loop ``out[t] = W @ h[t]`` with W loaded once before the loop
    (kept in shared memory) and h copied into a pipelined buffer by ``cp.async`` each step:
    both rounded, the W operand is reported (the copy of h is as near); only h rounded, on
    sm_90 (``wgmma``) the unrounded W is missed. Right where an operand is rounded in
    registers or stored to shared memory just before the MMA (a single tile). For
    operands that live in shared memory across a loop use
    :func:`fastrnn.kernels.ttgir.tf32_dot_unrounded`, which follows each buffer exactly.
    """
    problems = []
    for k in parse(ptx):
        rounding = _Rounding(k)
        for ins in k.instrs:
            p = ins.parts()
            if not ((p[0] == "mma" or ins.opcode.startswith("wgmma.mma_async")) and "tf32" in p):
                continue
            for which, operand in zip("AB", ins.operands[1:3]):
                if operand.startswith("{"):
                    ok = all(rounding.reg(r) for r in REGISTER.findall(operand))
                else:  # a wgmma shared-memory matrix descriptor
                    ok = rounding.shared(ins.index)
                if not ok:
                    problems.append(f"{k.name}: operand {which} of {_short(ins)} is not rounded by cvt.rna.tf32.f32")
    return problems
