"""The reader behind :mod:`fastrnn.kernels.ptx`: PTX split into instructions, basic blocks
and a control-flow graph, which threads of a block may run each instruction, paths that
avoid CTA barriers, natural loops. See :mod:`fastrnn.kernels.ptx` for what it is used for
and how the thread sets are computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TYPE_BYTES = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "bf16": 2,
               "b32": 4, "u32": 4, "s32": 4, "f32": 4, "tf32": 4, "b64": 8, "u64": 8, "s64": 8,
               "f64": 8, "b128": 16, "f16x2": 4, "bf16x2": 4}
_NO_DEST = ("st", "red", "bar", "barrier", "bra", "ret", "exit", "trap", "fence", "membar", "cp",
            "prefetch", "stmatrix", "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group", "label",
            "griddepcontrol", "mbarrier.init", "mbarrier.arrive", "mbarrier.expect_tx")
REGISTER = re.compile(r"%[A-Za-z_$][\w$]*(?:\.[xyz])?")
_LABEL = re.compile(r"^\s*([$A-Za-z_][\w$]*)\s*:(?!:)")
_GUARD = re.compile(r"^@(!?)(%[\w$]+)\s+")


@dataclass
class Instr:
    """One PTX instruction (or a ``label`` pseudo-instruction marking a label)."""

    index: int
    opcode: str
    operands: list
    text: str
    guard: str | None = None
    negated: bool = False
    block: int = -1

    def parts(self) -> list:
        return self.opcode.split(".")

    def dests(self) -> list:
        if self.opcode.startswith(_NO_DEST) or not self.operands:
            return []
        return REGISTER.findall(self.operands[0].split("[")[0])


@dataclass
class Kernel:
    """The instructions, blocks and control-flow graph of one ``.entry``."""

    name: str
    instrs: list
    ntid: int
    blocks: list = field(default_factory=list)  # (first, last) instruction indices
    labels: dict = field(default_factory=dict)  # label -> block
    succ: list = field(default_factory=list)  # block -> [(block, guard, truth taken on)]
    defs: dict = field(default_factory=dict)  # register -> [instruction index]

    def successors(self, i: int) -> list:
        b = self.instrs[i].block
        return [i + 1] if i < self.blocks[b][1] else [self.blocks[s][0] for s, _, _ in self.succ[b]]

    def predecessors(self) -> list:
        preds = [[] for _ in self.instrs]
        for i in range(len(self.instrs)):
            for j in self.successors(i):
                preds[j].append(i)
        return preds


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def _split_operands(text: str) -> list:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _statements(body: list) -> list:
    """``("label", name)`` and ``("instr", text)`` items of a function body, in order."""
    items, pending = [], ""
    for line in body:
        line = re.sub(r"//.*", "", line).strip()
        while True:
            m = _LABEL.match(line)
            if not m:
                break
            items.append(("label", m.group(1)))
            line = line[m.end():].strip()
        if not line or (line.startswith(".") and not pending):
            continue  # directives (.reg, .loc, .pragma ...)
        pending += " " + line
        while ";" in pending:
            stmt, pending = pending.split(";", 1)
            stmt = stmt.strip().strip("{}").strip()
            if stmt and not stmt.startswith("."):
                items.append(("instr", stmt))
        pending = pending.strip().strip("{}").strip()
    return items


def parse(ptx: str) -> list:
    """The kernels (``.entry`` functions) of a PTX module, with their control-flow graphs."""
    ptx = re.sub(r"/\*.*?\*/", "", ptx, flags=re.DOTALL)
    lines = ptx.splitlines()
    kernels, i = [], 0
    while i < len(lines):
        m = re.search(r"\.entry\s+([\w$]+)", lines[i])
        if not m:
            i += 1
            continue
        name, ntid = m.group(1), None
        while lines[i].strip() != "{":
            t = re.search(r"\.(?:reqntid|maxntid)\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?", lines[i])
            if t:
                ntid = 1
                for v in t.groups():
                    ntid *= int(v or 1)
            i += 1
        depth, start = 0, i
        while True:
            s = lines[i].strip()
            depth += s == "{"
            depth -= s == "}"
            i += 1
            if depth == 0:
                break
        kernels.append(_build(name, ntid or 1024, _statements(lines[start + 1:i - 1])))
    return kernels


def _build(name: str, ntid: int, items: list) -> Kernel:
    instrs = []
    for kind, text in items:
        if kind == "label":
            instrs.append(Instr(len(instrs), "label", [text], text + ":"))
            continue
        guard, negated = None, False
        g = _GUARD.match(text)
        if g:
            negated, guard, text = g.group(1) == "!", g.group(2), text[g.end():]
        opcode, _, rest = text.partition(" ")
        instrs.append(Instr(len(instrs), opcode.strip(), _split_operands(rest.strip()), text.strip(), guard, negated))
    if not instrs:
        instrs.append(Instr(0, "ret", [], "ret"))
    k = Kernel(name, instrs, ntid)
    start = 0
    for i, ins in enumerate(instrs):
        ends = ins.opcode.split(".")[0] in ("bra", "ret", "exit", "trap")
        if i + 1 == len(instrs) or instrs[i + 1].opcode == "label" or ends:
            k.blocks.append((start, i))
            start = i + 1
    for b, (first, last) in enumerate(k.blocks):
        for j in range(first, last + 1):
            instrs[j].block = b
        if instrs[first].opcode == "label":
            k.labels[instrs[first].operands[0]] = b
    for b, (first, last) in enumerate(k.blocks):
        ins, edges = instrs[last], []
        op = ins.opcode.split(".")[0]
        falls = b + 1 < len(k.blocks)
        if op == "bra":
            edges.append((k.labels[ins.operands[0]], ins.guard, not ins.negated if ins.guard else None))
            if ins.guard and falls:
                edges.append((b + 1, ins.guard, ins.negated))
        elif op in ("ret", "exit", "trap"):
            if ins.guard and falls:
                edges.append((b + 1, ins.guard, ins.negated))
        elif falls:
            edges.append((b + 1, None, None))
        k.succ.append(edges)
    for ins in instrs:
        for r in ins.dests():
            k.defs.setdefault(r, []).append(ins.index)
    return k


# --------------------------------------------------------------------------------------
# Per-thread values and thread sets
# --------------------------------------------------------------------------------------


def immediate(text: str):
    text = text.strip()
    try:
        return int(text, 0) if not re.match(r"^-?0[fFdD]", text) else None
    except ValueError:
        return None


class Threads:
    """Which threads of the block may run each instruction of ``kernel``."""

    def __init__(self, kernel: Kernel):
        self.k, self.n = kernel, kernel.ntid
        self.all = (1 << self.n) - 1
        self._values: dict = {}
        self.block_mask = self._reach()

    def _operand(self, text: str) -> list:
        v = immediate(text)
        if v is not None:
            return [v] * self.n
        return self.value(text) if text.startswith("%") else [None] * self.n

    def value(self, reg: str) -> list:
        """The value of ``reg`` per thread (None: unknown)."""
        if reg in self._values:
            return self._values[reg]
        special = {"%tid.x": list(range(self.n)), "%tid.y": [0] * self.n, "%tid.z": [0] * self.n,
                   "%ntid.x": [self.n] * self.n, "%laneid": [t % 32 for t in range(self.n)]}
        if reg in special:
            return special[reg]
        self._values[reg] = [None] * self.n  # a cycle through reg: unknown
        sites = [self._eval(self.k.instrs[i], reg) for i in self.k.defs.get(reg, [])]
        out = sites[0] if sites else [None] * self.n
        for other in sites[1:]:
            out = [a if a == b else None for a, b in zip(out, other)]
        self._values[reg] = out
        return out

    def _eval(self, ins: Instr, reg: str) -> list:
        parts, ops = ins.parts(), ins.operands
        op, n = parts[0], self.n
        if ins.guard or len(ins.dests()) != 1:
            return [None] * n
        wide = any(p in ("b64", "u64", "s64") for p in parts)
        mask = (1 << (64 if wide else 32)) - 1
        if op == "setp" and "|" not in ops[0] and len(ops) == 3 and len(parts) == 3:
            a, b = self._operand(ops[1]), self._operand(ops[2])
            signed = parts[2].startswith("s")
            bits = 64 if parts[2].endswith("64") else 32

            def sx(x):
                x &= (1 << bits) - 1
                return x - (1 << bits) if signed and x >> (bits - 1) else x

            cmp = {"eq": lambda x, y: x == y, "ne": lambda x, y: x != y, "lt": lambda x, y: x < y,
                   "le": lambda x, y: x <= y, "gt": lambda x, y: x > y, "ge": lambda x, y: x >= y,
                   "lo": lambda x, y: x < y, "ls": lambda x, y: x <= y, "hi": lambda x, y: x > y,
                   "hs": lambda x, y: x >= y}.get(parts[1])
            if cmp is None:
                return [None] * n
            return [None if x is None or y is None else int(cmp(sx(x), sx(y))) for x, y in zip(a, b)]
        srcs = [self._operand(o) for o in ops[1:]]
        if op in ("mov", "cvt") and len(srcs) == 1:
            return [None if x is None else x & mask for x in srcs[0]]
        if op == "not" and len(srcs) == 1:
            pred = "pred" in parts
            return [None if x is None else (int(not x) if pred else ~x & mask) for x in srcs[0]]
        if op == "selp" and len(srcs) == 3:
            return [None if c is None else (x if c else y) for x, y, c in zip(*srcs)]
        if op == "bfe" and len(srcs) == 3:
            return [None if None in (x, s, w) else (x >> s) & ((1 << w) - 1) for x, s, w in zip(*srcs)]
        binary = {"and": lambda x, y: x & y, "or": lambda x, y: x | y, "xor": lambda x, y: x ^ y,
                  "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
                  "shl": lambda x, y: x << y, "shr": lambda x, y: x >> y,
                  "rem": lambda x, y: x % y if y else None, "div": lambda x, y: x // y if y else None,
                  "min": min, "max": max}
        if op in binary and len(srcs) == 2 and not (op == "mul" and "wide" in parts) and not \
                any(p.startswith(("s", "f")) and p[1:].isdigit() for p in parts[1:] if op in ("shr", "div", "rem")):
            f, out = binary[op], []
            for x, y in zip(*srcs):
                if x is not None and y is not None:
                    r = f(x, y)
                    out.append(None if r is None else r & mask)
                elif op == "and" and 0 in (x, y):
                    out.append(0)
                elif op == "or" and "pred" in parts and 1 in (x, y):
                    out.append(1)
                elif op == "mul" and 0 in (x, y):
                    out.append(0)
                else:
                    out.append(None)
            return out
        return [None] * n

    def may_be(self, reg: str, truth: bool) -> int:
        """Bit mask of the threads where predicate ``reg`` may be ``truth``."""
        bits = 0
        for t, v in enumerate(self.value(reg)):
            if v is None or bool(v) == truth:
                bits |= 1 << t
        return bits

    def _reach(self) -> list:
        k = self.k
        masks = [0] * len(k.blocks)
        masks[0] = self.all
        work = [0]
        while work:
            b = work.pop()
            for s, guard, truth in k.succ[b]:
                m = masks[b] & (self.may_be(guard, truth) if guard else self.all)
                if m & ~masks[s]:
                    masks[s] |= m
                    work.append(s)
        return masks

    def of(self, ins: Instr) -> int:
        """Bit mask of the threads that may run ``ins``."""
        m = self.block_mask[ins.block]
        return m & self.may_be(ins.guard, not ins.negated) if ins.guard else m


# --------------------------------------------------------------------------------------
# Instruction classes
# --------------------------------------------------------------------------------------


def is_barrier(ins: Instr) -> bool:
    """A CTA-wide barrier that waits (not ``bar.arrive``, not a named partial barrier)."""
    p = ins.parts()
    whole = len(ins.operands) <= 1 or (len(ins.operands) == 2 and p[0] == "bar" and p[1] == "red")
    return not ins.guard and whole and (p[:2] in (["bar", "sync"], ["barrier", "sync"], ["bar", "red"])
                                        or p[:3] in (["bar", "cta", "sync"], ["barrier", "cta", "sync"]))


def is_release(ins: Instr) -> bool:
    """A GPU- or system-scope release (or acq_rel) atomic add: a grid barrier's arrival."""
    p = ins.parts()
    return p[0] in ("red", "atom") and ("release" in p or "acq_rel" in p) and ("gpu" in p or "sys" in p) \
        and ("add" in p or "inc" in p)


