"""The reference backend's loops of torch's cells (with resets, zoneout, recurrent dropout),
the peephole LSTM and the LayerNorm-LSTM / -GRU, in C++ (``cpu_loops.h`` and
``cpu_loops_*.cpp`` beside this file), built at first use.

The reference backend's Python loops dispatch a dozen torch ops per step, 3-5 us each on a
CPU, against about 12 us for a whole step of oneDNN's fused LSTM at T=100, B=1, H=128: with
them an LSTM with peepholes, resets, zoneout or recurrent dropout takes 3-6x the plain
layer's time. These loops do the same arithmetic, step by step, as one GEMM (register-tiled
C++ for products up to 2^17 multiply-adds, MKL's packed product or ATen's GEMM above) plus one
pass of C++ over the step's rows; they take the same inputs, save the same tensors and return
the same results as the Python loops they stand in for (within float rounding: float32 uses a
polynomial ``exp``, about 1 ulp; float64 uses libm). With two threads or more, a call's batch
rows are split into parts, one per thread, that each run the whole time loop for their rows
(a row's state depends only on its own earlier rows), once a part has about 2^20
multiply-adds of work:

- LSTM without ``proj_size``, GRU, RNN (tanh / relu) with resets, zoneout or recurrent
  dropout (:mod:`fastrnn.backends.reference_regularised`'s loops, and those of
  :mod:`fastrnn.backends.reference` with resets). Saved: LSTM ``(gates, c[, the cell's own
  c with zoneout of c])``, GRU ``(gates, W_hn h + b_hn)``, RNN ``(the cell's own h,)`` with
  zoneout, else nothing (the backward reads ``y``);
- the peephole LSTM (:mod:`fastrnn.backends.reference_peephole`), with or without resets:
  saved ``(gates, c)``;
- the plain cells (the loops of :mod:`fastrnn.backends.reference`): LSTM without
  ``proj_size`` (saved ``(gates, c, tanh(c))``; the C++ backward recomputes ``tanh(c)``),
  GRU and RNN as above;
- the LayerNorm-LSTM / -GRU (:mod:`fastrnn.backends.reference_norm`), with or without
  resets: saved ``(gates, r[, c])``; each row's sums in 16 partial sums, added in double.

They build with torch's C++ extension loader (a C++ compiler and ninja; ``-march=native``
and OpenMP, so the extension's name carries a hash of the sources, of the flags and of this
CPU's flags) as a Python module whose functions are called directly (through torch.ops'
schema-driven dispatch a call cost several microseconds more, a tenth of a small layer's
forward). When the build fails, the Python loops run and one warning says why. :func:`disabled` runs the
Python loops for a while (the tests compare the two).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
import warnings

import torch

from ..kinds import CellKind
from .base import BackwardResult, ForwardResult

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_HERE, name)
            for name in ("cpu_loops_lstm.cpp", "cpu_loops_gru_rnn.cpp", "cpu_loops_norm.cpp", "cpu_loops_random.cpp")]
_HEADER = os.path.join(_HERE, "cpu_loops.h")
# 512-bit vectors where the CPU has them (GCC's -march=native otherwise prefers 256-bit ones):
# the LSTM forward at T=100, B=8, H=64 took 18 % less time here. -fopenmp: ATen's
# at::parallel_for is inline in its header, an OpenMP pragma that a build without the flag
# ignores (every part then runs on the caller's thread); the extension's libgomp is the one
# torch has loaded (the same soname). Linux only: Apple's clang has no -fopenmp (there the
# loops run on one thread).
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
_X86 = ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []  # (an x86 option)
_FLAGS = ["-O3", "-march=native", *_X86, "-fno-math-errno", "-fno-trapping-math", *_OPENMP]
_LDFLAGS = [*_OPENMP]
_DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()
_state = {"built": None, "enabled": True, "module": None}


def _tag() -> str:
    """A short hash of the sources (the header too: torch's loader hashes only the ``.cpp``
    files it compiles), of the compiler flags and of this CPU's feature flags (the build is
    ``-march=native``)."""
    digest = hashlib.sha1(" ".join(_FLAGS + _LDFLAGS).encode())
    for path in [*_SOURCES, _HEADER]:
        with open(path, "rb") as f:
            digest.update(f.read())
    try:
        with open("/proc/cpuinfo") as f:
            digest.update(next((line for line in f if line.startswith("flags")), "").encode())
    except OSError:
        pass
    return digest.hexdigest()[:12]


def _build() -> bool:
    from torch.utils import cpp_extension

    try:
        module = cpp_extension.load(name=f"fastrnn_cpu_loops_{_tag()}", sources=_SOURCES, extra_cflags=list(_FLAGS),
                                    extra_ldflags=list(_LDFLAGS), is_python_module=True, verbose=False)
    except Exception as exc:  # a missing compiler or ninja: the Python loops run instead
        warnings.warn(
            f"fastrnn: the C++ CPU loops could not be built ({type(exc).__name__}: {exc}); the reference "
            "backend runs its Python loops on the CPU (several times slower on small layers) and the "
            "regularisers' masks are drawn with torch.rand.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    _state["module"] = module
    return hasattr(module, "lstm_forward")


def available() -> bool:
    """Whether the C++ loops are built (builds them on the first call; about a minute once, then
    cached by torch's extension loader)."""
    built = _state["built"]
    if built is None:
        with _lock:
            if _state["built"] is None:
                _state["built"] = _build()
            built = _state["built"]
    return built


@contextlib.contextmanager
def disabled():
    """Run the Python loops inside the block."""
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before


@contextlib.contextmanager
def unpacked_gemm():
    """Inside the block the per-step GEMMs above the small-product size call ATen's GEMM
    instead of MKL's packed product (the tests compare the two)."""
    before = _built_ops().set_packed_gemm(False)
    try:
        yield
    finally:
        _built_ops().set_packed_gemm(before)


@contextlib.contextmanager
def row_parts(threads: int = 2):
    """Inside the block the loops split every call's batch rows into parts run on ``threads``
    threads (one part per thread, however small the layer; normally only layers with
    enough work per part are split), so that the tests reach the split with small layers."""
    before_threads = torch.get_num_threads()
    before = _built_ops().set_min_part_work(1)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        _built_ops().set_min_part_work(before)


def packed_gemm() -> bool:
    """Whether float32 per-step GEMMs above the small-product size use MKL's packed product
    (torch built with MKL), packing ``W_hh`` once per call."""
    return available() and _state["module"].packed_gemm_available()


def runs(xg) -> bool:
    """Whether a call whose input projection is ``xg`` runs here (CPU, float32 / float64)."""
    return (_state["enabled"] and xg.is_cpu and xg.dtype in _DTYPES
            and (type(xg) is torch.Tensor or not isinstance(xg, torch._subclasses.FakeTensor)) and available())


def _zoneout_args(zoneout):
    if zoneout is None:
        return None, 0.0, None, 0.0
    mask_h = zoneout.mask_h if zoneout.on_h else None
    mask_c = zoneout.mask_c if zoneout.on_c else None
    p_h = float(zoneout.p_h) if zoneout.on_h and mask_h is None else 0.0
    p_c = float(zoneout.p_c) if zoneout.on_c and mask_c is None else 0.0
    return _contig(mask_h), p_h, _contig(mask_c), p_c


_NO_CONTEXT = contextlib.nullcontext()


def _no_grad():
    """``torch.no_grad()`` where grad mode is on (the ops have no autograd kernel); nothing
    to do inside an autograd function, where it is off."""
    return torch.no_grad() if torch.is_grad_enabled() else _NO_CONTEXT


def _contig(t, dtype=None):
    if t is None:
        return None
    return (t if dtype is None or t.dtype == dtype else t.to(dtype)).contiguous()


def lstm_forward(xg, w_hh, h0, c0, schedule, reverse, save, params=None, resets=None, zoneout=None,
                 recurrent_scale=None):
    """``(y, h_n, c_n, saved)``; ``saved`` is ``(gates, c)``, with zoneout of c ``(gates, c,
    the cell's own c)``, for the plain LSTM (none of the extras) ``(gates, c, tanh(c))``
    (empty unless ``save``). ``xg`` becomes the gates."""
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, mask_c, p_c = _zoneout_args(zoneout)
    plain = params is None and resets is None and zoneout is None and recurrent_scale is None
    with _no_grad():
        y, h_n, c_n, c_seq, cell_c, tanh_c = _state["module"].lstm_forward(
            xg, w_hh.contiguous(), h0.contiguous(), c0.contiguous(), order, offsets, sizes,
            _contig(params, xg.dtype), _contig(resets), mask_h, p_h, mask_c, p_c,
            _contig(recurrent_scale, xg.dtype), save, plain,
        )
    if not save:
        saved = ()
    elif plain:
        saved = (xg, c_seq, tanh_c)
    else:
        saved = (xg, c_seq, cell_c) if (mask_c is not None or p_c > 0) else (xg, c_seq)
    return ForwardResult(y, h_n, c_n, saved)


def lstm_backward(saved, w_hh, c0, dy, dh_n, dc_n, schedule, reverse, params=None, resets=None, zoneout=None,
                  recurrent_scale=None):
    """The :class:`~fastrnn.backends.base.BackwardResult` of :func:`lstm_forward`'s ``saved``."""
    gates, c_seq, *kept = saved
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, mask_c, p_c = _zoneout_args(zoneout)
    zoned_c = mask_c is not None or p_c > 0  # (else a third tensor is the plain LSTM's tanh(c))
    with _no_grad():
        dgates, dh0, dc0, dparams = _state["module"].lstm_backward(
            gates, c_seq, kept[0] if zoned_c else None, c0.contiguous(), w_hh.contiguous(), dy.contiguous(),
            dh_n.contiguous(), dc_n.contiguous(), order, offsets, sizes, _contig(params, gates.dtype),
            _contig(resets), mask_h, p_h, mask_c, p_c, _contig(recurrent_scale, gates.dtype),
        )
    if params is None:
        return BackwardResult(dgates, dgates, dh0, dc0, None)
    return BackwardResult(dgates, dgates, dh0, dc0, None, dparams.to(params.dtype))


def gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, resets=None, zoneout=None, recurrent_scale=None):
    """``(y, h_n, None, saved)``; ``saved`` is ``(gates, W_hn h + b_hn)`` (empty unless ``save``)."""
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, _, _ = _zoneout_args(zoneout)
    with _no_grad():
        y, h_n, hn_seq = _state["module"].gru_forward(
            xg, w_hh.contiguous(), _contig(b_hh, xg.dtype), h0.contiguous(), order, offsets, sizes, _contig(resets),
            mask_h, p_h, _contig(recurrent_scale, xg.dtype),
        )
    return ForwardResult(y, h_n, None, (xg, hn_seq) if save else ())


def gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, resets=None, zoneout=None, recurrent_scale=None):
    gates, hn_seq = saved
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, _, _ = _zoneout_args(zoneout)
    with _no_grad():
        dxg, dhg, dh0 = _state["module"].gru_backward(
            gates, hn_seq, h0.contiguous(), w_hh.contiguous(), y.contiguous(), dy.contiguous(), dh_n.contiguous(),
            order, offsets, sizes, _contig(resets), mask_h, p_h, _contig(recurrent_scale, gates.dtype),
        )
    return BackwardResult(dxg, dhg, dh0, None, None)


def rnn_forward(kind, xg, w_hh, h0, schedule, reverse, save, resets=None, zoneout=None, recurrent_scale=None):
    """``(y, h_n, None, saved)``; ``saved`` is the cell's own new h with zoneout (``xg``,
    overwritten), else empty (the backward reads ``y``, which is ``xg`` then)."""
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, _, _ = _zoneout_args(zoneout)
    with _no_grad():
        y, h_n = _state["module"].rnn_forward(
            xg, w_hh.contiguous(), h0.contiguous(), kind is CellKind.RNN_TANH, order, offsets, sizes,
            _contig(resets), mask_h, p_h, _contig(recurrent_scale, xg.dtype),
        )
    zoned = mask_h is not None or p_h > 0
    return ForwardResult(y, h_n, None, (xg,) if save and zoned else ())


