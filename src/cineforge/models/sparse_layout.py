"""Token layout of visual self-attention: raster order, or a sparse backend's tile order.

A DiT patchifies into tokens in (t, h, w) raster order. Dense backends attend in that order.
A NABLA backend (``NablaAttention``, detected by type, not by name) wants every block of
consecutive tokens to be one spatial tile, so the model moves the tokens and the RoPE table
into ``tile_order`` before the blocks, passes the token grid (``NablaGrid``) as the
self-attention mask, and moves the tokens back to raster order before the head:

    layout = self_attention_layout(backend, grid, device)
    tokens, cis = layout.to_attention(tokens), layout.to_attention(cis, dim=0)
    ... blocks: self-attention gets mask=layout.mask ...
    tokens = layout.to_raster(tokens)

The raster layout is the identity (the same tensors, mask None), so dense backends run exactly
as before. A local/global backend (``LocalGlobalAttention``) keeps raster order and gives the
blocks masks in turn, ``layout.mask_of(i)``: local for even blocks, global for odd ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cineforge.models.local_global import AttentionGroups, grouped_masks
from cineforge.models.nabla import NablaAttention, NablaGrid, tile_order

Triple = tuple[int, int, int]


def uses_tile_order(backend: object) -> bool:
    """Whether ``backend`` attends over tile-ordered tokens with a ``NablaGrid`` mask."""
    return isinstance(backend, NablaAttention)


@dataclass(frozen=True)
class SelfAttentionLayout:
    """Permutation into the attention order (``order``; None = raster) and the mask that
    self-attention gets (``mask``: a ``NablaGrid`` in tile order, None in raster order)."""

    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    mask: NablaGrid | None = None
    block_masks: tuple[AttentionGroups, ...] = ()  # taken in turn by the blocks, if any

    def mask_of(self, block: int) -> NablaGrid | AttentionGroups | None:
        """The self-attention mask of block number ``block``."""
        if self.block_masks:
            return self.block_masks[block % len(self.block_masks)]
        return self.mask

    def to_attention(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Raster -> attention order along ``dim`` (1 for B, L, D tokens; 0 for a RoPE table)."""
        return x if self.order is None else x.index_select(dim, self.order)

    def to_raster(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Attention -> raster order along ``dim``."""
        return x if self.inverse is None else x.index_select(dim, self.inverse)


def self_attention_layout(
    backend: object, grid: Triple, device: torch.device
) -> SelfAttentionLayout:
    """The layout ``backend`` needs for a token grid ``grid`` (T, H, W in tokens).

    Raises the ``CineforgeError`` of ``tile_order`` when a NABLA grid is not a multiple of
    the backend's tile."""
    if not uses_tile_order(backend):
        return SelfAttentionLayout(block_masks=grouped_masks(backend, [grid]))
    order = tile_order(*grid, backend.tile)
    return SelfAttentionLayout(
        order=order.to(device), inverse=torch.argsort(order).to(device), mask=NablaGrid(*grid)
    )
