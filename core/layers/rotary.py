"""Rotary position embeddings (NeoX layout: the rotated half is the second half of the channels).

Positions come from the packed batch (0-based within each sequence), so no sequence needs padding:
cos/sin are gathered per token from a table grown on demand.
"""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """Rotates the first `rotary_dim` channels of every head; the rest pass through (partial
    rotary, as NomicBERT's rotary_emb_fraction). `scaling_factor` divides positions (linear
    interpolation)."""

    def __init__(self, rotary_dim: int, base: float, *, scaling_factor: float = 1.0) -> None:
        super().__init__()
        if rotary_dim % 2:
            raise ValueError(f"rotary dimension must be even, got {rotary_dim}")
        self.rotary_dim = rotary_dim
        self.base = float(base)
        self.scaling_factor = float(scaling_factor)
        # Computed, never loaded: not part of the checkpoint.
        self._cos: torch.Tensor
        self._sin: torch.Tensor
        self.register_buffer("_cos", torch.empty(0), persistent=False)
        self.register_buffer("_sin", torch.empty(0), persistent=False)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """[rotary_dim / 2] fp32 frequencies; scaled variants (NTK) override this."""
        exponent = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64, device=device).float() / self.rotary_dim
        return 1.0 / (self.base**exponent)

    def _table(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < length or self._cos.device != device:
            size = max(length, 2 * self._cos.shape[0], 512)
            # In fp32 (as transformers computes inv_freq and the angles) whatever the model dtype.
            inv_freq = self.inv_freq(device)  # [rotary_dim / 2]
            positions = torch.arange(size, device=device, dtype=torch.float32) / self.scaling_factor
            angles = torch.outer(positions, inv_freq)  # [size, rotary_dim / 2]
            angles = torch.cat([angles, angles], dim=-1)  # [size, rotary_dim]
            self._cos, self._sin = angles.cos(), angles.sin()
        return self._cos, self._sin

    def _gathered(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, rotary_dim] for these positions. Every layer (and q and k) passes the
        batch's one position tensor, so the gather runs once per forward pass, not 2 x layers."""
        if self._last is not None and self._last[0] is positions:
            return self._last[1], self._last[2]
        cos_table, sin_table = self._table(int(positions.max()) + 1, device)
        cos = cos_table[positions][:, None, :]
        sin = sin_table[positions][:, None, :]
        self._last = (positions, cos, sin)
        return cos, sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, H, D], positions [T] -> [T, H, D] (x's dtype; the rotation runs in fp32)."""
        cos, sin = self._gathered(positions, x.device)

        d = self.rotary_dim
        rot = x[..., :d].float()
        half = d // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = (rot * cos + rotated * sin).to(x.dtype)
        if d == x.shape[-1]:
            return out
        return torch.cat([out, x[..., d:]], dim=-1)
