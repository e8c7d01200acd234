"""Local / global attention (Kandinsky 4.0), as an attention backend.

The visual tokens of a ``T, H, W`` token grid are cut into ``G = gt * gh * gw`` groups
(``groups``: groups per axis) and attention runs inside each group only:

- local: contiguous windows of ``T/gt x H/gh x W/gw`` tokens; with ``gt = 1`` each window is a
  spatial tile over all frames. Group ``(a, b, c)`` holds the tokens
  ``(a T/gt + i, b H/gh + j, c W/gw + k)``;
- global: strided (dilated) groups over the whole grid; group ``(a, b, c)`` holds the tokens
  ``(gt i + a, gh j + b, gw k + c)``.

Inside a group the tokens keep their raster (t, h, w) order; groups are numbered in raster
order of ``(a, b, c)``. Models alternate the two (Kandinsky 4.0: local, then global, in
every pair of blocks), so two blocks connect every token to every other.

Text joins every group: an item's text tokens follow its visual tokens in the sequence,
and their q/k/v are copied into each of the item's groups. A text token's output is taken
from group 0 of its item, as the release does (``split_interleave`` keeps group 0's text
rows): the released weights were trained with exactly that, whereas the mean over groups
would feed the text stream a mixture it never saw. With one group both kinds are dense
attention over ``[visual, text]``.

The backend (``LocalGlobalAttention``, registered as ``"local_global"`` with the release's
HD grouping 1 x 2 x 2; another grouping is another registered instance, e.g.
``register_attention_backend("lg_244", LocalGlobalAttention((2, 4, 4)))``, then
``attention="lg_244"`` in a model config) is grouped only for calls whose ``mask`` is an
``AttentionGroups``:
the kind, each item's token grid and text length. Several items packed into one sequence
(``[visual_0, text_0, visual_1, text_1, ...]``) are grouped item by item. Any other call
(cross-attention, a tensor mask) is plain SDPA. Execution gathers every group into one
batch of ``B * S`` sequences (``S`` = groups of all items; groups of unequal length are
padded and their padding masked), runs SDPA once and gathers the outputs back: the same
FLOPs as the release's varlen flash-attention call, with ``1 / G`` of dense attention's
score work when text is short.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError

Triple = tuple[int, int, int]
KINDS = ("local", "global")


@dataclass(frozen=True)
class AttentionGroups:
    """The grouping of one self-attention call, passed as its ``mask`` to opt in.

    ``kind``: "local" or "global"; ``grids``: each item's visual token grid ``(T, H, W)``;
    ``texts``: each item's text tokens after its visual tokens (default: none). The sequence
    is ``[visual_0, text_0, visual_1, text_1, ...]`` with visual tokens in raster order."""

    kind: str
    grids: tuple[Triple, ...]
    texts: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"AttentionGroups kind must be one of {KINDS}, got {self.kind!r}")
        grids = tuple(tuple(int(n) for n in g) for g in self.grids)
        texts = tuple(int(n) for n in self.texts) or (0,) * len(grids)
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "texts", texts)
        if not grids or any(len(g) != 3 or min(g) < 1 for g in grids):
            raise ValueError(f"grids must be one or more (T, H, W) of positive sizes, got {grids}")
        if len(texts) != len(grids) or min(texts) < 0:
            raise ValueError(f"texts must hold one length >= 0 per grid, got {texts}")

    @property
    def num_tokens(self) -> int:
        return sum(math.prod(g) for g in self.grids) + sum(self.texts)


def grouped_masks(backend: object, grids: list[Triple] | tuple[Triple, ...],
                  texts: tuple[int, ...] = ()) -> tuple[AttentionGroups, ...]:
    """The masks blocks take in turn under ``backend``: (local, global) for a local/global
    backend (block ``i`` uses ``masks[i % 2]``), () for any other backend."""
    if not isinstance(backend, LocalGlobalAttention):
        return ()
    return tuple(AttentionGroups(kind, tuple(grids), texts) for kind in KINDS)


def group_members(grid: Triple, groups: Triple, kind: str) -> torch.Tensor:
    """Long ``(G, T*H*W / G)``: the raster indices of each group's tokens, in raster order
    inside a group, groups in raster order of their (a, b, c) index."""
    if any(n % g for n, g in zip(grid, groups, strict=True)):
        raise CineforgeError(
            f"local/global attention needs the token grid (T, H, W) = {tuple(grid)} divisible "
            f"by the groups {tuple(groups)}; choose a frame count and size whose token grid is "
            "a multiple of them (or use the 'sdpa' attention backend)"
        )
    (T, H, W), (gt, gh, gw) = grid, groups
    raster = torch.arange(T * H * W).reshape(T, H, W)
    if kind == "local":  # (a, i, b, j, c, k): window (a, b, c), offset (i, j, k) inside it
        split = raster.reshape(gt, T // gt, gh, H // gh, gw, W // gw).permute(0, 2, 4, 1, 3, 5)
    else:  # (i, a, j, b, k, c): stride phase (a, b, c), position (i, j, k)
        split = raster.reshape(T // gt, gt, H // gh, gh, W // gw, gw).permute(1, 3, 5, 0, 2, 4)
    return split.reshape(gt * gh * gw, -1)


@dataclass(frozen=True)
class GroupPlan:
    """Index tensors of a grouped call: ``gather`` (S, Lmax) positions of the sequence per
    group sequence (padding points at position 0), ``valid`` (S, Lmax) bool or None when no
    group is padded, ``scatter`` (L,) each token's slot in the flattened (S * Lmax) output."""

    gather: torch.Tensor
    valid: torch.Tensor | None
    scatter: torch.Tensor


