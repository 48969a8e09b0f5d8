"""Docstrings of the drop-in modules: fastrnn's own text, then ``torch.nn``'s documentation.

``help(fastrnn.LSTM)`` should answer what ``help(torch.nn.LSTM)`` answers (arguments,
shapes, equations) and say what fastrnn adds. :func:`with_torch_docs` builds that docstring
once, at class creation, from the class's own docstring, the section below, and the
docstring of the ``torch.nn`` class it subclasses (read from the installed torch, so it
matches the user's version). torch's examples are kept and run with the fastrnn class, so
``doctest`` exercises them (``tests/test_docs.py``). Sphinx ``.. include::`` directives are
dropped: they name files of torch's documentation build and show as noise in ``help()``.
"""

from __future__ import annotations

import inspect
import re

from torch import nn

FASTRNN_SECTION = """\
fastrnn
-------
A subclass of ``torch.nn.{name}``: the constructor arguments, parameter names and shapes,
initialisation, ``state_dict``, ``repr`` and argument checks are torch's own (documented
below). Only ``forward`` differs: it runs fastrnn's engine, one autograd Function per
layer and direction with a handwritten backward.

Extra keyword argument:
    backend: ``"auto"``, ``"reference"``, ``"triton"``, or None (the default: read the
        ``FASTRNN_BACKEND`` environment variable at each call, else ``"auto"``).
        ``"auto"`` runs the Triton kernels on CUDA tensors when triton imports; on the
        CPU, torch's own kernels (``"native"``) or the ``reference`` loops, per call;
        asking for ``"triton"`` where it cannot run raises an error, never a silent
        fallback.

Differences from ``torch.nn.{name}``:
    - an ``hx`` whose dtype differs from the input's is an error (torch.nn silently
      promotes some of these);
    - under CPU autocast fastrnn's GRU, GRUCell and LSTMCell compute in float32 (the output
      dtype is torch.nn's; torch.nn runs their matrix products in bfloat16), and
      fastrnn's LSTM runs in bfloat16 where torch.nn.LSTM fails inside oneDNN;
    - ``torch.ao.quantization`` leaves the module in float and warns (its module mappings
      match exact ``torch.nn`` types); where torch has a quantized ``{name}``, load the
      ``state_dict`` into a ``torch.nn.{name}`` and quantize that.
"""

_INCLUDE = re.compile(r"^\.\. include::.*\n(?:[ \t]+:\S+:.*\n)*\n?", re.MULTILINE)


def torch_base(cls: type) -> type:
    """The ``torch.nn`` class that ``cls`` replaces: its namesake (``fastrnn.LSTM`` ->
    ``torch.nn.LSTM``), whether ``cls`` subclasses it or only ``torch.nn.RNNBase``."""
    base = getattr(nn, cls.__name__, None)
    if not (isinstance(base, type) and issubclass(base, nn.Module)):
        raise TypeError(f"torch.nn has no module named {cls.__name__}")
    return base


def torch_doc_for_fastrnn(base: type) -> str:
    """``base``'s docstring, dedented, without include directives, its examples using fastrnn."""
    text = _INCLUDE.sub("", inspect.cleandoc(base.__doc__ or ""))
    name = base.__name__
    text = text.replace(f">>> rnn = nn.{name}(", f">>> rnn = fastrnn.{name}(")
    return text.replace("Examples::\n\n", "Examples (torch's, run with fastrnn)::\n\n    >>> import torch, fastrnn\n", 1)


def with_torch_docs(cls: type) -> type:
    """Class decorator: the docstring becomes the class's own + the fastrnn section + torch's."""
    base = torch_base(cls)
    own = inspect.cleandoc(cls.__doc__ or "")
    title = f"torch.nn.{base.__name__} (the documentation of the class this one replaces)"
    cls.__doc__ = "\n\n".join(
        [own, FASTRNN_SECTION.format(name=base.__name__), f"{title}\n{'-' * len(title)}", torch_doc_for_fastrnn(base)]
    )
    return cls
