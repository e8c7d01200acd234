"""Kandinsky 5.0 diffusion transformer (video Lite / Pro, image Lite).

    text (B, L, text_dim) Qwen2.5-VL states --text_embeddings (Linear, LayerNorm)--> text
    t (B,) in [0, 1]   --sinusoid(t * 1000, model_dim) -> time_embeddings (Linear, SiLU, Linear)
    pooled (B, pooled_dim) CLIP --pooled_text_embeddings (Linear, LayerNorm)--> + ------> e
    x (B, C, T, H, W) [+ visual_cond (B, C + 1, T, H, W)] --patches, visual_embeddings--> tokens
    text --text_transformer_blocks x N_text (1D-RoPE self-attn, FFN; modulated by e)--> text
    tokens --visual_transformer_blocks x N (3D-RoPE self-attn, cross-attn to text, FFN)
           --out_layer(e)--unpatchify--> velocity (B, C_out, T, H, W)

Every block is modulated by its own ``SiLU -> Linear`` of ``e``; with ``(shift, scale, gate)``
per sub-layer and ``LN`` a LayerNorm without affine weights:

    text block:   y = y + gate * SelfAttn(LN(y) * (1 + scale) + shift, rope_1d)
                  y = y + gate * FFN(LN(y) * (1 + scale) + shift)
    visual block: x = x + gate * SelfAttn(LN(x) * (1 + scale) + shift, rope_3d)
                  x = x + gate * CrossAttn(LN(x) * (1 + scale) + shift, text)
                  x = x + gate * FFN(LN(x) * (1 + scale) + shift)

q and k are RMS-normalised per head (before RoPE). A head is ``sum(axes_dims)`` wide; RoPE
rotates interleaved pairs, text by token index, video by (frame, row, column) indices, each
angle divided by ``rope_scale`` (the release's ``scale_factor``: 1, 2, 2 at 512 px, 1, 3.16,
3.16 at 1024 px video, 1, 1, 1 for images). RoPE and time tables are float32, as the release
computes them. Patches enter channel-last (``pt, ph, pw, C``) and leave channel-first
(``C, pt, ph, pw``), as in the release.

``visual_cond`` models (all released video checkpoints) read ``2 * C + 1`` channels: the noisy
latent, a condition latent and a mask (1 where the condition holds). Both reference pipelines
pass zeros for the condition (T2V) and, for I2V, put the image latent into frame 0 of ``x``
with mask 1 there; ``visual_cond=None`` gives the zeros.

Text padding: the release drops padded tokens; ``text_mask`` (B, L, True = token, right
padding) gives the same result on a padded batch by masking the padded keys. Without it
every token takes part (diffusers' behaviour).

With the ``"nabla"`` backend the video tokens run through the visual blocks in NABLA's tile
order (RoPE permuted with them) and visual self-attention gets the token grid; cross-attention
and the text blocks always use dense SDPA. With ``"local_global"`` visual self-attention is local
in even visual blocks and global in odd ones (``models.local_global``).

Module names equal the release's (``kandinsky/models/dit.py``, ``nn.py``) and diffusers'
``Kandinsky5Transformer3DModel``, so both load through identity key maps.

Precision: norms, RoPE and modulation run in fp32; the residual stream keeps the
parameters' dtype; the time embedding, modulation and head run with autocast off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.attention import AttentionFn, get_attention_backend
from cineforge.models.layers import FP32LayerNorm, FP32RMSNorm, gated_residual, modulate
from cineforge.models.local_global import AttentionGroups, grouped_masks
from cineforge.models.nabla import NablaAttention, NablaGrid, tile_order
from cineforge.models.rope import apply_rope


@dataclass(frozen=True, kw_only=True)
class Kandinsky5DiTConfig:
    """Release names: in_visual_dim = ``in_channels``, out_visual_dim = ``out_channels``,
    in_text_dim = ``text_dim``, in_text_dim2 = ``pooled_dim``."""

    model_dim: int
    ff_dim: int
    time_dim: int
    num_text_blocks: int
    num_visual_blocks: int
    axes_dims: tuple[int, int, int]
    visual_cond: bool
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 3584
    pooled_dim: int = 768
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0
    eps: float = 1e-5
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("model_dim", "ff_dim", "time_dim", "num_visual_blocks", "in_channels",
                     "out_channels", "text_dim", "pooled_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Kandinsky5DiTConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if self.num_text_blocks < 0:
            raise ValueError(f"num_text_blocks must be >= 0, got {self.num_text_blocks}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if len(self.axes_dims) != 3 or any(d <= 0 or d % 2 for d in self.axes_dims):
            raise ValueError(f"axes_dims must be 3 positive even ints, got {self.axes_dims}")
        if self.model_dim % self.head_dim:
            raise ValueError(f"model_dim {self.model_dim} is not divisible by the head size "
                             f"sum(axes_dims) = {self.head_dim}")
        if len(self.rope_scale) != 3 or min(self.rope_scale) <= 0:
            raise ValueError(f"rope_scale must be 3 positive floats, got {self.rope_scale}")
        if self.eps <= 0 or self.timestep_scale <= 0 or self.rope_theta <= 0:
            raise ValueError("eps, timestep_scale and rope_theta must be positive")

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    @property
    def num_heads(self) -> int:
        return self.model_dim // self.head_dim

    @property
    def visual_embed_dim(self) -> int:
        """Channels the patch embedding reads: latent, plus condition and mask if any."""
        return 2 * self.in_channels + 1 if self.visual_cond else self.in_channels


# Official sizes, from the release's configs (kandinskylab/kandinsky-5, configs/*.yaml,
# model.dit_params and metrics.scale_factor). Every released video checkpoint (Lite T2V
# sft/pretrain/nocfg/distilled, Lite I2V, Pro T2V/I2V) has visual_cond: true; the video
# rope_scale is the 512 px ("sd") value; the 1024 px ("hd") configs use (1, 3.16, 3.16).
K5_DIT_VIDEO_LITE = Kandinsky5DiTConfig(
    model_dim=1792, ff_dim=7168, time_dim=512, num_text_blocks=2, num_visual_blocks=32,
    axes_dims=(16, 24, 24), visual_cond=True, rope_scale=(1.0, 2.0, 2.0),
)
K5_DIT_VIDEO_PRO = Kandinsky5DiTConfig(
    model_dim=4096, ff_dim=16384, time_dim=1024, num_text_blocks=4, num_visual_blocks=60,
    axes_dims=(32, 48, 48), visual_cond=True, rope_scale=(1.0, 2.0, 2.0),
)
K5_DIT_IMAGE_LITE = Kandinsky5DiTConfig(
    model_dim=2560, ff_dim=10240, time_dim=512, num_text_blocks=2, num_visual_blocks=50,
    axes_dims=(32, 48, 48), visual_cond=False,
)
# Tiny: 2 heads x 32, 1 text + 2 visual blocks; equals the diffusers oracle in the tests.
K5_DIT_TINY = Kandinsky5DiTConfig(
    model_dim=64, ff_dim=128, time_dim=32, num_text_blocks=1, num_visual_blocks=2,
    axes_dims=(8, 12, 12), visual_cond=False, text_dim=32, pooled_dim=16,
)


def frequencies(half: int, theta: float, device: torch.device | None) -> torch.Tensor:
    """``theta ** (-i / half)`` for ``i < half``, computed as the release does (float32 exp)."""
    exponent = -math.log(theta) * torch.arange(half, dtype=torch.float32) / half
    return exponent.exp().to(device)


def rope_angles(n: int, dim: int, theta: float, device: torch.device | None) -> torch.Tensor:
    """Float32 angles ``pos * frequencies(dim / 2)`` for positions ``0 .. n-1``: ``n, dim/2``."""
    positions = torch.arange(n, dtype=torch.float32, device=device)
    return torch.outer(positions, frequencies(dim // 2, theta, device))


def rope_cis_1d(n: int, dim: int, theta: float, device: torch.device | None) -> torch.Tensor:
    """Unit complex rotations of token indices ``0 .. n-1``: complex64, ``n, dim/2``."""
    angles = rope_angles(n, dim, theta, device)
    return torch.polar(torch.ones_like(angles), angles)


def rope_cis_grid(
    grid: tuple[int, int, int], axes_dims: tuple[int, int, int], scale: tuple[float, ...],
    theta: float, device: torch.device | None,
) -> torch.Tensor:
    """Rotations of a ``T, H, W`` grid (time-major order), each axis's angles divided by its
    ``scale``: complex64, ``T*H*W, sum(axes_dims)/2``."""
    parts = []
    for axis, (n, d, s) in enumerate(zip(grid, axes_dims, scale, strict=True)):
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        parts.append((rope_angles(n, d, theta, device) / s).view(shape).expand(*grid, -1))
    angles = torch.cat(parts, dim=-1).flatten(0, 2)
    return torch.polar(torch.ones_like(angles), angles)


def time_sinusoid(time: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``[cos(time w_i), sin(time w_i)]`` with ``w = frequencies(dim / 2)``; float32."""
    args = torch.outer(time.float(), frequencies(dim // 2, theta, time.device))
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TokenEmbedding(nn.Module):
    """Linear then affine LayerNorm (text states, pooled CLIP vector)."""

    def __init__(self, in_dim: int, dim: int, eps: float):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, dim)
        self.norm = FP32LayerNorm(dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.in_layer(x))


class PatchEmbedding(nn.Module):
    """B, C, T, H, W -> B, L, dim: a Linear over patches flattened as (pt, ph, pw, C); the
    tokens keep the parameters' dtype (fp32 under autocast), like the residual stream."""

    def __init__(self, channels: int, dim: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_size = patch_size
        self.in_layer = nn.Linear(math.prod(patch_size) * channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (pt, ph, pw), (b, ch, t, h, w) = self.patch_size, x.shape
        patches = x.reshape(b, ch, t // pt, pt, h // ph, ph, w // pw, pw)
        patches = patches.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, pt * ph * pw * ch)
        return self.in_layer(patches).to(self.in_layer.weight.dtype)  # the stream's dtype


class TimeEmbedding(nn.Module):
    """sinusoid(time, model_dim) -> Linear -> SiLU -> Linear (time_dim)."""

    def __init__(self, model_dim: int, time_dim: int):
        super().__init__()
        self.model_dim = model_dim
        self.in_layer = nn.Linear(model_dim, time_dim)
        self.out_layer = nn.Linear(time_dim, time_dim)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        h = time_sinusoid(time, self.model_dim).to(self.in_layer.weight.dtype)
        return self.out_layer(F.silu(self.in_layer(h)))


class Modulation(nn.Module):
    """``SiLU -> Linear`` of the time embedding, cut into ``n`` fp32 vectors ``B, 1, dim``."""

    def __init__(self, time_dim: int, dim: int, n: int):
        super().__init__()
        self.n = n
        self.out_layer = nn.Linear(time_dim, n * dim)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(e.device.type, enabled=False):
            params = self.out_layer(F.silu(e).to(self.out_layer.weight.dtype)).float()
        return params[:, None].chunk(self.n, dim=-1)


class Attention(nn.Module):
    """Multi-head attention, q/k RMSNorm per head, RoPE when ``cis`` is given; ``mask``
    (boolean, True = attend) goes to the backend as is."""

    def __init__(self, dim: int, head_dim: int, attention: AttentionFn):
        super().__init__()
        self.head_dim = head_dim
        self.attention = attention
        self.to_query = nn.Linear(dim, dim)
        self.to_key = nn.Linear(dim, dim)
        self.to_value = nn.Linear(dim, dim)
        self.query_norm = FP32RMSNorm(head_dim)
        self.key_norm = FP32RMSNorm(head_dim)
        self.out_layer = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cis: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        heads = (-1, self.head_dim)
        q = self.query_norm(self.to_query(x).unflatten(-1, heads))  # B, L, H, D
        k = self.key_norm(self.to_key(context).unflatten(-1, heads))
        v = self.to_value(context).unflatten(-1, heads)
        if cis is not None:
            q, k = apply_rope(q, cis), apply_rope(k, cis)
        out = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask)
        return self.out_layer(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim, ff_dim, bias=False)
        self.out_layer = nn.Linear(ff_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.gelu(self.in_layer(x)))


class TextBlock(nn.Module):
    def __init__(self, c: Kandinsky5DiTConfig):
        super().__init__()
        self.text_modulation = Modulation(c.time_dim, c.model_dim, 6)
        self.self_attention_norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.self_attention = Attention(c.model_dim, c.head_dim, get_attention_backend("sdpa"))
        self.feed_forward_norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.feed_forward = FeedForward(c.model_dim, c.ff_dim)

    def forward(
        self, y: torch.Tensor, e: torch.Tensor, cis: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.text_modulation(e)
        h = modulate(self.self_attention_norm(y), shift1, scale1)
        y = gated_residual(y, self.self_attention(h, h, cis, mask), gate1)
        h = modulate(self.feed_forward_norm(y), shift2, scale2)
        return gated_residual(y, self.feed_forward(h), gate2)


class VisualBlock(nn.Module):
    def __init__(self, c: Kandinsky5DiTConfig, attention: AttentionFn):
        super().__init__()
        self.visual_modulation = Modulation(c.time_dim, c.model_dim, 9)
        self.self_attention_norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.self_attention = Attention(c.model_dim, c.head_dim, attention)
        self.cross_attention_norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.cross_attention = Attention(c.model_dim, c.head_dim, get_attention_backend("sdpa"))
        self.feed_forward_norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.feed_forward = FeedForward(c.model_dim, c.ff_dim)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        e: torch.Tensor,
        cis: torch.Tensor,
        text_mask: torch.Tensor | None,
        self_mask: NablaGrid | AttentionGroups | None = None,
    ) -> torch.Tensor:
        (shift1, scale1, gate1, shift2, scale2, gate2,
         shift3, scale3, gate3) = self.visual_modulation(e)
        h = modulate(self.self_attention_norm(x), shift1, scale1)
        x = gated_residual(x, self.self_attention(h, h, cis, self_mask), gate1)
        h = modulate(self.cross_attention_norm(x), shift2, scale2)
        x = gated_residual(x, self.cross_attention(h, text, mask=text_mask), gate2)
        h = modulate(self.feed_forward_norm(x), shift3, scale3)
        return gated_residual(x, self.feed_forward(h), gate3)


class OutLayer(nn.Module):
    def __init__(self, c: Kandinsky5DiTConfig):
        super().__init__()
        self.modulation = Modulation(c.time_dim, c.model_dim, 2)
        self.norm = FP32LayerNorm(c.model_dim, c.eps, elementwise_affine=False)
        self.out_layer = nn.Linear(c.model_dim, c.out_channels * math.prod(c.patch_size))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(e)
        return self.out_layer(modulate(self.norm(x), shift, scale))


class Kandinsky5DiT(nn.Module):
    """Kandinsky 5.0 DiT: ``forward(x, t, text, pooled) -> velocity``, flow time t in [0, 1]."""

    offload_blocks = "visual_transformer_blocks"

    def __init__(self, config: Kandinsky5DiTConfig):
        super().__init__()
        self.config = c = config
        self.text_embeddings = TokenEmbedding(c.text_dim, c.model_dim, c.eps)
        self.time_embeddings = TimeEmbedding(c.model_dim, c.time_dim)
        self.pooled_text_embeddings = TokenEmbedding(c.pooled_dim, c.time_dim, c.eps)
        self.visual_embeddings = PatchEmbedding(c.visual_embed_dim, c.model_dim, c.patch_size)
        self.text_transformer_blocks = nn.ModuleList(
            TextBlock(c) for _ in range(c.num_text_blocks)
        )
        self.attention_backend = attention = get_attention_backend(c.attention)
        self.nabla_tile = attention.tile if isinstance(attention, NablaAttention) else None
        self.visual_transformer_blocks = nn.ModuleList(
            VisualBlock(c, attention) for _ in range(c.num_visual_blocks)
        )
        self.out_layer = OutLayer(c)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        text: torch.Tensor,
        pooled: torch.Tensor,
        visual_cond: torch.Tensor | None = None,
        *,
        text_mask: torch.Tensor | None = None,
        rope_scale: tuple[float, float, float] | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B, C, T, H, W latents; t: (B,) or scalar flow time; text: B, L, text_dim
        (Qwen2.5-VL states); pooled: B, pooled_dim (CLIP); visual_cond: B, C + 1, T, H, W
        (condition latent, then mask), zeros if None, only for ``visual_cond`` models;
        text_mask: B, L boolean (True = token, padding on the right); rope_scale overrides
        ``config.rope_scale`` (it depends on the resolution); ``first``: B, C, 1, H, W
        latents of a first frame (image-to-video): they replace frame 0 of x, and unless
        ``visual_cond`` is given the mask is 1 on frame 0 (the condition latent stays zero).

        Returns the velocity, B, C_out, T, H, W, in x's dtype.
        """
        c = self.config
        if first is not None:
            x = torch.cat([first.to(x.dtype), x[:, :, 1:]], dim=2)
            if visual_cond is None and c.visual_cond:
                visual_cond = x.new_zeros(x.shape[0], x.shape[1] + 1, *x.shape[2:])
                visual_cond[:, -1, 0] = 1
        t = torch.as_tensor(t, device=x.device)
        grid = self._check_inputs(x, t, text, pooled, visual_cond, text_mask)
        dtype = self.visual_embeddings.in_layer.weight.dtype
        b, n_text = x.shape[0], text.shape[1]

        text = self.text_embeddings(text.to(dtype))
        with torch.autocast(x.device.type, enabled=False):
            e = self.time_embeddings(t.reshape(-1).expand(b) * c.timestep_scale).float()
            e = e + self.pooled_text_embeddings(pooled.to(dtype)).float()
        tokens = self.visual_embeddings(self._visual_input(x, visual_cond).to(dtype))
        mask = None if text_mask is None else text_mask[:, None, None, :].to(torch.bool)

        cis = rope_cis_1d(n_text, c.head_dim, c.rope_theta, x.device)
        for block in self.text_transformer_blocks:
            text = block(text, e, cis, mask)

        scale = c.rope_scale if rope_scale is None else rope_scale
        cis = rope_cis_grid(grid, c.axes_dims, scale, c.rope_theta, x.device)
        grid_masks = grouped_masks(self.attention_backend, [grid]) or (None,)  # local, global
        if self.nabla_tile is not None:  # NABLA: tokens in tile order; the grid opts in
            order = tile_order(*grid, self.nabla_tile).to(x.device)
            tokens, cis, grid_masks = tokens[:, order], cis[order], (NablaGrid(*grid),)
        for i, block in enumerate(self.visual_transformer_blocks):
            tokens = block(tokens, text, e, cis, mask, grid_masks[i % len(grid_masks)])
        if self.nabla_tile is not None:
            tokens = tokens[:, torch.argsort(order)]
        with torch.autocast(x.device.type, enabled=False):
            out = self.out_layer(tokens, e)
        return self.unpatchify(out, grid).to(x.dtype)

    def _visual_input(self, x: torch.Tensor, visual_cond: torch.Tensor | None) -> torch.Tensor:
        """x, or x with the condition latent and mask channels appended (zeros if None)."""
        if not self.config.visual_cond:
            return x
        if visual_cond is None:
            visual_cond = x.new_zeros(x.shape[0], x.shape[1] + 1, *x.shape[2:])
        return torch.cat([x, visual_cond.to(x.dtype)], dim=1)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """B, L, C*pt*ph*pw (channel first within a patch) -> B, C, T, H, W."""
        pt, ph, pw = self.config.patch_size
        t, h, w = grid
        x = tokens.reshape(tokens.shape[0], t, h, w, -1, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def _check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        visual_cond: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> tuple[int, int, int]:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise CineforgeError(
                f"Kandinsky5DiT expects latents (B, {c.in_channels}, T, H, W), "
                f"got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if any(n % p for n, p in zip(x.shape[2:], c.patch_size, strict=True)):
            raise CineforgeError(
                f"latent size {tuple(x.shape[2:])} is not divisible by the patch size "
                f"{c.patch_size}; choose a video size whose latent is a multiple of it"
            )
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != c.text_dim:
            raise CineforgeError(
                f"Kandinsky5DiT expects text states ({b}, L, {c.text_dim}), got "
                f"{tuple(text.shape)}: use the text encoder this model was trained with"
            )
        if tuple(pooled.shape) != (b, c.pooled_dim):
            raise CineforgeError(
                f"Kandinsky5DiT expects a pooled text vector ({b}, {c.pooled_dim}), got "
                f"{tuple(pooled.shape)}: use the CLIP encoder this model was trained with"
            )
        if t.numel() not in (1, b):
            raise CineforgeError(f"t must be a scalar or of shape ({b},), got {tuple(t.shape)}")
        if visual_cond is not None:
            if not c.visual_cond:
                raise CineforgeError(
                    "this Kandinsky 5 model takes no visual condition; pass visual_cond=None "
                    "or use a preset with visual_cond=True"
                )
            want = (b, c.in_channels + 1, *x.shape[2:])
            if tuple(visual_cond.shape) != want:
                raise CineforgeError(
                    f"visual_cond must be {want} (condition latent, then mask), "
                    f"got {tuple(visual_cond.shape)}"
                )
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise CineforgeError(
                f"text_mask must be {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}"
            )
        return tuple(n // p for n, p in zip(x.shape[2:], c.patch_size, strict=True))


def kandinsky5_dit_flops(
    config: Kandinsky5DiTConfig, latent_shape: tuple[int, ...], text_len: int
) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls and attention only) for latents
    ``latent_shape = (B, C, T, H, W)`` and ``text_len`` text tokens."""
    c = config
    b, _, t, h, w = latent_shape
    pt, ph, pw = c.patch_size
    n, m, d, td = (t // pt) * (h // ph) * (w // pw), text_len, c.model_dim, c.time_dim
    embed = (n * c.visual_embed_dim * pt * ph * pw * d + m * c.text_dim * d
             + c.pooled_dim * td + d * td + td * td)
    text_block = 6 * td * d + 4 * m * d * d + 2 * m * m * d + 2 * m * d * c.ff_dim
    visual_block = (9 * td * d + 4 * n * d * d + 2 * n * n * d  # modulation, self-attention
                    + 2 * (n + m) * d * d + 2 * n * m * d  # cross-attention
                    + 2 * n * d * c.ff_dim)
    head = 2 * td * d + n * d * c.out_channels * pt * ph * pw
    blocks = c.num_text_blocks * text_block + c.num_visual_blocks * visual_block
    return 2.0 * b * (embed + blocks + head)
