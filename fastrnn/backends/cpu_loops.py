"""The LSTM's reference loops in C++, built at first use (``cpu_loops.cpp`` beside this file).

The reference backend's Python loops dispatch a dozen torch ops per step, 3-5 us each on a
CPU, against about 12 us for a whole step of oneDNN's fused LSTM at T=100, B=1, H=128: an
LSTM with peepholes, resets, zoneout or recurrent dropout ran 3-6x slower than the plain
layer. These loops do the same arithmetic, step by step, as one ATen GEMM plus one pass of
C++ over the step's rows; they take the same inputs, save the same tensors and return the
same results as the Python loops they stand in for (within float rounding: float32 uses a
polynomial ``exp``, about 1 ulp; float64 uses libm):

- the LSTM without ``proj_size`` with resets, zoneout or recurrent dropout
  (:mod:`fastrnn.backends.reference_regularised`'s loop, and the LSTM loop of
  :mod:`fastrnn.backends.reference` with resets): saved ``(gates, c[, the cell's own c])``;
- the peephole LSTM (:mod:`fastrnn.backends.reference_peephole`), with or without resets:
  saved ``(gates, c)``.

They build with torch's C++ extension loader (a C++ compiler and ninja; ``-march=native``,
so the build directory's name carries a hash of this CPU's flags). When the build fails,
the Python loops run and one warning says why. :func:`disabled` runs the Python loops for
a while (the tests compare the two).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings

import torch

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_loops.cpp")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"]
_DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()
_state = {"built": None, "enabled": True}


def _cpu_tag() -> str:
    """A short hash of this CPU's feature flags (the build is ``-march=native``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def _build() -> bool:
    from torch.utils import cpp_extension

    name = f"fastrnn_cpu_loops_{_cpu_tag()}"
    try:
        cpp_extension.load(name=name, sources=[_SOURCE], extra_cflags=_FLAGS, is_python_module=False,
                           verbose=False)
    except Exception as exc:  # a missing compiler or ninja: the Python loops run instead
        warnings.warn(
            f"fastrnn: the C++ CPU loops could not be built ({type(exc).__name__}: {exc}); the LSTM "
            "variants (peepholes, resets, zoneout, recurrent dropout) run the Python loops, several "
            "times slower on small layers.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return hasattr(torch.ops.fastrnn_cpu_loops, "lstm_forward")


def available() -> bool:
    """Whether the C++ loops are built (builds them on the first call; about 30 s once, then
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


def runs(xg) -> bool:
    """Whether a call whose input projection is ``xg`` runs here (CPU, float32 / float64)."""
    return (_state["enabled"] and xg.device.type == "cpu" and xg.dtype in _DTYPES
            and not isinstance(xg, torch._subclasses.FakeTensor) and available())


def _schedule_lists(schedule, reverse):
    return list(schedule.order(reverse)), list(schedule.offsets), list(schedule.batch_sizes)


def _zoneout_args(zoneout):
    if zoneout is None:
        return None, 0.0, None, 0.0
    mask_h = zoneout.mask_h if zoneout.on_h else None
    mask_c = zoneout.mask_c if zoneout.on_c else None
    p_h = float(zoneout.p_h) if zoneout.on_h and mask_h is None else 0.0
    p_c = float(zoneout.p_c) if zoneout.on_c and mask_c is None else 0.0
    return _contig(mask_h), p_h, _contig(mask_c), p_c


def _contig(t, dtype=None):
    if t is None:
        return None
    return (t if dtype is None else t.to(dtype)).contiguous()


def lstm_forward(xg, w_hh, h0, c0, schedule, reverse, save, params=None, resets=None, zoneout=None,
                 recurrent_scale=None):
    """``(y, h_n, c_n, saved)``; ``saved`` is ``(gates, c)`` or, with zoneout of c,
    ``(gates, c, the cell's own c)`` (empty unless ``save``). ``xg`` becomes the gates."""
    from .base import ForwardResult

    order, offsets, sizes = _schedule_lists(schedule, reverse)
    mask_h, p_h, mask_c, p_c = _zoneout_args(zoneout)
    with torch.no_grad():
        y, h_n, c_n, c_seq, cell_c = torch.ops.fastrnn_cpu_loops.lstm_forward(
            xg, w_hh.contiguous(), h0.contiguous(), c0.contiguous(), order, offsets, sizes,
            _contig(params, xg.dtype), _contig(resets), mask_h, p_h, mask_c, p_c,
            _contig(recurrent_scale, xg.dtype), save,
        )
    if not save:
        saved = ()
    else:
        saved = (xg, c_seq, cell_c) if (mask_c is not None or p_c > 0) else (xg, c_seq)
    return ForwardResult(y, h_n, c_n, saved)


def lstm_backward(saved, w_hh, c0, dy, dh_n, dc_n, schedule, reverse, params=None, resets=None, zoneout=None,
                  recurrent_scale=None):
    """The :class:`~fastrnn.backends.base.BackwardResult` of :func:`lstm_forward`'s ``saved``."""
    from .base import BackwardResult

    gates, c_seq, *kept = saved
    order, offsets, sizes = _schedule_lists(schedule, reverse)
    mask_h, p_h, mask_c, p_c = _zoneout_args(zoneout)
    with torch.no_grad():
        dgates, dh0, dc0, dparams = torch.ops.fastrnn_cpu_loops.lstm_backward(
            gates, c_seq, kept[0] if kept else None, c0.contiguous(), w_hh.contiguous(), dy.contiguous(),
            dh_n.contiguous(), dc_n.contiguous(), order, offsets, sizes, _contig(params, gates.dtype),
            _contig(resets), mask_h, p_h, mask_c, p_c, _contig(recurrent_scale, gates.dtype),
        )
    if params is None:
        return BackwardResult(dgates, dgates, dh0, dc0, None)
    return BackwardResult(dgates, dgates, dh0, dc0, None, dparams.to(params.dtype))