def in_global_space(ins: Instr) -> bool:
    p = ins.parts()
    return "global" in p or not ({"shared", "local", "param", "const"} & set(p) or any(x.startswith("shared::")
                                                                                         for x in p))


def is_global_store(ins: Instr) -> bool:
    p = ins.parts()
    if p[0] == "st" or p[0] in ("red", "atom"):
        return in_global_space(ins)
    return p[0] == "cp" and "bulk" in p and ins.opcode.find("global.shared") >= 0


def is_global_load(ins: Instr) -> bool:
    p = ins.parts()
    if p[0] == "ld":
        return in_global_space(ins)
    return p[0] == "cp" and ("global" in p or "tensor" in p) and ("shared" in p or any(x.startswith("shared::")
                                                                                      for x in p)) \
        and ins.opcode.find("global.shared") < 0


def is_acquire_fence(ins: Instr) -> bool:
    p = ins.parts()
    return p[0] == "fence" and ("acquire" in p or "acq_rel" in p or "sc" in p) and ("gpu" in p or "sys" in p)


def reads_timer(ins: Instr) -> bool:
    return any("%globaltimer" in o for o in ins.operands)


def address_of(ins: Instr) -> str | None:
    for o in ins.operands:
        if o.startswith("["):
            return re.sub(r"\s+", "", o)
    return None


