"""Layers the diffusion transformers share: adaLN modulation, gated residuals, the timestep
sinusoid and norms computed in fp32 (Wan 2.1, Kandinsky 5 and the models built on them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` in fp32, returned in x's dtype."""
    return torch.addcmul(shift, x.float(), 1 + scale).type_as(x)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + gate * y`` in fp32, returned in x's dtype."""
    return torch.addcmul(x.float(), y.float(), gate).type_as(x)


def timestep_sinusoid(t: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``[cos(t w_i), sin(t w_i)]`` with ``w_i = base ** (-i / (dim / 2))``; float64."""
    half = dim // 2
    freqs = base ** -(torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (weights too), returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class FP32RMSNorm(nn.RMSNorm):
    """RMSNorm computed in fp32 (weight too), returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, w, self.eps).type_as(x)


