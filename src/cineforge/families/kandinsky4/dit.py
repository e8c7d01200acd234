"""Kandinsky 4.0 diffusion transformer (the 480p "Flash" T2V release, ai-forever/Kandinsky-4).

    t (B,) DDPM timesteps 0..999 --[cos, sin] sinusoid (model_dim), Linear, SiLU, Linear--> e
    text (B, M, 4096) T5 states --text_embeddings (Linear)--------------------------------> text
    x (B, C, T, H, W) --patches (pt, ph, pw, C), visual_embeddings (Linear)---------------> visual
    (visual, text) --blocks x N: pairs of (local, global) joint-attention blocks--> visual
                   --head(e): LayerNorm, modulation, Linear--unpatchify (C, pt, ph, pw)--> v

One block, the same equations for each stream, with ``(shift, scale, gate)`` of its own
modulation per stream (``SiLU -> Linear`` of e) and ``LN`` an affine LayerNorm shared by both:

    v, y = v + gate_v * Attn_v, y + gate_y * Attn_y    where (Attn_v, Attn_y) =
           JointAttn(LN(v) * (1 + scale_v) + shift_v, LN(y) * (1 + scale_y) + shift_y)
    v = v + gate_v * FF(LN(v) * (1 + scale_v) + shift_v);  y likewise with its own modulation

Only the modulation is per stream: norms, attention and feed-forward weights are shared by
text and video (not SD3's dual weights). The joint attention projects both streams with one
fused q|k|v Linear, LayerNorms q and k per head (affine, before RoPE), rotates the video's
q/k by 3D RoPE (text gets no position), attends over ``[video, text]`` of each item and
projects both outputs with one Linear. FF = Linear, exact GELU, Linear, with biases.

RoPE: a head is ``sum(axes_dims)`` = 16 | 24 | 24 wide; each part rotates adjacent pairs by
``pos * 10000 ** (-i / (d / 2))`` divided by the axis's ``rope_scale``, positions 0 ..
``rope_max_pos - 1`` (the release's 128-row tables, so a token grid is at most 128 on each
axis); frame positions restart at 0 for every item of a pack.

Attention pattern: block ``.local_block`` of every pair is local, ``.global_block`` global
(``models.local_global``). The release runs them with one group at 480p, where both are dense
attention; that is this model with the ``"sdpa"`` backend. With the ``"local_global"`` backend
(1 x 2 x 2 groups, the release's HD setting, gated off there) the token grid's height and width
must be even.

Packing: ``forward_packed`` runs items of any shapes as one sequence ``[video_0, text_0,
video_1, text_1, ...]`` (the release packs clips of one size by ``cu_seqlens``); attention
stays inside each item, RoPE restarts per item, and each item's tokens are modulated by its
own time: the release's per-frame visual rows (``repeat_interleave`` over frames) and
per-token text rows are the item's row repeated, which is what broadcasting gives here.

Module names follow the release's (``kandinsky/model/dit.py``, ``nn.py``), except the pairs
(``blocks.{i}.local_block|global_block`` for ``transformer_blocks.{i}.0|1``) and the head;
``dit_keys.py`` maps the official checkpoint strictly.

Precision: norms, RoPE and modulation run in fp32; the residual streams keep the parameters'
dtype; the time embedding, modulation and head run with autocast off.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.dit import (
    Modulation,
    PatchEmbedding,
    TimeEmbedding,
    rope_cis_grid,
)
from cineforge.models.attention import AttentionFn, get_attention_backend
from cineforge.models.layers import FP32LayerNorm, gated_residual, modulate
from cineforge.models.local_global import AttentionGroups, grouped_masks
from cineforge.models.nabla import NablaAttention
from cineforge.models.packing import block_diagonal_mask, check_pack
from cineforge.models.rope import apply_rope

Grid = tuple[int, int, int]


@dataclass(frozen=True, kw_only=True)
class Kandinsky4DiTConfig:
    """Release names: in_visual_dim = ``in_channels``, out_visual_dim = ``out_channels``,
    in_text_dim = ``text_dim``, num_blocks = ``num_blocks`` (pairs of blocks)."""

    model_dim: int
    ff_dim: int
    time_dim: int
    num_blocks: int
    axes_dims: tuple[int, int, int] = (16, 24, 24)
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    text_len: int = 224
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_max_pos: int = 128
    rope_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rope_theta: float = 10000.0
    eps: float = 1e-5
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("model_dim", "ff_dim", "time_dim", "num_blocks", "in_channels",
                     "out_channels", "text_dim", "text_len", "rope_max_pos"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Kandinsky4DiTConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if len(self.axes_dims) != 3 or any(d <= 0 or d % 2 for d in self.axes_dims):
            raise ValueError(f"axes_dims must be 3 positive even ints, got {self.axes_dims}")
        if self.model_dim % self.head_dim or self.model_dim % 2:
            raise ValueError(f"model_dim {self.model_dim} must be even and divisible by the "
                             f"head size sum(axes_dims) = {self.head_dim}")
        if len(self.rope_scale) != 3 or min(self.rope_scale) <= 0:
            raise ValueError(f"rope_scale must be 3 positive floats, got {self.rope_scale}")
        if self.eps <= 0 or self.rope_theta <= 0:
            raise ValueError("eps and rope_theta must be positive")

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    @property
    def num_heads(self) -> int:
        return self.model_dim // self.head_dim

    @property
    def max_token_grid(self) -> Grid:
        """The largest (frames, rows, columns) token grid: the RoPE tables' length."""
        return (self.rope_max_pos,) * 3


