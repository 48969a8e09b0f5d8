"""Checks on the TTGIR (Triton GPU IR, ``compiled.asm["ttgir"]``) of a compiled kernel.

:func:`tf32_dot_unrounded` answers, exactly where the PTX cannot: are the fp32 operands of
every TF32 dot rounded by :func:`fastrnn.kernels.precision.tf32_round` first? The TTGIR is
in SSA form and names its shared-memory buffers (``ttg.local_alloc``) and every view of
them (``ttg.memdesc_index`` ...), so an operand can be followed through shared memory to
the values written there, which the PTX (addresses computed at run time) does not allow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LOC = re.compile(r"\s*\bloc\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")
_NAME = re.compile(r"%[\w$.-]+(?:#\d+)?")
_RESULT = re.compile(r"^(%[\w$.-]+)(?::(\d+))?\s*=\s*([\w.]+)(.*)$")
_VIEWS = ("ttg.memdesc_index", "ttg.memdesc_subslice", "ttg.memdesc_trans", "ttg.memdesc_reshape",
          "ttg.memdesc_subview", "ttg.memdesc_reinterpret")
_SAME_VALUES = ("ttg.convert_layout", "tt.trans", "tt.reshape", "tt.broadcast", "tt.expand_dims", "tt.join",
                "tt.split", "tt.cat", "arith.select") + _VIEWS


@dataclass
class _Op:
    name: str
    operands: list
    text: str


@dataclass
class _Frame:
    kind: str  # "for", "while", "if" or "other"
    results: list
    args: list = field(default_factory=list)  # loop-carried block arguments
    inits: list = field(default_factory=list)
    after: list = field(default_factory=list)  # scf.while: the arguments of the "do" region
    in_after: bool = False


class _Graph:
    """Use-def links of a TTGIR module; a value defined in several places (block arguments,
    names reused across regions) has all of them."""

    def __init__(self, text: str):
        self.defs: dict = {}  # name -> [_Op or ("alias", name)]
        self.writes: list = []  # (memdesc name, value name or None for a raw copy)
        self.dots: list = []
        stack: list = []
        for raw in text.splitlines():
            line = _LOC.sub("", raw).strip()
            if not line or line.startswith(("#", "//")):
                continue
            if line.startswith("}"):
                self._close(line, stack)
                continue
            if line.startswith("^bb") and stack and stack[-1].kind == "while":
                frame = stack[-1]
                frame.after = _NAME.findall(line)
                continue
            m = _RESULT.match(line)
            names, op, rest = [], None, line
            if m:
                base, count, op, rest = m.group(1), m.group(2), m.group(3), m.group(4)
                names = [f"{base}#{i}" for i in range(int(count))] if count else [base]
            else:
                op, _, rest = line.partition(" ")
            operands = _NAME.findall(rest.split(" : ")[0] if op not in ("scf.for", "scf.while") else rest)
            if op == "scf.yield" and stack:
                self._yield(stack[-1], operands)
            elif op.startswith("scf.condition") and stack:
                frame = stack[-1]
                values = _NAME.findall(line.split(")", 1)[1].split(" : ")[0])
                for res, v in zip(frame.results, values):
                    self._alias(res, v)
                frame.inits.append(values)  # the "do" region's arguments, bound on '^bb0'
            elif op == "ttg.local_store" and len(operands) >= 2:
                self.writes.append((operands[1], operands[0]))
            elif "copy_global_to_local" in op:
                for o in operands:
                    self.writes.append((o, None))
            if op == "scf.for":
                pairs = re.findall(r"(%[\w$.-]+)\s*=\s*(%[\w$.-]+)", rest.split("iter_args", 1)[-1]) \
                    if "iter_args" in rest else []
                frame = _Frame("for", names, [a for a, _ in pairs], [i for _, i in pairs])
            elif op == "scf.while":
                pairs = re.findall(r"(%[\w$.-]+)\s*=\s*(%[\w$.-]+)", rest.split(")", 1)[0])
                frame = _Frame("while", names, [a for a, _ in pairs], [i for _, i in pairs])
            elif op == "scf.if":
                frame = _Frame("if", names)
            else:
                frame = _Frame("other", names)
            for a, i in zip(frame.args, frame.inits):
                self._alias(a, i)
            if frame.kind == "while":
                frame.inits = []
            if line.endswith("{"):
                stack.append(frame)
            if m and op not in ("scf.for", "scf.while", "scf.if"):
                for n in names:
                    self.defs.setdefault(n, []).append(_Op(op, operands, line))
            if op in ("tt.dot", "ttng.warp_group_dot"):
                self.dots.append(_Op(op, operands, line))

    def _alias(self, name: str, source: str) -> None:
        self.defs.setdefault(name, []).append(("alias", source))

    def _yield(self, frame: _Frame, values: list) -> None:
        if frame.kind in ("for", "if"):
            for res, v in zip(frame.results, values):
                self._alias(res, v)
        if frame.kind == "for" or (frame.kind == "while" and frame.in_after):
            for a, v in zip(frame.args, values):
                self._alias(a, v)

    def _close(self, line: str, stack: list) -> None:
        frame = stack[-1] if stack else None
        if frame is not None and frame.kind == "while" and "do" in line:
            frame.in_after = True
            return
        if frame is not None and "else" in line:
            return
        if frame is not None and frame.kind == "while":
            for values in frame.inits:
                for a, v in zip(frame.after, values):
                    self._alias(a, v)
        if stack:
            stack.pop()


def _is_tf32_f32_dot(op: _Op) -> bool:
    """A dot in TF32 precision whose A operand (the first type of the line) is fp32."""
    first = re.search(r"(?:tensor|memdesc)<[\dx]*x(\w+)", op.text)
    tf32 = re.search(r"inputPrecision = (?:tf32\b|0 : i32)", op.text) is not None
    return tf32 and first is not None and first.group(1) == "f32"


class _Rounded:
    def __init__(self, graph: _Graph):
        self.g = graph
        self._memo: dict = {}

    def value(self, name: str) -> bool:
        if name in self._memo:
            return self._memo[name]
        self._memo[name] = True  # a loop-carried cycle adds no unrounded value by itself
        sites = self.g.defs.get(name, [])
        ok = bool(sites) and all(self._site(s) for s in sites)
        self._memo[name] = ok
        return ok

    def _site(self, site) -> bool:
        if isinstance(site, tuple):
            return self.value(site[1])
        op, ops = site.name, site.operands
        if op == "tt.elementwise_inline_asm":
            return re.search(r"cvt\.rna?(?:\.satfinite)?\.tf32\.f32", site.text) is not None
        if op == "arith.constant":
            return re.search(r"dense<0\.0+e\+00>|= 0\.0+e\+00 ", site.text) is not None
        if op == "ttg.local_alloc" or op == "ttg.local_load" or op in _VIEWS:
            roots = self.roots(site) if op == "ttg.local_alloc" else set().union(*(self.roots_of(o) for o in ops[:1]))
            return bool(roots) and all(self.buffer(r) for r in roots)
        if op in _SAME_VALUES:
            return all(self.value(o) for o in (ops[1:] if op == "arith.select" else ops))
        return False

    def roots(self, site: _Op) -> set:
        return {id(site)}

    def roots_of(self, name: str, seen=None) -> set:
        """The ``ttg.local_alloc`` operations a memory descriptor views."""
        seen = set() if seen is None else seen
        if name in seen:
            return set()
        seen.add(name)
        out = set()
        for site in self.g.defs.get(name, []):
            if isinstance(site, tuple):
                out |= self.roots_of(site[1], seen)
            elif site.name == "ttg.local_alloc":
                out.add(id(site))
            elif site.name in _VIEWS and site.operands:
                out |= self.roots_of(site.operands[0], seen)
        return out

    def buffer(self, root: int) -> bool:
        """Whether every value written into buffer ``root`` (its initial value, local stores,
        asynchronous copies from global memory: never) is rounded."""
        key = ("buffer", root)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = True
        alloc = next(s for sites in self.g.defs.values() for s in sites if id(s) == root)
        sources = list(alloc.operands[:1])
        raw = False
        for memdesc, value in self.g.writes:
            if root in self.roots_of(memdesc):
                if value is None:
                    raw = True
                else:
                    sources.append(value)
        ok = not raw and bool(sources) and all(self.value(v) for v in sources)
        self._memo[key] = ok
        return ok


def tf32_dot_unrounded(ttgir: str) -> list:
    """The TF32 dots of a TTGIR module (``tt.dot ... inputPrecision = tf32`` on fp32, or the
    sm_90 ``ttng.warp_group_dot`` with input precision 0) whose A or B operand may hold fp32
    values not produced by ``cvt.rna.tf32.f32`` (:func:`~fastrnn.kernels.precision.tf32_round`);
    empty when every operand is rounded.

    Followed back: layout conversions, reshapes, broadcasts, ``arith.select`` and the
    memory-descriptor views pass values on; a shared-memory buffer is rounded when its
    initial value and every ``ttg.local_store`` into any view of it are, and never when an
    asynchronous copy from global memory writes it; loop-carried values (``scf.for`` /
    ``scf.while`` / ``scf.if`` results and block arguments) are rounded when every value
    that reaches them is; a zero constant is rounded; anything else (a ``tt.load``,
    arithmetic) is not. Exact operations on rounded values (negation, scaling by a power of
    two) are reported as unrounded.
    """
    graph = _Graph(ttgir)
    rounded, problems = _Rounded(graph), []
    for dot in graph.dots:
        if not _is_tf32_f32_dot(dot):
            continue
        for which, name in zip("AB", dot.operands[:2]):
            if not rounded.value(name):
                problems.append(f"operand {which} ({name}) of `{dot.text.split(' : ')[0]}` is not rounded by "
                                f"cvt.rna.tf32.f32")
    return problems
