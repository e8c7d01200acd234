"""Sequence packing: several clips of different shapes as one token sequence.

A pack concatenates the tokens of N items (images and clips of any size) into one sequence
of ``L = sum(L_i)`` tokens, and their text tokens into one of ``M = sum(M_i)``. Item ``i``
owns the contiguous *segment* ``[offset_i, offset_i + L_i)`` of the sequence. Packing is exact
(equal to running each item alone) when every per-item computation is kept per segment:

- self-attention with a block-diagonal mask: token ``a`` sees token ``b`` only when both lie
  in the same segment;
- cross-attention with a block mask: an item's tokens see only its own text tokens;
- RoPE positions from each item's own ``T, H, W`` grid, starting at 0;
- modulation per token: every token carries its item's time embedding.

Masks are boolean ``1, 1, L_q, L_kv`` (True = attend), the convention of SDPA's
``attn_mask``. Everything here is pure bookkeeping over ints and index tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.models.rope import rope_cis_3d

Grid = tuple[int, int, int]


def patch_grid(shape: Sequence[int], patch_size: Sequence[int]) -> Grid:
    """Token grid ``(T, H, W) // patch`` of a latent whose last three dims are ``T, H, W``."""
    return tuple(n // p for n, p in zip(shape[-3:], patch_size, strict=True))  # type: ignore[return-value]


def patch_tokens(shape: Sequence[int], patch_size: Sequence[int]) -> int:
    """Number of tokens of a latent ``(C, T, H, W)`` (or ``(T, H, W)``) after patchifying."""
    return math.prod(patch_grid(shape, patch_size))


def segment_ids(lengths: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """The item index of every position of a pack: ``[0] * L_0 + [1] * L_1 + ...`` (long)."""
    counts = torch.tensor(lengths, dtype=torch.long, device=device)
    return torch.arange(len(lengths), device=device).repeat_interleave(counts)


def block_diagonal_mask(
    q_lengths: Sequence[int], kv_lengths: Sequence[int], device: torch.device | None = None
) -> torch.Tensor | None:
    """Boolean ``1, 1, sum(q_lengths), sum(kv_lengths)``: True where query and key belong to
    the same item (segment ``i`` of the queries against segment ``i`` of the keys).

    Returns None for a single item (full attention), so the backend can take its unmasked
    path. Every segment must be non-empty: a query row with no key would give NaN.
    """
    if len(q_lengths) != len(kv_lengths):
        raise ValueError(f"{len(q_lengths)} query segments but {len(kv_lengths)} key segments")
    if min(q_lengths, default=0) < 1 or min(kv_lengths, default=0) < 1:
        raise ValueError(f"segments must be non-empty, got {q_lengths} and {kv_lengths}")
    if len(q_lengths) == 1:
        return None
    same = segment_ids(q_lengths, device)[:, None] == segment_ids(kv_lengths, device)[None, :]
    return same[None, None]


def packed_rope_cis(
    grids: Sequence[Grid],
    axis_dims: tuple[int, int, int],
    theta: float,
    device: torch.device | None = None,
    step: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """RoPE rotations of a pack, ``L, D/2``: each item's own grid from position 0, in order."""
    tables: dict[Grid, torch.Tensor] = {}
    for grid in grids:
        if grid not in tables:
            tables[grid] = rope_cis_3d(grid, axis_dims, theta, device, step)
    return torch.cat([tables[grid] for grid in grids])


def check_pack(
    latents: Sequence[torch.Tensor], t: torch.Tensor, contexts: Sequence[torch.Tensor]
) -> None:
    """Raise CineforgeError unless there are N >= 1 latents ``C, T, H, W``, N contexts
    ``M_i, D`` with ``M_i >= 1``, and t is a scalar or has N elements."""
    n = len(latents)
    if n == 0:
        raise CineforgeError("a pack needs at least one item; pass a non-empty list of latents")
    if len(contexts) != n:
        raise CineforgeError(f"a pack of {n} latents needs {n} contexts, got {len(contexts)}")
    if t.numel() not in (1, n):
        raise CineforgeError(f"t must be a scalar or hold one time per item ({n}), "
                             f"got shape {tuple(t.shape)}")
    for i, (x, ctx) in enumerate(zip(latents, contexts, strict=True)):
        if x.ndim != 4:
            raise CineforgeError(f"packed item {i} must be one latent (C, T, H, W) without a "
                                 f"batch dim, got shape {tuple(x.shape)}")
        if ctx.ndim != 2 or ctx.shape[0] < 1:
            raise CineforgeError(f"packed item {i} needs text tokens (M >= 1, D) without a batch "
                                 f"dim, got shape {tuple(ctx.shape)}; pad empty prompts")