def rnn_backward(kind, saved, w_hh, y, dy, dh_n, schedule, reverse, resets=None, zoneout=None, recurrent_scale=None):
    order, offsets, sizes = schedule.step_lists(reverse)
    mask_h, p_h, _, _ = _zoneout_args(zoneout)
    with _no_grad():
        dxg, dh0 = _state["module"].rnn_backward(
            (saved[0] if saved else y).contiguous(), w_hh.contiguous(), kind is CellKind.RNN_TANH, dy.contiguous(),
            dh_n.contiguous(), order, offsets, sizes, _contig(resets), mask_h, p_h,
            _contig(recurrent_scale, dy.dtype),
        )
    return BackwardResult(dxg, dxg, dh0, None, None)


def forward(kind, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params=None, resets=None, zoneout=None,
            recurrent_scale=None):
    """The forward loop of one of torch's cells (or the peephole LSTM: ``params``)."""
    extras = dict(resets=resets, zoneout=zoneout, recurrent_scale=recurrent_scale)
    if kind is CellKind.GRU:
        return gru_forward(xg, w_hh, b_hh, h0, schedule, reverse, save, **extras)
    if kind is CellKind.RNN_TANH or kind is CellKind.RNN_RELU:
        return rnn_forward(kind, xg, w_hh, h0, schedule, reverse, save, **extras)
    return lstm_forward(xg, w_hh, h0, c0, schedule, reverse, save, params, **extras)


