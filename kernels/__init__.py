"""Triton kernels of fastrnn (installed as ``fastrnn.kernels``).

Only ``@triton.jit`` code and its launchers live here; the autograd engine and the
modules sit above, in ``fastrnn``.
"""
