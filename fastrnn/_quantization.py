"""``torch.ao.quantization`` and fastrnn modules: they stay in float, and say so.

torch's eager quantization flows (``quantize_dynamic``, ``prepare``/``convert``) look
modules up by exact type (``type(module) in mapping``), so a subclass of ``torch.nn.LSTM``
is neither given a qconfig by the default spec nor swapped for a quantized module: it stays
in float, silently. Converting it would mean editing torch's global mappings and could still
not reach ``quantize_dynamic``'s default spec (a literal dict of ``torch.nn`` types). So
fastrnn warns instead: every flow first assigns ``module.qconfig`` to each module
(``propagate_qconfig_``), and the descriptor below turns that assignment into a warning.
Nothing else in torch reads or writes ``qconfig``.
"""

from __future__ import annotations

import warnings

from ._docs import torch_base

_STORE = "_fastrnn_qconfig"


class QuantizationWarning(UserWarning):
    """A fastrnn module was seen by ``torch.ao.quantization`` and stays in float."""


class _QConfigAttribute:
    """``module.qconfig``: stored like a plain attribute; assigning it warns."""

    def __get__(self, module, owner=None):
        if module is None:
            return self
        try:
            return module.__dict__[_STORE]
        except KeyError:
            raise AttributeError("qconfig") from None

    def __set__(self, module, value):
        warnings.warn(_message(type(module)), QuantizationWarning, stacklevel=2)
        module.__dict__[_STORE] = value

    def __delete__(self, module):
        try:
            del module.__dict__[_STORE]
        except KeyError:
            raise AttributeError("qconfig") from None


def _message(cls: type) -> str:
    from torch.ao.quantization import quantization_mappings as mappings  # only reached inside a quantization flow

    name = cls.__name__
    base = torch_base(cls)
    known = set(mappings.get_default_dynamic_quant_module_mappings()) | set(
        mappings.get_default_static_quant_module_mappings()
    )
    hint = (
        f"To quantize it, load its state_dict into a torch.nn.{name} and quantize that."
        if base in known
        else f"torch.ao.quantization has no quantized torch.nn.{name} either."
    )
    return (
        f"torch.ao.quantization leaves fastrnn.{name} in float: its module mappings match exact "
        f"torch.nn types. {hint}"
    )


def warns_when_quantized(cls: type) -> type:
    """Class decorator: quantization flows that visit an instance warn that it stays in float."""
    setattr(cls, "qconfig", _QConfigAttribute())
    return cls