@functools.lru_cache(maxsize=32)
def group_plan(groups: Triple, mask: AttentionGroups, device: torch.device) -> GroupPlan:
    """The ``GroupPlan`` of ``mask`` under ``groups`` (cached per grid, kind and device)."""
    rows: list[torch.Tensor] = []
    scatter = torch.empty(mask.num_tokens, dtype=torch.long)
    offset = 0
    for grid, text in zip(mask.grids, mask.texts, strict=True):
        members = group_members(grid, groups, mask.kind) + offset
        text_pos = torch.arange(text) + offset + math.prod(grid)
        for g, visual in enumerate(members):
            rows.append(torch.cat([visual, text_pos]))
            scatter[visual] = -len(rows)  # -(1 + the group sequence giving the output)
            if g == 0:  # text: group 0's output, as the release
                scatter[text_pos] = -len(rows)
        offset += math.prod(grid) + text
    longest = max(len(r) for r in rows)
    gather = torch.zeros(len(rows), longest, dtype=torch.long)
    valid = torch.zeros(len(rows), longest, dtype=torch.bool)
    slot = torch.empty(mask.num_tokens, dtype=torch.long)
    for s, r in enumerate(rows):
        gather[s, : len(r)] = r
        valid[s, : len(r)] = True
        own = scatter[r] == -(s + 1)  # tokens whose output this group sequence gives
        slot[r[own]] = s * longest + torch.nonzero(own).squeeze(1)
    return GroupPlan(gather.to(device), None if valid.all() else valid.to(device), slot.to(device))


@dataclass(frozen=True)
class LocalGlobalAttention:
    """Local / global attention settings, and the backend itself (``backend(q, k, v, mask)``).

    ``groups``: groups per (t, h, w) axis; the default is the release's HD grouping."""

    groups: Triple = (1, 2, 2)

    def __post_init__(self):
        if len(self.groups) != 3 or min(self.groups) < 1:
            raise ValueError(f"groups must be three positive counts, got {self.groups}")
        object.__setattr__(self, "groups", tuple(int(g) for g in self.groups))

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionGroups | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q, k, v: ``B, heads, L, D``; grouped when ``mask`` is an ``AttentionGroups``."""
        if not isinstance(mask, AttentionGroups):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if q.shape[2] != mask.num_tokens or k.shape[2] != mask.num_tokens:
            raise CineforgeError(
                f"{mask} describes {mask.num_tokens} tokens but q/k have {q.shape[2]}/"
                f"{k.shape[2]}; pass the grids and text lengths of this sequence"
            )
        plan = group_plan(self.groups, mask, q.device)
        b, h = q.shape[:2]
        s, longest = plan.gather.shape

        def gathered(x: torch.Tensor) -> torch.Tensor:  # B, h, L, D -> B * S, h, Lmax, D
            x = x.index_select(2, plan.gather.reshape(-1)).unflatten(2, (s, longest))
            return x.transpose(1, 2).reshape(b * s, h, longest, x.shape[-1])

        attn_mask = None
        if plan.valid is not None:
            attn_mask = plan.valid[:, None, None, :].repeat(b, 1, 1, 1)
        out = F.scaled_dot_product_attention(gathered(q), gathered(k), gathered(v),
                                             attn_mask=attn_mask)
        out = out.reshape(b, s, h, longest, -1).transpose(1, 2).reshape(b, h, s * longest, -1)
        return out.index_select(2, plan.scatter)