# The release (kandinsky/__init__.py, get_default_conf): 21 pairs, 48 heads of 64, 5.57B.
KANDINSKY4_DIT = Kandinsky4DiTConfig(model_dim=3072, ff_dim=12288, time_dim=512, num_blocks=21)
# Tiny: 2 heads of 32 (axes 8 | 12 | 12), 2 pairs; runs in milliseconds (tests, CI).
KANDINSKY4_DIT_TINY = Kandinsky4DiTConfig(
    model_dim=64, ff_dim=128, time_dim=32, num_blocks=2, axes_dims=(8, 12, 12), text_dim=32,
    text_len=16,
)


@dataclass(frozen=True)
class JointSequence:
    """How the items of a call lie in the joint sequence: each item's visual token grid and
    text length; ``packed``: the items are laid end to end in one row ``[video_0, text_0,
    video_1, ...]``, else each of the B rows is one item of ``grids[0]``, ``texts[0]``."""

    grids: tuple[Grid, ...]
    texts: tuple[int, ...]
    packed: bool = False

    @property
    def visual_lengths(self) -> list[int]:
        return [math.prod(g) for g in self.grids]

    def rows(self, params: tuple[torch.Tensor, ...], lengths: list[int]) -> tuple:
        """Per-item modulation vectors (N, 1, dim) made to fit a stream's tokens: as they
        are for B rows of one item each (broadcast), repeated per token in a pack."""
        if not self.packed:
            return params
        counts = torch.tensor(lengths, device=params[0].device)
        return tuple(p[:, 0].repeat_interleave(counts, dim=0)[None] for p in params)

    def join(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) video and (B, M, ...) text -> the joint sequence along dim 1."""
        joint = torch.cat([visual, text], dim=1)
        if not self.packed:
            return joint
        return joint.index_select(1, self._order.to(joint.device))

    def split(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of ``join``."""
        if self.packed:
            joint = joint.index_select(1, torch.argsort(self._order).to(joint.device))
        return joint.split([sum(self.visual_lengths), sum(self.texts)], dim=1)

    @functools.cached_property
    def _order(self) -> torch.Tensor:
        """Positions in ``cat([video_0..N, text_0..N])`` of the interleaved joint sequence."""
        total, parts, v_at, y_at = sum(self.visual_lengths), [], 0, 0
        for length, text in zip(self.visual_lengths, self.texts, strict=True):
            parts += [torch.arange(v_at, v_at + length), torch.arange(y_at, y_at + text) + total]
            v_at, y_at = v_at + length, y_at + text
        return torch.cat(parts)

    def masks(self, backend: AttentionFn, device: torch.device) -> tuple:
        """Self-attention masks of the local and the global block of a pair."""
        grouped = grouped_masks(backend, self.grids, self.texts)
        if grouped:
            return grouped
        if not self.packed:
            return (None, None)
        lengths = [v + y for v, y in zip(self.visual_lengths, self.texts, strict=True)]
        mask = block_diagonal_mask(lengths, lengths, device)
        return (mask, mask)


