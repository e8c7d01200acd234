"""NABLA: Neighborhood Adaptive Block-Level Attention (Kandinsky 5), as an attention backend.

Tokens are reordered so that every block of ``block_size`` consecutive tokens is one compact
spatial tile (``tile_order``; 1x8x8 patches of one frame = 64 tokens, as the release does).
Per head, a block-level map decides which key blocks each query block attends to:

- NABLA (``nabla_block_map``): average q and k over each block, ``softmax(q̄ k̄ᵀ / sqrt(d))``
  per query block, and keep the fewest top key blocks whose mass reaches ``p``;
- STA (``sta_block_map``): the sliding-tile neighbourhood, ``|Δt| <= wt // 2``,
  ``|Δh| <= wh // 2``, ``|Δw| <= ww // 2`` in tile units;

and attention runs only over the union. ``nabla_reference`` is the same attention as dense SDPA
with the expanded boolean token mask: the brute-force oracle and the CPU training path.

The backend (``NablaAttention``, registered as ``"nabla"``) is sparse only for calls whose
``mask`` is a ``NablaGrid`` (the token grid, tokens already in tile order); any other call
(cross-attention, packed block-diagonal masks) is plain SDPA, exactly like ``"sdpa"``.
Sparse execution: ``torch.compile(flex_attention)`` with a ``BlockMask`` of partial blocks,
on CUDA and for gradient-free CPU calls; SDPA with the expanded mask when a CPU call needs
gradients (flex has no CPU backward). Eager flex would ignore the block lists, so it is never
used. Reuse follows the release: the STA map is built once per grid and device (the release
builds it once per generation), the NABLA map is recomputed in every call (every block and
step, as the release does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError

Triple = tuple[int, int, int]


def _tile_grid(T: int, H: int, W: int, tile: Triple) -> Triple:
    """The grid in tile units; raise when a token-grid side is not a multiple of the tile."""
    if any(n % t for n, t in zip((T, H, W), tile, strict=True)):
        raise CineforgeError(
            f"NABLA needs the token grid (T, H, W) = {(T, H, W)} divisible by the tile {tile}; "
            "choose a frame count and resolution whose token grid is a multiple of the tile "
            "(or use the 'sdpa' attention backend)"
        )
    return T // tile[0], H // tile[1], W // tile[2]


def tile_order(T: int, H: int, W: int, tile: Triple = (1, 8, 8)) -> torch.Tensor:
    """Permutation ``perm`` (long, ``T*H*W``) with ``x[:, perm]`` = raster tokens in tile order:
    tiles in (t, h, w) raster order, and inside each tile its tokens in (t, h, w) raster order."""
    nt, nh, nw = _tile_grid(T, H, W, tile)
    raster = torch.arange(T * H * W).reshape(nt, tile[0], nh, tile[1], nw, tile[2])
    return raster.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def tile_order_inverse(T: int, H: int, W: int, tile: Triple = (1, 8, 8)) -> torch.Tensor:
    """Inverse of ``tile_order``: ``y[:, inv]`` puts tile-ordered tokens back in raster order."""
    return torch.argsort(tile_order(T, H, W, tile))


@dataclass(frozen=True)
class NablaGrid:
    """The token grid of a self-attention call (token units, tokens already in tile order).

    Passed as the attention ``mask`` argument to opt the call into block-sparse attention."""

    T: int
    H: int
    W: int

    def __post_init__(self):
        if min(self.T, self.H, self.W) < 1:
            raise ValueError(f"NablaGrid sides must be positive, got {(self.T, self.H, self.W)}")

    @property
    def num_tokens(self) -> int:
        return self.T * self.H * self.W


def nabla_block_map(
    q: torch.Tensor, k: torch.Tensor, threshold_p: float, block: int = 64
) -> torch.Tensor:
    """Bool ``(B, H, nq, nk)``: per query block, the fewest top key blocks with mass >= ``p``.

    Block scores are ``softmax(q̄ k̄ᵀ / sqrt(d))`` over key blocks, from block means computed in
    fp32 (the release computes them in the input dtype, bf16 on GPU). Binarised as the release
    does: sort ascending, cumsum, keep where the cumulative mass is >= 1 - p. That keeps the
    top blocks through the first one where the descending mass reaches p, and with p = 1 keeps
    every block whatever the rounding."""
    B, nh, Lq, d = q.shape
    if Lq % block or k.shape[2] % block:
        raise CineforgeError(
            f"NABLA needs sequence lengths divisible by the block size {block}, "
            f"got {Lq} and {k.shape[2]}"
        )
    qm = q.float().reshape(B, nh, Lq // block, block, d).mean(3)
    km = k.float().reshape(B, nh, -1, block, d).mean(3)
    scores = torch.softmax(qm @ km.transpose(-1, -2) / math.sqrt(d), dim=-1)
    vals, order = scores.sort(dim=-1)
    keep_sorted = vals.cumsum(dim=-1) >= 1.0 - threshold_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


@functools.lru_cache(maxsize=8)
def _sta_cached(T: int, H: int, W: int, window: Triple, device: torch.device) -> torch.Tensor:
    t, h, w = torch.meshgrid(
        *(torch.arange(n, device=device) for n in (T, H, W)), indexing="ij"
    )
    near = torch.ones(T * H * W, T * H * W, dtype=torch.bool, device=device)
    for coord, win in zip((t, h, w), window, strict=True):
        c = coord.reshape(-1)
        near &= (c[:, None] - c[None, :]).abs() <= win // 2
    return near


def sta_block_map(T: int, H: int, W: int, window: Triple) -> torch.Tensor:
    """Bool ``(n, n)``, ``n = T*H*W`` tiles in (t, h, w) raster order: True where the key tile
    lies within ``window // 2`` tiles of the query tile on every axis (the sliding tile)."""
    return _sta_cached(T, H, W, tuple(window), torch.device("cpu")).clone()