def backward(kind, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params=None, resets=None, zoneout=None,
             recurrent_scale=None):
    """The backward loop for :func:`forward`'s ``saved``."""
    extras = dict(resets=resets, zoneout=zoneout, recurrent_scale=recurrent_scale)
    if kind is CellKind.GRU:
        return gru_backward(saved, w_hh, h0, y, dy, dh_n, schedule, reverse, **extras)
    if kind is CellKind.RNN_TANH or kind is CellKind.RNN_RELU:
        return rnn_backward(kind, saved, w_hh, y, dy, dh_n, schedule, reverse, **extras)
    return lstm_backward(saved, w_hh, c0, dy, dh_n, dc_n, schedule, reverse, params, **extras)


def norm_forward(norm, xg, w_hh, b_hh, h0, c0, schedule, reverse, save, params, resets=None):
    """The LayerNorm-LSTM's / -GRU's forward loop (``norm``: ``("lstm" | "gru", eps)``);
    ``saved`` is ``(gates, r)`` plus ``c`` for the LSTM (empty unless ``save``), ``r = h_prev
    W_hh^T + b_hh`` before its LayerNorm."""
    family, eps = norm
    order, offsets, sizes = schedule.step_lists(reverse)
    p = _contig(params, xg.dtype)
    with _no_grad():
        if family == "lstm":
            y, h_n, c_n, c_seq, r_seq = _state["module"].ln_lstm_forward(
                xg, w_hh.contiguous(), _contig(b_hh, xg.dtype), h0.contiguous(), c0.contiguous(), p, order, offsets,
                sizes, _contig(resets), float(eps), save,
            )
            return ForwardResult(y, h_n, c_n, (xg, r_seq, c_seq) if save else ())
        y, h_n, r_seq = _state["module"].ln_gru_forward(
            xg, w_hh.contiguous(), _contig(b_hh, xg.dtype), h0.contiguous(), p, order, offsets, sizes,
            _contig(resets), float(eps), save,
        )
    return ForwardResult(y, h_n, None, (xg, r_seq) if save else ())


