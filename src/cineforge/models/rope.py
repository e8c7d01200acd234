"""Rotary position embeddings (RoPE) over video token grids.

A head of size ``D`` is cut into one part per axis (time, height, width). In each part of
size ``d`` the interleaved pairs ``(x[2i], x[2i+1])`` are read as one complex number and
rotated by ``pos * theta ** (-2i / d)``, where ``pos`` is the token's index along that axis
(times a per-axis step, 1 in the releases).
Angles are computed in float64 from the grid size at call time (no buffers: models are built
on the meta device), then stored as unit complex numbers ``cis`` of shape ``L, D / 2``.

Tokens are ordered time-major, then height, then width, as ``flatten`` of a ``T, H, W`` grid.
"""

from __future__ import annotations

import torch


def wan_rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head into (time, height, width) parts: height = width = 2 * (D // 6)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def rope_cis_3d(
    grid: tuple[int, int, int],
    axis_dims: tuple[int, int, int],
    theta: float = 10000.0,
    device: torch.device | None = None,
    step: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Unit complex rotations for a ``T, H, W`` token grid: complex64, ``T*H*W, sum(dims)/2``.

    Token ``i`` of an axis sits at position ``i * step`` of that axis (the release: step 1,
    integer positions); each axis's float64 angles are computed on its own and broadcast
    over the grid.
    """
    if any(d % 2 for d in axis_dims):
        raise ValueError(f"RoPE axis dims must be even, got {axis_dims}")
    if len(step) != 3 or min(step) <= 0:
        raise ValueError(f"RoPE steps must be 3 positive numbers, got {step}")
    parts = []
    for n, d, s in zip(grid, axis_dims, step, strict=True):
        inv_freq = torch.tensor([theta ** (-i / d) for i in range(0, d, 2)],
                                dtype=torch.float64, device=device)
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device) * s, inv_freq)
        parts.append(torch.polar(torch.ones_like(angles), angles).to(torch.complex64))
    t, h, w = grid
    ct, ch, cw = parts
    return torch.cat(
        [
            ct.view(t, 1, 1, -1).expand(t, h, w, -1),
            ch.view(1, h, 1, -1).expand(t, h, w, -1),
            cw.view(1, 1, w, -1).expand(t, h, w, -1),
        ],
        dim=-1,
    ).reshape(t * h * w, -1)


def apply_rope(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``B, L, H, D``) by ``cis`` (``L, D/2`` complex) in fp32; x's dtype out."""
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    rotated = torch.view_as_real(pairs * cis.unsqueeze(1)).flatten(-2)
    return rotated.to(x.dtype)