def expand_block_map(block_map: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Block map ``(..., nq, nk)`` -> boolean token mask ``(..., nq*block, nk*block)``."""
    return block_map.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)


def nabla_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_map: torch.Tensor, block: int = 64
) -> torch.Tensor:
    """Dense SDPA restricted to the blocks of ``block_map`` (broadcastable to B, H, nq, nk)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=expand_block_map(block_map, block))


_COMPILED_FLEX = None


def _compiled_flex():
    """``torch.compile(flex_attention)``, compiled on first use and kept for the process."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention)
    return _COMPILED_FLEX


def flex_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_map: torch.Tensor, block: int = 64
) -> torch.Tensor:
    """Compiled flex attention over the blocks of ``block_map`` (B|1, H|1, nq, nk).

    Kept blocks are passed as partial blocks with no mask_mod (the same tensor as both partial
    and full lists breaks inductor's CPU code); compiled flex skips every other block."""
    from torch.nn.attention.flex_attention import BlockMask

    B, nh = q.shape[:2]
    block_map = block_map.expand(B, nh, *block_map.shape[-2:])
    num = block_map.sum(-1, dtype=torch.int32)
    idx = torch.argsort(block_map.to(torch.uint8), dim=-1, descending=True, stable=True)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    mask = BlockMask.from_kv_blocks(
        num, idx.to(torch.int32), BLOCK_SIZE=block, mask_mod=None, compute_q_blocks=needs_grad
    )
    return _compiled_flex()(q, k, v, block_mask=mask)


@dataclass(frozen=True)
class NablaAttention:
    """NABLA settings, and the attention backend itself (``backend(q, k, v, mask=...)``).

    ``p``: block-score mass each query block keeps; ``sta_window``: (t, h, w) sliding-tile
    window in tiles, odd sizes, or None for NABLA alone; ``tile``: tokens per block along
    (t, h, w); ``block_size`` = its volume. Defaults: Kandinsky 5 T2V (P 0.9, window 11x3x3)."""

    p: float = 0.9
    sta_window: Triple | None = (11, 3, 3)
    tile: Triple = (1, 8, 8)

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"NABLA p must be in (0, 1], got {self.p}")
        if self.sta_window is not None and (
            len(self.sta_window) != 3 or any(w < 1 or w % 2 == 0 for w in self.sta_window)
        ):
            raise ValueError(f"sta_window must be three odd positive sizes, got {self.sta_window}")
        if len(self.tile) != 3 or min(self.tile) < 1:
            raise ValueError(f"tile must be three positive sizes, got {self.tile}")
        if self.block_size not in (64, 128):
            raise ValueError(
                f"tile {self.tile} holds {self.block_size} tokens; flex attention blocks are "
                "64 or 128 tokens"
            )

    @property
    def block_size(self) -> int:
        return math.prod(self.tile)

    def block_map(self, q: torch.Tensor, k: torch.Tensor, grid: NablaGrid) -> torch.Tensor:
        """Bool (B, H, nq, nk): NABLA map of q, k united with the grid's STA map."""
        if q.shape[2] != grid.num_tokens or k.shape[2] != grid.num_tokens:
            raise CineforgeError(
                f"NABLA grid {grid} has {grid.num_tokens} tokens but q/k have "
                f"{q.shape[2]}/{k.shape[2]}; pass the self-attention token grid"
            )
        tiles = _tile_grid(grid.T, grid.H, grid.W, self.tile)
        bmap = nabla_block_map(q, k, self.p, self.block_size)
        if self.sta_window is not None:
            bmap = bmap | _sta_cached(*tiles, self.sta_window, q.device)
        return bmap

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: NablaGrid | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(mask, NablaGrid):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        bmap = self.block_map(q, k, mask)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if q.is_cuda or not needs_grad:
            return flex_block_sparse(q, k, v, bmap, self.block_size)
        return nabla_reference(q, k, v, bmap, self.block_size)
