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


# --------------------------------------------------------------------------------------
# Loads and dots of the time loop
# --------------------------------------------------------------------------------------

_FOR = re.compile(r"scf\.for\s+%[\w$.-]+\s*=\s*(%[\w$.-]+)\s+to\s+(%[\w$.-]+)\s+step\s+(%[\w$.-]+)")
_CONST_INT = re.compile(r"^(%[\w$.-]+)\s*=\s*arith\.constant\s+(-?\d+)\s*:\s*i\d+")
_PTR_TENSOR = re.compile(r"tensor<((?:\d+x)+)!tt\.ptr<(\w+)>")
_PTR_SCALAR = re.compile(r"!tt\.ptr<(\w+)>")
_SHAPE = re.compile(r"(?:tensor|memdesc)<((?:\d+x)+)(\w+)")
_ELEMENT_BYTES = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2, "i8": 1, "i1": 1}


@dataclass
class Access:
    """A global load (``tt.load`` / ``ttg.async_copy_global_to_local``) or a dot of the time loop."""

    op: str
    amount: int  # bytes per program and execution (loads), or flops (dots: 2*M*N*K)
    trips: tuple  # ((kernel argument, step), ...): enclosing loops inside the time loop, cdiv(arg, step) each
    from_argument: bool  # the pointer derives from the argument asked about (loads)
    text: str


def _elements(dims: str) -> int:
    n = 1
    for d in dims.rstrip("x").split("x"):
        n *= int(d)
    return n


