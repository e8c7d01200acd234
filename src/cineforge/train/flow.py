"""Rectified-flow training math: timestep sampling, the noisy input and the velocity target.

With flow time t in [0, 1] (1 = noise), the training pair for clean latents ``x0`` is

    x_t = (1 - t) * x0 + t * noise,        v = d x_t / d t = noise - x0,

and the model learns ``v`` under an MSE loss; the sampler integrates ``dx/dt = v`` from
t = 1 down to 0. Times come from a logit-normal or uniform draw followed by the same
resolution shift the sampler uses (``cineforge.sampling.shift_time``); shift > 1 moves mass
toward t = 1 (more noise), as larger latents need.
"""

from __future__ import annotations

import torch

from cineforge.sampling.schedules import shift_time


def sample_times(
    n: int, generator: torch.Generator, *, kind: str = "logit_normal", mean: float = 0.0,
    std: float = 1.0, shift: float = 1.0,
) -> torch.Tensor:
    """``n`` flow times in (0, 1), float32: ``sigmoid(mean + std * N(0, 1))`` (logit-normal)
    or ``U(0, 1)``, then ``shift_time(t, shift)``."""
    if kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    elif kind == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"unknown timestep distribution {kind!r}")
    return shift_time(t, shift)


def flow_pair(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, v)`` for clean ``x0`` (B, ...), ``noise`` like it and times ``t`` (B,)."""
    t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise, noise - x0


def caption_keep_mask(n: int, p_drop: float, generator: torch.Generator) -> torch.Tensor:
    """Bool (n,): True keeps an item's caption, False replaces it by the empty prompt's
    states; each item is dropped with probability ``p_drop``, independently."""
    return torch.rand(n, generator=generator) >= p_drop