def width_bytes(ins: Instr) -> int:
    p = ins.parts()
    vec = next((int(x[1:]) for x in p if re.fullmatch(r"v\d+", x)), 1)
    size = next((_TYPE_BYTES[x] for x in reversed(p) if x in _TYPE_BYTES), 0)
    if p[0] == "cp" and len(ins.operands) >= 3 and immediate(ins.operands[2]) is not None:
        return immediate(ins.operands[2])
    return vec * size


# --------------------------------------------------------------------------------------
# Paths, loops
# --------------------------------------------------------------------------------------


def unblocked(k: Kernel, start: int, forward: bool, preds=None) -> list:
    """Instructions reachable from ``start`` (forward, or backward when ``forward`` is
    False) along paths with no CTA-wide barrier, ``start`` excluded (unless on a cycle)."""
    step = k.successors if forward else (lambda i: preds[i])
    seen, work, out = set(), list(step(start)), []
    while work:
        i = work.pop()
        if i in seen:
            continue
        seen.add(i)
        out.append(i)
        if not is_barrier(k.instrs[i]):
            work.extend(step(i))
    return out


def natural_loops(k: Kernel) -> dict:
    """Natural loops: header block -> set of body blocks."""
    n = len(k.blocks)
    reachable, work = {0}, [0]
    while work:
        for s, _, _ in k.succ[work.pop()]:
            if s not in reachable:
                reachable.add(s)
                work.append(s)
    preds = [[] for _ in range(n)]
    for b in reachable:  # unreachable blocks (labels after a branch) are no way in
        for s, _, _ in k.succ[b]:
            preds[s].append(b)
    full = (1 << n) - 1
    dom = [full] * n
    dom[0] = 1
    changed = True
    while changed:
        changed = False
        for b in range(1, n):
            new = full
            for p in preds[b]:
                new &= dom[p]
            new = (new if preds[b] else 0) | (1 << b)
            if new != dom[b]:
                dom[b], changed = new, True
    loops: dict = {}
    for u in reachable:
        for h, _, _ in k.succ[u]:
            if dom[u] >> h & 1:
                body, work = {h, u}, [u]
                while work:
                    x = work.pop()
                    if x == h:
                        continue
                    for p in preds[x]:
                        if p not in body:
                            body.add(p)
                            work.append(p)
                loops.setdefault(h, set()).update(body)
    return loops


def time_loop(k: Kernel) -> tuple:
    """``(header block, body blocks)`` of the time loop: the largest natural loop holding a
    grid-barrier release, else the largest loop (by instruction count); ``(None, set())``
    when the kernel has no loop."""
    loops = list(natural_loops(k).items())

    def size(body):
        return sum(k.blocks[b][1] - k.blocks[b][0] + 1 for b in body)

    with_release = [(h, body) for h, body in loops if any(
        is_release(k.instrs[i]) for b in body for i in range(k.blocks[b][0], k.blocks[b][1] + 1))]
    candidates = with_release or loops
    return max(candidates, key=lambda hb: size(hb[1])) if candidates else (None, set())