def time_loop_accesses(ttgir: str, argument: str = "w_hh_ptr", whole_kernel: bool = False) -> list:
    """The global loads and dots inside the time loop of a TTGIR module, in order.

    The time loop is the largest outermost ``scf.for`` / ``scf.while`` of the function
    (``whole_kernel``: the whole function is one step, as in a one-launch-per-step kernel;
    no loop is then needed). A load's pointer "derives from" ``%<argument>`` when it is
    computed from it by any chain of operations, loop-carried values included (forward data
    flow, stopped at loads: a loaded value is data, not a pointer). ``trips`` lists the
    loops between the access and the time loop whose bounds read ``0 to %arg step c`` with
    ``%arg`` a kernel argument (e.g. the ``BLOCK_K`` chunks of ``H``); any other nested
    loop (bounds computed at run time) counts once and is listed as ``("?", 1)``.
    """
    lines = [_LOC.sub("", raw).strip() for raw in ttgir.splitlines()]
    args = set()
    for line in lines:
        if line.startswith("tt.func"):
            args |= set(re.findall(r"(%[\w$.-]+):", line))
    constants = {}
    for line in lines:
        m = _CONST_INT.match(line)
        if m:
            constants[m.group(1)] = int(m.group(2))
    tainted = {f"%{argument}"}
    # Forward data flow to a fixed point. Loop-carried values: an init reaches its block
    # argument; scf.yield reaches the results and the (before-region) block arguments;
    # scf.condition reaches the results and the "do" region's block arguments (^bb0).
    for _ in range(8):
        before = len(tainted)
        stack: list = []  # [results, block arguments, condition indices tainted]
        for line in lines:
            if not line or line.startswith(("#", "//", "module", "tt.func")):
                continue
            if line.startswith("}"):
                if stack and not re.search(r"\b(do|else)\b", line):
                    stack.pop()
                continue
            if line.startswith("^bb") and stack:
                for i, name in enumerate(_NAME.findall(line.split(")")[0])):
                    if i in stack[-1][2]:
                        tainted.add(name)
                continue
            m = _RESULT.match(line)
            if m:
                names = [f"{m.group(1)}#{i}" for i in range(int(m.group(2)))] if m.group(2) else [m.group(1)]
                op, rest = m.group(3), m.group(4)
            else:
                names, (op, _, rest) = [], line.partition(" ")
            frame = [names, [], set()]
            if op in ("scf.for", "scf.while"):
                pairs = re.findall(r"(%[\w$.-]+)\s*=\s*(%[\w$.-]+)", rest.split("iter_args", 1)[-1]
                                   if op == "scf.for" else rest.split(")", 1)[0])
                tainted.update(a for a, i in pairs if i in tainted)
                frame[1] = [a for a, _ in pairs]
            elif op == "scf.yield" or op.startswith("scf.condition"):
                used = _NAME.findall(rest.split(" : ")[0])
                if stack:
                    results, block_args, cond = stack[-1]
                    for i, v in enumerate(used):
                        if v in tainted:
                            if i < len(results):
                                tainted.add(results[i])
                            if op == "scf.yield" and i < len(block_args):
                                tainted.add(block_args[i])
                            if op != "scf.yield":
                                cond.add(i)
            elif op != "tt.load" and "copy_global_to_local" not in op and \
                    any(u in tainted for u in _NAME.findall(rest.split(" : ")[0])):
                tainted.update(names)
            if line.endswith("{"):
                stack.append(frame)
        if len(tainted) == before:
            break
    # The accesses, with their loop nesting.
    out, stack, loops, largest = [], [], [], None
    depth_lines: list = []
    for index, line in enumerate(lines):
        if not line:
            continue
        if line.startswith("}"):
            if stack and not re.search(r"\b(do|else)\b", line):
                kind, start = stack.pop()
                if kind in ("scf.for", "scf.while") and not any(k in ("scf.for", "scf.while") for k, _ in stack):
                    if largest is None or index - start > largest[1] - largest[0]:
                        largest = (start, index)
            continue
        m = _RESULT.match(line)
        op = m.group(3) if m else line.partition(" ")[0]
        if line.endswith("{"):
            stack.append((op, index))
        depth_lines.append((index, line, op, [s for s in stack if s[0] in ("scf.for", "scf.while")]))
    for index, line, op, enclosing in depth_lines:
        in_loop = whole_kernel or (largest is not None and largest[0] < index < largest[1])
        if not in_loop:
            continue
        is_load = op == "tt.load" or "copy_global_to_local" in op
        is_dot = op in ("tt.dot", "ttng.warp_group_dot", "ttng.tc_gen5_mma")
        if not (is_load or is_dot):
            continue
        trips = []
        for kind, start in enclosing:
            if largest is not None and start == largest[0] and not whole_kernel:
                continue
            f = _FOR.search(lines[start])
            if kind == "scf.for" and f and constants.get(f.group(1)) == 0 and f.group(2) in args \
                    and f.group(3) in constants:
                trips.append((f.group(2)[1:], constants[f.group(3)]))
            else:
                trips.append(("?", 1))
        if is_load:
            body = line.split("=", 1)[-1]
            operands = _NAME.findall(body.split(" : ")[0])
            types = body.split(" : ", 1)[-1] if " : " in body else ""
            t = _PTR_TENSOR.search(types)
            s = _PTR_SCALAR.search(types)
            amount = (_elements(t.group(1)) * _ELEMENT_BYTES.get(t.group(2), 4) if t else
                      _ELEMENT_BYTES.get(s.group(1), 4) if s else 0)
            derived = bool(operands) and operands[0] in tainted
            out.append(Access("load", amount, tuple(trips), derived, line))
        else:
            shapes = _SHAPE.findall(line.split(" : ", 1)[-1])
            amount = 0
            if len(shapes) >= 2:
                (a, _), (b, _) = shapes[0], shapes[1]
                m_, k = (int(x) for x in a.rstrip("x").split("x")[-2:])
                n = int(b.rstrip("x").split("x")[-1])
                amount = 2 * m_ * n * k
            out.append(Access("dot", amount, tuple(trips), False, line))
    return out