def norm_backward(norm, saved, w_hh, h0, c0, y, dy, dh_n, dc_n, schedule, reverse, params, resets=None):
    """The backward loop for :func:`norm_forward`'s ``saved``; the LayerNorm parameters'
    gradients (``dparams``, rows as ``params``) are summed over the rows inside the loop, in
    double."""
    family, eps = norm
    order, offsets, sizes = schedule.step_lists(reverse)
    p = _contig(params, dy.dtype)
    with _no_grad():
        if family == "lstm":
            gates, r_seq, c_seq = saved
            dgates, dr, dh0, dc0, dparams = _state["module"].ln_lstm_backward(
                gates, r_seq, c_seq, c0.contiguous(), w_hh.contiguous(), dy.contiguous(), dh_n.contiguous(),
                dc_n.contiguous(), p, order, offsets, sizes, _contig(resets), float(eps),
            )
            return BackwardResult(dgates, dr, dh0, dc0, None, dparams.to(params.dtype))
        gates, r_seq = saved
        dxg, dr, dh0, dparams = _state["module"].ln_gru_backward(
            gates, r_seq, h0.contiguous(), w_hh.contiguous(), y.contiguous(), dy.contiguous(), dh_n.contiguous(), p,
            order, offsets, sizes, _contig(resets), float(eps),
        )
    return BackwardResult(dxg, dr, dh0, None, None, dparams.to(params.dtype))


def layer_norm_rows_(x, pre_bias, weight, bias, eps: float):
    """``x`` (rows, D) ``= LN(x + pre_bias) * weight + bias`` in place, row by row
    (``pre_bias`` may be None): an input projection's LayerNorm without autograd, with no
    fresh (rows, D) tensor."""
    _built_ops().layer_norm_rows_(x, _contig(pre_bias), _contig(weight), _contig(bias), float(eps))
    return x


def _built_ops():
    """The extension's module, or a clear error where the build failed."""
    if not available():
        raise RuntimeError("fastrnn: the C++ CPU loops are not built (see the warning given when they failed)")
    return _state["module"]


def bernoulli_mask(rows: int, cols: int, p: float, invert: bool = False) -> torch.Tensor:
    """A ``(rows, cols)`` bool mask, True with probability ``p`` (``1 - p`` with ``invert``),
    from a counter-based hash (one vectorised pass) seeded by one draw of torch's default
    CPU generator: ``torch.manual_seed`` reproduces it."""
    return _built_ops().bernoulli_mask(rows, cols, float(p), invert)


def zoneout_masks(rows: int, cols: int, p_h: float, p_c: float) -> tuple:
    """``(mask_h, mask_c)`` in one call, each as :func:`bernoulli_mask` draws it (h first),
    None where its probability is 0."""
    masks = _built_ops().zoneout_masks(rows, cols, float(p_h), float(p_c))
    return masks[0] if p_h else None, masks[1] if p_c else None


def keep_scale(rows: int, cols: int, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A ``(rows, cols)`` dropout scale in ``dtype``: ``1 / (1 - p)`` where a Bernoulli(1 - p)
    draw (:func:`bernoulli_mask` with ``invert``) keeps the entry, 0 elsewhere, in one call."""
    return _built_ops().keep_scale(rows, cols, float(p), dtype)


def drop_connect(w: torch.Tensor, p: float) -> torch.Tensor:
    """``w * keep_scale(*w.shape, p, w.dtype)`` as one autograd node: the mask is drawn and
    applied in one call, and only its seed is kept for the backward, which redraws it. For
    a caller that checked :func:`draws_masks_eagerly` (on a CPU tensor)."""
    return _state["module"].drop_connect(w, p)


def draws_masks_eagerly() -> bool:
    """Whether :func:`bernoulli_mask` draws the regularisers' masks for CPU tensors: eagerly
    (torch.compile / export / func / jit tracing record torch's own draw), whichever loops
    run (:func:`disabled` keeps the masks, so that both loops see the same ones). Cheap: it
    runs at every training call of a regularised layer."""
    return (not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
            and not torch._C._is_tracing() and available())


def draws_masks(device) -> bool:
    """:func:`draws_masks_eagerly` for tensors on ``device``: False off the CPU."""
    return device.type == "cpu" and draws_masks_eagerly()
