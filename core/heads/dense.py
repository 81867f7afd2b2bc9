"""sentence-transformers' `Dense` module: a linear projection of the pooled vector + activation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from remora.core.layers.activations import Activation, module_act
from remora.core.layers.uninit import Linear
from remora.core.st_format import read_json
from remora.core.weights import Checkpoint, load_weights


class DenseStep(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, bias: bool, activation: Activation) -> None:
        super().__init__()
        self.linear = Linear(in_features, out_features, bias=bias)
        self.activation = activation

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, in] fp32 -> [B, out] fp32 (kept in fp32 like the pooled vector it follows)."""
        return self.activation(self.linear(pooled))

    @classmethod
    def load(cls, module_dir: Path) -> DenseStep:
        config = read_json(module_dir / "config.json")
        try:
            step = cls(
                int(config["in_features"]),
                int(config["out_features"]),
                bias=bool(config.get("bias", True)),
                activation=module_act(config.get("activation_function")),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"bad Dense module config in {module_dir}: {exc}") from exc
        table = {"linear.weight": "linear.weight"}
        if step.linear.bias is not None:
            table["linear.bias"] = "linear.bias"
        load_weights(step, Checkpoint.from_dir(module_dir), table, where=str(module_dir))
        return step