def per_step(accesses: list, values: dict | None = None) -> dict:
    """Totals of :func:`time_loop_accesses` for one time step: ``load_bytes``,
    ``w_bytes`` (the loads from the argument asked about), ``dot_flops``. ``values`` maps
    kernel arguments to their values (e.g. ``{"H": 768}``) to count each nested loop's
    trips; without them (or for loops with run-time bounds) every loop counts once."""
    values = values or {}
    totals = {"load_bytes": 0, "w_bytes": 0, "dot_flops": 0}
    for a in accesses:
        times = 1
        for arg, step in a.trips:
            if arg in values:
                times *= -(-values[arg] // step)
        if a.op == "load":
            totals["load_bytes"] += a.amount * times
            totals["w_bytes"] += a.amount * times if a.from_argument else 0
        else:
            totals["dot_flops"] += a.amount * times
    return totals


_BLOCKED = re.compile(r"^(#[\w$.-]+)\s*=\s*#ttg\.blocked<\{sizePerThread = \[([\d, ]+)\], "
                      r"threadsPerWarp = \[([\d, ]+)\], warpsPerCTA = \[([\d, ]+)\]")
_LOAD_TYPE = re.compile(r"=\s*tt\.load\s[^:]*:\s*(?:tensor<((?:\d+x)+)!tt\.ptr<(\w+)>,\s*"
                        r"(#[\w$.-]+|#ttg\.slice<\{dim = (\d+), parent = (#[\w$.-]+)\}>)>|!tt\.ptr<(\w+)>)")


def _per_thread(shape: list, blocked: tuple, sliced: int | None) -> int:
    """Elements of a ``shape`` tensor each thread holds in a blocked layout (its copies of a
    broadcast dimension counted once); ``sliced``: the parent dimension a slice layout drops."""
    size, lanes, warps = blocked
    dims = [d for d in range(len(size)) if d != sliced]
    n = 1
    for extent, d in zip(shape, dims):
        tile = size[d] * lanes[d] * warps[d]
        n *= size[d] * (extent // tile) if extent >= tile else min(size[d], extent)
    return n


def two_byte_loads(ttgir: str) -> int:
    """Number of global ``tt.load`` ops whose every thread loads exactly two bytes: one
    16-bit element per thread (a ``16 x 16`` tile over 256 threads, a scalar), or two 8-bit
    ones. Each compiles to at most one 2-byte load per thread, however aligned its rows are:
    nothing wider exists for it. Loads in layouts other than blocked ones (and slices of
    them) are not counted."""
    layouts = {}
    for raw in ttgir.splitlines():
        m = _BLOCKED.match(raw.strip())
        if m:
            layouts[m.group(1)] = tuple([int(v) for v in g.split(",")] for g in m.groups()[1:])
    count = 0
    for raw in ttgir.splitlines():
        m = _LOAD_TYPE.search(_LOC.sub("", raw))
        if m is None:
            continue
        dims, element, layout, sliced, parent, scalar = m.groups()
        if scalar is not None:
            count += _ELEMENT_BYTES.get(scalar) == 2
            continue
        blocked = layouts.get(parent if sliced is not None else layout)
        if blocked is None or element not in _ELEMENT_BYTES:
            continue
        shape = [int(d) for d in dims.rstrip("x").split("x")]
        per_thread = _per_thread(shape, blocked, None if sliced is None else int(sliced))
        count += per_thread * _ELEMENT_BYTES[element] == 2
    return count


_MMA = re.compile(r"^(#[\w$.-]+)\s*=\s*#ttg\.nvidia_mma<\{versionMajor = (\d+),.*?warpsPerCTA = \[([\d, ]+)\]"
                  r".*?instrShape = \[([\d, ]+)\]")
_DOT_RESULT = re.compile(r"=\s*(?:tt\.dot|ttng\.warp_group_dot)\s.*->\s*tensor<((?:\d+x)+)\w+,\s*(#[\w$.-]+)>")


def repeated_dots(ttgir: str) -> list:
    """``(factor, line)`` for each dot whose warps repeat each other's work. A warp of an
    ``nvidia_mma`` layout owns ``instrShape[d]`` of each dimension ``d`` per instruction (16
    rows and 8 columns for ``mma.sync``, one batch index more for a batched dot; for
    ``wgmma`` a quarter of the warpgroup's 64 rows), so a result with ``warpsPerCTA = w`` is
    computed ``prod(ceil(instrShape[d] * w[d] / shape[d]))`` times over when a tile is
    smaller than the warps laid over it (a ``16 x 16`` tile over ``[4, 1]`` warps: every warp
    computes the same rows, 4 times the work). A blocked layout (an FMA dot) covers
    ``sizePerThread * threadsPerWarp * warpsPerCTA`` per dimension, and a result smaller than
    that is held by several threads at once. The cell math that follows a dot runs in its
    layout, so it repeats with it."""
    layouts = {}
    for raw in ttgir.splitlines():
        line = raw.strip()
        m = _MMA.match(line)
        if m:
            warps = [int(v) for v in m.group(3).split(",")]
            instr = [int(v) for v in m.group(4).split(",")]
            layouts[m.group(1)] = [i * w for i, w in zip(instr, warps)]
            continue
        m = _BLOCKED.match(line)
        if m:
            size, lanes, warps = ([int(v) for v in g.split(",")] for g in m.groups()[1:])
            layouts[m.group(1)] = [s * t * w for s, t, w in zip(size, lanes, warps)]
    out = []
    for raw in ttgir.splitlines():
        line = _LOC.sub("", raw).strip()
        m = _DOT_RESULT.search(line)
        if m is None or m.group(2) not in layouts:
            continue
        shape = [int(d) for d in m.group(1).rstrip("x").split("x")]
        factor = 1
        for extent, cover in zip(shape, layouts[m.group(2)]):
            factor *= -(-cover // extent)
        if factor > 1:
            out.append((factor, line))
    return out