class JointAttention(nn.Module):
    """Self-attention over ``[video, text]`` with weights shared by both streams."""

    def __init__(self, dim: int, head_dim: int, attention: AttentionFn, eps: float):
        super().__init__()
        self.head_dim = head_dim
        self.attention = attention
        self.to_query_key_value = nn.Linear(dim, 3 * dim)
        self.query_norm = FP32LayerNorm(head_dim, eps)
        self.key_norm = FP32LayerNorm(head_dim, eps)
        self.output_layer = nn.Linear(dim, dim)

    def qkv(self, x: torch.Tensor, cis: torch.Tensor | None) -> torch.Tensor:
        """B, L, dim -> B, L, 3, heads, head_dim: q|k|v, q and k normalised (and rotated)."""
        q, k, v = self.to_query_key_value(x).unflatten(-1, (3, -1, self.head_dim)).unbind(2)
        q, k = self.query_norm(q), self.key_norm(k)
        if cis is not None:
            q, k = apply_rope(q, cis), apply_rope(k, cis)
        return torch.stack([q, k, v], dim=2)

    def forward(
        self, visual: torch.Tensor, text: torch.Tensor, cis: torch.Tensor,
        seq: JointSequence, mask: AttentionGroups | torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        joint = seq.join(self.qkv(visual, cis), self.qkv(text, None))  # B, S, 3, heads, D
        q, k, v = joint.permute(2, 0, 3, 1, 4).unbind(0)  # each B, heads, S, D
        out = self.attention(q, k, v, mask=mask).transpose(1, 2).flatten(2)
        visual_out, text_out = seq.split(out)
        return self.output_layer(visual_out), self.output_layer(text_out)


class TextEmbedding(nn.Module):
    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.in_layer = nn.Linear(text_dim, dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.in_layer(text)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim, ff_dim)
        self.out_layer = nn.Linear(ff_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.gelu(self.in_layer(x)))


class Block(nn.Module):
    """One transformer block over both streams (see the module docstring)."""

    def __init__(self, c: Kandinsky4DiTConfig, attention: AttentionFn):
        super().__init__()
        self.visual_modulation = Modulation(c.time_dim, c.model_dim, 6)
        self.text_modulation = Modulation(c.time_dim, c.model_dim, 6)
        self.self_attention_norm = FP32LayerNorm(c.model_dim, c.eps)
        self.self_attention = JointAttention(c.model_dim, c.head_dim, attention, c.eps)
        self.feed_forward_norm = FP32LayerNorm(c.model_dim, c.eps)
        self.feed_forward = FeedForward(c.model_dim, c.ff_dim)

    def forward(
        self, visual: torch.Tensor, text: torch.Tensor, e: torch.Tensor, cis: torch.Tensor,
        seq: JointSequence, mask: AttentionGroups | torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vs = seq.rows(self.visual_modulation(e), seq.visual_lengths)
        ys = seq.rows(self.text_modulation(e), list(seq.texts))
        norm = self.self_attention_norm
        attn_v, attn_y = self.self_attention(
            modulate(norm(visual), vs[0], vs[1]), modulate(norm(text), ys[0], ys[1]),
            cis, seq, mask)
        visual, text = gated_residual(visual, attn_v, vs[2]), gated_residual(text, attn_y, ys[2])
        norm = self.feed_forward_norm
        visual = gated_residual(
            visual, self.feed_forward(modulate(norm(visual), vs[3], vs[4])), vs[5])
        text = gated_residual(text, self.feed_forward(modulate(norm(text), ys[3], ys[4])), ys[5])
        return visual, text


class BlockPair(nn.Module):
    """A local-attention block, then a global-attention block (the release's pair)."""

    def __init__(self, c: Kandinsky4DiTConfig, attention: AttentionFn):
        super().__init__()
        self.local_block = Block(c, attention)
        self.global_block = Block(c, attention)

    def forward(self, visual, text, e, cis, seq: JointSequence, masks: tuple):
        visual, text = self.local_block(visual, text, e, cis, seq, masks[0])
        return self.global_block(visual, text, e, cis, seq, masks[1])


class Head(nn.Module):
    """Affine LayerNorm modulated by (shift, scale) of e, then Linear to patch values."""

    def __init__(self, c: Kandinsky4DiTConfig):
        super().__init__()
        self.modulation = Modulation(c.time_dim, c.model_dim, 2)
        self.norm = FP32LayerNorm(c.model_dim, c.eps)
        self.out_layer = nn.Linear(c.model_dim, c.out_channels * math.prod(c.patch_size))

    def forward(self, visual: torch.Tensor, e: torch.Tensor, seq: JointSequence):
        shift, scale = seq.rows(self.modulation(e), seq.visual_lengths)
        return self.out_layer(modulate(self.norm(visual), shift, scale))


class Kandinsky4DiT(nn.Module):
    """Kandinsky 4.0 DiT: ``forward(x, t, text) -> v`` (v-prediction), ``t`` raw timesteps."""

    offload_blocks = "blocks"

    def __init__(self, config: Kandinsky4DiTConfig):
        super().__init__()
        self.config = c = config
        self.attention_backend = attention = get_attention_backend(c.attention)
        if isinstance(attention, NablaAttention):
            raise CineforgeError(
                "Kandinsky 4 attends over joined text and video tokens, which NABLA's tile "
                "layout does not cover; use the 'sdpa' or 'local_global' attention backend")
        self.time_embeddings = TimeEmbedding(c.model_dim, c.time_dim)
        self.text_embeddings = TextEmbedding(c.text_dim, c.model_dim)
        self.visual_embeddings = PatchEmbedding(c.in_channels, c.model_dim, c.patch_size)
        self.blocks = nn.ModuleList(BlockPair(c, attention) for _ in range(c.num_blocks))
        self.head = Head(c)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, text: torch.Tensor) -> torch.Tensor:
        """x: B, C, T, H, W latents; t: (B,) or scalar DDPM timesteps (0..999, not scaled);
        text: B, M, text_dim T5 states. Returns v, B, C_out, T, H, W, in x's dtype."""
        t = torch.as_tensor(t, device=x.device)
        grid = self._check_inputs(x, t, text)
        seq = JointSequence((grid,), (text.shape[1],))
        visual = self.visual_embeddings(x.to(self._dtype))
        out = self._run(visual, text, t.reshape(-1).expand(x.shape[0]), seq)
        return self.unpatchify(out, grid).to(x.dtype)

    def forward_packed(
        self, latents: list[torch.Tensor], t: torch.Tensor, texts: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """N items of any shapes as one sequence, equal to ``forward`` on each alone.

        latents: N tensors C, T_i, H_i, W_i; t: (N,) timesteps (or a scalar); texts: N
        tensors M_i, text_dim. Returns N v-predictions C_out, T_i, H_i, W_i."""
        device = latents[0].device if latents else None
        t = torch.as_tensor(t, device=device).reshape(-1)
        check_pack(latents, t, texts)
        grids = tuple(self._check_inputs(x[None], t[:1], y[None])
                      for x, y in zip(latents, texts, strict=True))
        seq = JointSequence(grids, tuple(len(y) for y in texts), packed=True)
        visual = torch.cat([self.visual_embeddings(x[None].to(self._dtype)) for x in latents],
                           dim=1)
        out = self._run(visual, torch.cat(texts)[None], t.expand(len(latents)), seq)
        return [self.unpatchify(o, g)[0].to(x.dtype) for o, g, x in
                zip(out.split(seq.visual_lengths, dim=1), grids, latents, strict=True)]

    @property
    def _dtype(self) -> torch.dtype:
        return self.visual_embeddings.in_layer.weight.dtype

    def _run(self, visual: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
             seq: JointSequence) -> torch.Tensor:
        """Patch tokens, raw text states and one time per item -> the head's patch values."""
        c = self.config
        text = self.text_embeddings(text.to(self._dtype))
        with torch.autocast(visual.device.type, enabled=False):
            e = self.time_embeddings(t).float()
        cis = torch.cat([rope_cis_grid(g, c.axes_dims, c.rope_scale, c.rope_theta, visual.device)
                         for g in seq.grids])
        masks = seq.masks(self.attention_backend, visual.device)
        for pair in self.blocks:
            visual, text = pair(visual, text, e, cis, seq, masks)
        with torch.autocast(visual.device.type, enabled=False):
            return self.head(visual, e, seq)

    def unpatchify(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        """B, L, C*pt*ph*pw (channel first within a patch, as the release) -> B, C, T, H, W."""
        pt, ph, pw = self.config.patch_size
        t, h, w = grid
        x = tokens.reshape(tokens.shape[0], t, h, w, -1, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> Grid:
        c, b = self.config, x.shape[0]
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise CineforgeError(f"Kandinsky4DiT expects latents (B, {c.in_channels}, T, H, W), "
                                 f"got {tuple(x.shape)}")
        if any(n % p for n, p in zip(x.shape[2:], c.patch_size, strict=True)):
            raise CineforgeError(
                f"latent size {tuple(x.shape[2:])} is not divisible by the patch size "
                f"{c.patch_size}; choose a video size whose latent is a multiple of it")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != c.text_dim or not text.shape[1]:
            raise CineforgeError(
                f"Kandinsky4DiT expects text states ({b}, M >= 1, {c.text_dim}), got "
                f"{tuple(text.shape)}: use the T5 encoder this model was trained with")
        if t.numel() not in (1, b):
            raise CineforgeError(f"t must be a scalar or of shape ({b},), got {tuple(t.shape)}")
        grid = tuple(n // p for n, p in zip(x.shape[2:], c.patch_size, strict=True))
        if max(grid) > c.rope_max_pos:
            raise CineforgeError(
                f"token grid {grid} exceeds the model's {c.rope_max_pos} positions per axis "
                f"(RoPE tables); use fewer frames or a smaller size")
        return grid


def kandinsky4_dit_flops(
    config: Kandinsky4DiTConfig, latent_shape: tuple[int, ...], text_len: int,
    groups: int = 1,
) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls and attention only) for latents
    ``latent_shape = (B, C, T, H, W)``, ``text_len`` text tokens and ``groups`` attention
    groups (local/global: each group attends over its tokens and the text)."""
    c = config
    b, _, t, h, w = latent_shape
    pt, ph, pw = c.patch_size
    n, m, d = (t // pt) * (h // ph) * (w // pw), text_len, c.model_dim
    embed = (n * c.in_channels * pt * ph * pw * d + m * c.text_dim * d
             + d * c.time_dim + c.time_dim**2)
    group = n // groups + m
    block = (12 * c.time_dim * d + 4 * (n + m) * d * d  # modulation, q|k|v, output
             + 2 * groups * group * group * d  # scores and weighted values
             + 2 * (n + m) * d * c.ff_dim)
    head = 2 * c.time_dim * d + n * d * c.out_channels * pt * ph * pw
    return 2.0 * b * (embed + 2 * c.num_blocks * block + head)
