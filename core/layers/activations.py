"""Activation functions by the names configs use (HF `hidden_act`, sentence-transformers modules).

Resolved from this fixed table only: a config never makes Remora import an arbitrary name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


HIDDEN_ACT: dict[str, Activation] = {
    "gelu": F.gelu,  # exact erf GELU, as BERT's checkpoints were trained with
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": _identity,
}

# sentence-transformers stores module activations as dotted torch class paths.
TORCH_MODULE_ACT: dict[str, Activation] = {
    "torch.nn.modules.linear.Identity": _identity,
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
    "torch.nn.modules.activation.ReLU": F.relu,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.SiLU": F.silu,
}


def hidden_act(name: str) -> Activation:
    try:
        return HIDDEN_ACT[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(HIDDEN_ACT)}") from None


def module_act(path: str | None) -> Activation:
    if path is None:
        return _identity
    try:
        return TORCH_MODULE_ACT[path]
    except KeyError:
        raise ValueError(f"unsupported activation {path!r}; supported: {sorted(TORCH_MODULE_ACT)}") from None


