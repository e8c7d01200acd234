"""Wan 2.1 text-to-video diffusion transformer (DiT).

    latent x (B, C, T, H, W) --patch_embedding (Conv3d, kernel = stride = patch)--> tokens
    text (B, L, text_dim)    --text_embedding (Linear, GELU-tanh, Linear)---------> context
    t (B,) in [0, 1]         --sinusoid(t * 1000) -> time_embedding -> e (B, dim)
                             e --time_projection (SiLU, Linear)------------------> e0 (B, 6, dim)
    tokens --blocks x N (3D-RoPE self-attn, cross-attn, FFN; modulated by e0)--> head(e)
           --unpatchify--> velocity (B, C_out, T, H, W)

Each block, with (shift1, scale1, gate1, shift2, scale2, gate2) = modulation + e0:

    x = x + gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1, rope)
    x = x + CrossAttn(LN_affine(x), context)
    x = x + gate2 * FFN(LN(x) * (1 + scale2) + shift2)

q and k are RMS-normalised over all heads together before RoPE. Text is NOT masked: as in the
release, the caller zero-pads the encoder's tokens to ``text_len`` (``pad_context``) and the
padded rows take part in cross-attention after the text embedding.

The modulation ``e0`` is ``B, 1, 6, dim`` (one time per sample) or ``B, L, 6, dim`` (one per
token, as Wan 2.2 uses it); the same equations serve both. ``forward_packed`` runs several
items of different shapes as one sequence (``models.packing``): block-diagonal masks keep
attention inside each item, RoPE restarts per item, and each token is modulated by its
item's time, so it equals ``forward`` on each item alone.

With a NABLA backend, ``forward`` runs the blocks in tile order (``models.sparse_layout``): only
self-attention is block-sparse, cross-attention is dense SDPA; ``forward_packed`` refuses NABLA.
With the local/global backend (``models.local_global``) self-attention is local in even blocks
and global in odd ones, in ``forward`` and, item by item, in ``forward_packed``.

Image-to-video (Wan 2.1 I2V, ``image_dim`` set) adds two things, as the release's
``WanI2VCrossAttention`` and ``MLPProj``: the CLIP image states (B, ``image_tokens``,
``image_dim``; ViT-H/14's penultimate layer, 257 tokens) go through ``img_emb`` (LayerNorm,
Linear, GELU, Linear, LayerNorm) and every cross-attention adds a second attention of the
same queries over them, with its own keys and values (``k_img``, ``v_img``, RMS-normed keys):

    CrossAttn(x) = o(Attn(q, k(text), v(text)) + Attn(q, norm_k_img(k_img(img)), v_img(img)))

The image conditioning ``y`` (mask and encoded first frame, B, in_channels - C, T, H, W) is
concatenated to the latents along channels before the patch embedding (Wan 2.1 I2V and
Wan 2.2 A14B I2V: 16 + 4 + 16 = 36 channels).

``extra_terms`` is the one hook for models built on this one (the demo family adds learned
positions and a pooled caption through it); Wan itself adds nothing.

Module names equal the official release's (``wan/modules/model.py``), so official weights
load through a near-identity key map.

Precision: norms, RoPE and modulation run in fp32 and return the stream's dtype; the
residual stream is kept in the parameters' dtype. The time embedding and the head run with
autocast off, and the modulation vectors are kept in fp32. So fp32 weights under bf16
autocast follow the release (bf16 matmuls and attention, fp32 stream, time embedding and
head), and bf16 weights give a pure-bf16 run. The sinusoid of ``t * timestep_scale`` is
computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.attention import AttentionFn, get_attention_backend
from cineforge.models.layers import (
    FP32LayerNorm,
    FP32RMSNorm,
    gated_residual,
    modulate,
    timestep_sinusoid,
)
from cineforge.models.local_global import AttentionGroups, grouped_masks
from cineforge.models.nabla import NablaGrid
from cineforge.models.packing import block_diagonal_mask, check_pack, packed_rope_cis, segment_ids
from cineforge.models.rope import apply_rope, rope_cis_3d, wan_rope_axis_dims
from cineforge.models.sparse_layout import (
    SelfAttentionLayout,
    self_attention_layout,
    uses_tile_order,
)


@dataclass(frozen=True, kw_only=True)
class WanDiTConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    text_dim: int = 4096
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True
    text_len: int = 512
    timestep_scale: float = 1000.0
    rope_theta: float = 10000.0
    rope_step: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RoPE position per token (axis)
    attention: str = "sdpa"
    image_dim: int | None = None  # image-to-video: CLIP state width (None: no image attention)
    image_tokens: int = 257  # CLIP tokens per image (ViT-H/14 at 224: 16 x 16 + 1)

    def __post_init__(self) -> None:
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim",
                     "in_channels", "out_channels", "text_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WanDiTConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        if len(self.rope_step) != 3 or min(self.rope_step) <= 0:
            raise ValueError(f"rope_step must be 3 positive numbers, got {self.rope_step}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim must be even and >= 6 for 3D RoPE, got {self.head_dim}")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        if self.eps <= 0 or self.timestep_scale <= 0 or self.rope_theta <= 0:
            raise ValueError("eps, timestep_scale and rope_theta must be positive")
        if self.image_dim is not None and min(self.image_dim, self.image_tokens) <= 0:
            raise ValueError("image_dim and image_tokens must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def max_token_grid(self) -> tuple[int, int, int] | None:
        """The largest (frames, rows, columns) token grid the model takes; None: any (RoPE)."""
        return None


# Official Wan 2.1 T2V sizes (wan/configs/wan_t2v_1_3B.py, wan_t2v_14B.py).
WAN_DIT_1_3B = WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN_DIT_14B = WanDiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# Tiny: 2 heads x 16, 2 layers; builds and runs in milliseconds (tests, CI).
WAN_DIT_TINY = WanDiTConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16
)


class WanAttention(nn.Module):
    """Multi-head attention with q/k RMSNorm across heads; RoPE when ``cis`` is given;
    ``mask`` (boolean, True = attend, a ``NablaGrid`` or ``AttentionGroups``) goes to the
    backend as is."""

    def __init__(self, dim: int, num_heads: int, eps: float, attention: AttentionFn):
        super().__init__()
        self.num_heads = num_heads
        self.attention = attention
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = FP32RMSNorm(dim, eps=eps)
        self.norm_k = FP32RMSNorm(dim, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cis: torch.Tensor | None = None,
        mask: torch.Tensor | NablaGrid | AttentionGroups | None = None,
    ) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # B, L, H, D
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        v = self.v(context).unflatten(-1, heads)
        if cis is not None:
            q, k = apply_rope(q, cis), apply_rope(k, cis)
        out = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask)
        return self.o(out.transpose(1, 2).flatten(2))


class WanImageCrossAttention(WanAttention):
    """Cross-attention over text and, with their own keys and values, CLIP image states:
    ``context`` is the image tokens (``image_tokens`` of them) followed by the text's."""

    def __init__(self, dim: int, num_heads: int, eps: float, attention: AttentionFn,
                 image_tokens: int):
        super().__init__(dim, num_heads, eps, attention)
        self.image_tokens = image_tokens
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = FP32RMSNorm(dim, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        cis: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image, text = context[:, : self.image_tokens], context[:, self.image_tokens :]
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads).transpose(1, 2)  # B, H, L, D
        k = self.norm_k(self.k(text)).unflatten(-1, heads).transpose(1, 2)
        v = self.v(text).unflatten(-1, heads).transpose(1, 2)
        k_img = self.norm_k_img(self.k_img(image)).unflatten(-1, heads).transpose(1, 2)
        v_img = self.v_img(image).unflatten(-1, heads).transpose(1, 2)
        out = self.attention(q, k, v, mask=mask) + self.attention(q, k_img, v_img, mask=None)
        return self.o(out.transpose(1, 2).flatten(2))


class WanImageProjection(nn.Module):
    """CLIP states -> the DiT's width: LayerNorm, Linear, GELU, Linear, LayerNorm."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(image_dim), nn.Linear(image_dim, image_dim), nn.GELU(),
            nn.Linear(image_dim, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class WanBlock(nn.Module):
    def __init__(self, config: WanDiTConfig, attention: AttentionFn):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, config.num_heads, eps, attention)
        self.norm3 = FP32LayerNorm(dim, eps) if config.cross_attn_norm else nn.Identity()
        cross = get_attention_backend("sdpa") if uses_tile_order(attention) else attention
        self.cross_attn = (
            WanAttention(dim, config.num_heads, eps, cross) if config.image_dim is None
            else WanImageCrossAttention(dim, config.num_heads, eps, cross, config.image_tokens))
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim),
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        cis: torch.Tensor,
        mask: torch.Tensor | NablaGrid | AttentionGroups | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B, L, dim; e0: B, 1, 6, dim or B, L, 6, dim (fp32); masks: B|1, 1, L, L|M."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0).unbind(2)
        h = modulate(self.norm1(x), shift1, scale1)
        x = gated_residual(x, self.self_attn(h, h, cis, mask=mask), gate1)
        x = x + self.cross_attn(self.norm3(x), context, mask=context_mask)
        h = modulate(self.norm2(x), shift2, scale2)
        return gated_residual(x, self.ffn(h), gate2)


class WanHead(nn.Module):
    def __init__(self, config: WanDiTConfig):
        super().__init__()
        dim = config.dim
        self.norm = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: B, L, dim; e: B, 1, dim or B, L, dim (fp32)."""
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unbind(2)
        return self.head(modulate(self.norm(x), shift, scale))


@dataclass(frozen=True)
class _BlockInputs:
    grid: tuple[int, int, int]
    layout: SelfAttentionLayout  # token order and self-attention mask
    context: torch.Tensor
    e: torch.Tensor
    e0: torch.Tensor
    cis: torch.Tensor
    time_term: torch.Tensor | None = None  # ``extra_terms``' time term (N, dim), if any


class WanDiT(nn.Module):
    """Wan 2.1 T2V DiT: ``forward(x, t, context) -> velocity`` with flow time ``t`` in [0, 1]."""

    offload_blocks = "blocks"

    def __init__(self, config: WanDiTConfig):
        super().__init__()
        self.config = c = config
        self.attention_backend = attention = get_attention_backend(c.attention)
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, c.patch_size, c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c, attention) for _ in range(c.num_layers))
        self.head = WanHead(c)
        if c.image_dim is not None:  # built last: the official file's order does not matter
            self.img_emb = WanImageProjection(c.image_dim, c.dim)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
        y: torch.Tensor | None = None, clip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B, C, T, H, W latents; t: (B,) or scalar flow time; context: B, L, text_dim;
        image-to-video: ``y`` (B, in_channels - C, T, H, W: mask and first-frame latents,
        concatenated to x) and ``clip`` (B, image_tokens, image_dim; with ``image_dim``).

        Returns the velocity, B, C_out, T, H, W, in x's dtype.
        """
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        tokens, s = self._enter(x, t, context, clip)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, s.e0[:, None], s.context, s.cis, s.layout.mask_of(i))
        tokens = s.layout.to_raster(tokens)
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(tokens, s.e[:, None])
        return self.unpatchify(out, s.grid).to(x.dtype)

    def hidden_states(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
        layers: tuple[int, ...], *, velocity: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The token states after each block in ``layers`` (0-based; B, L, dim in raster
        order), the time embedding ``e`` (B, dim, fp32), the embedded text (B, M, dim) and,
        with ``velocity``, ``forward``'s output from the same pass (else None, and only the
        blocks up to the deepest one asked for run): a trunk for discriminator heads
        (``train.distill``)."""
        if not layers or min(layers) < 0 or max(layers) >= len(self.blocks):
            raise CineforgeError(f"layers {layers} must be block indices in "
                                 f"0..{len(self.blocks) - 1}")
        tokens, s = self._enter(x, t, context)
        states = {}
        for i, block in enumerate(self.blocks if velocity else self.blocks[: max(layers) + 1]):
            tokens = block(tokens, s.e0[:, None], s.context, s.cis, s.layout.mask)
            if i in layers:
                states[i] = s.layout.to_raster(tokens)
        out = self._exit(tokens, s, x) if velocity else None
        return [states[i] for i in layers], s.e, s.context, out

    def _exit(self, tokens: torch.Tensor, s: _BlockInputs, x: torch.Tensor) -> torch.Tensor:
        """The head on the last block's tokens: the velocity in ``x``'s shape and dtype."""
        tokens = s.layout.to_raster(tokens)
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(tokens, s.e[:, None])
        return self.unpatchify(out, s.grid).to(x.dtype)

    def _enter(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
               clip: torch.Tensor | None = None):
        """Patch tokens (in the attention backend's order) and what every block needs."""
        c = self.config
        t = torch.as_tensor(t, device=x.device)
        grid = self._check_inputs(x, t, context)
        layout = self_attention_layout(self.attention_backend, grid, x.device)
        dtype = self.patch_embedding.weight.dtype

        token_term, time_term = self.extra_terms([grid], context)
        tokens = self._patchify(x) + token_term
        context = self.text_embedding(context.to(dtype))
        if c.image_dim is not None:
            want = (x.shape[0], c.image_tokens, c.image_dim)
            if clip is None or tuple(clip.shape) != want:
                got = None if clip is None else tuple(clip.shape)
                raise CineforgeError(f"this image-to-video DiT needs CLIP image states {want}, "
                                     f"got {got}")
            context = torch.cat([self.img_emb(clip.to(dtype)), context], dim=1)
        e, e0 = self._time_embedding(t.reshape(-1).expand(x.shape[0]), time_term)
        cis = rope_cis_3d(grid, wan_rope_axis_dims(c.head_dim), c.rope_theta, x.device,
                          c.rope_step)
        tokens, cis = layout.to_attention(tokens), layout.to_attention(cis, dim=0)
        return tokens, _BlockInputs(grid, layout, context, e, e0, cis, time_term)

    def forward_packed(
        self, latents: list[torch.Tensor], t: torch.Tensor, contexts: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """N items of any shapes as one sequence (batch 1), equal to ``forward`` on each alone.

        latents: N tensors C, T_i, H_i, W_i; t: (N,) flow times (or a scalar); contexts: N
        tensors M_i, text_dim (pad each to ``text_len`` with ``pad_context`` to match ``forward``
        on the padded context exactly). Returns N velocities C_out, T_i, H_i, W_i.
        """
        c = self.config
        if c.image_dim is not None:
            raise CineforgeError("forward_packed does not take CLIP image states; train an "
                                 "image-to-video DiT with forward")
        if uses_tile_order(self.attention_backend):
            raise CineforgeError(
                f"forward_packed does not support the NABLA attention backend {c.attention!r}; "
                "set flow.packing: false, or use the 'sdpa' backend for packed training"
            )
        device = latents[0].device if latents else None
        t = torch.as_tensor(t, device=device).reshape(-1)
        check_pack(latents, t, contexts)
        t = t.expand(len(latents))
        grids = [self._check_inputs(x[None], t[i], ctx[None])
                 for i, (x, ctx) in enumerate(zip(latents, contexts, strict=True))]
        lengths = [math.prod(g) for g in grids]
        dtype = self.patch_embedding.weight.dtype

        token_term, time_term = self.extra_terms(grids, contexts)
        tokens = torch.cat([self._patchify(x[None]) for x in latents], dim=1)  # 1, L, dim
        tokens = tokens + token_term
        context = self.text_embedding(torch.cat(contexts).to(dtype)[None])  # 1, M, dim
        e, e0 = self._time_embedding(t, time_term)
        item = segment_ids(lengths, device)
        e, e0 = e[item][None], e0[item][None]  # per token: 1, L, dim and 1, L, 6, dim
        cis = packed_rope_cis(grids, wan_rope_axis_dims(c.head_dim), c.rope_theta, device,
                              c.rope_step)
        masks = grouped_masks(self.attention_backend, grids) or (  # local/global: per item
            block_diagonal_mask(lengths, lengths, device),)
        context_mask = block_diagonal_mask(lengths, [len(ctx) for ctx in contexts], device)

        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, context, cis, masks[i % len(masks)], context_mask)
        with torch.autocast(device.type, enabled=False):
            out = self.head(tokens, e)
        return [self.unpatchify(o, g)[0].to(x.dtype)
                for o, g, x in zip(out.split(lengths, dim=1), grids, latents, strict=True)]

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """B, C, T, H, W -> B, L, dim in the parameters' dtype (the stream's; fp32 under
        autocast). The patch embedding (a Conv3d with kernel = stride) runs as one matmul over
        flattened patches: the same numbers, and far faster than conv3d's backward on CPU."""
        (pt, ph, pw), (b, ch, t, h, w) = self.config.patch_size, x.shape
        weight = self.patch_embedding.weight
        patches = x.reshape(b, ch, t // pt, pt, h // ph, ph, w // pw, pw)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, ch * pt * ph * pw)
        tokens = F.linear(patches.to(weight.dtype), weight.flatten(1), self.patch_embedding.bias)
        return tokens.to(weight.dtype)

    def extra_terms(
        self, grids: list[tuple[int, int, int]], contexts: torch.Tensor | list[torch.Tensor]
    ) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        """The hook for models built on Wan: a term added to the patch tokens of ``grids``
        laid end to end (1, L, dim) and one added to the time embedding ``e`` per item
        (N, dim, fp32), from the text states as the model gets them (``B, L, text_dim``, or
        one ``M_i, text_dim`` tensor per packed item). Wan adds none: ``(0.0, None)``."""
        return 0.0, None

    def _time_embedding(
        self, t: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow times (N,) (plus ``extra_terms``' time term, N, dim) -> e (N, dim) and e0
        (N, 6, dim), fp32, autocast off."""
        c, dtype = self.config, self.patch_embedding.weight.dtype
        with torch.autocast(t.device.type, enabled=False):
            scaled = t.to(torch.float64) * c.timestep_scale
            e = self.time_embedding(timestep_sinusoid(scaled, c.freq_dim).to(dtype)).float()
            if extra is not None:
                e = e + extra
            e0 = self.time_projection(e.to(dtype)).float().unflatten(1, (6, c.dim))
        return e, e0

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """B, L, pt*ph*pw*C (patch dims first, channel last) -> B, C, T, H, W."""
        pt, ph, pw = self.config.patch_size
        t, h, w = grid
        x = tokens.reshape(tokens.shape[0], t, h, w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def _check_inputs(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
    ) -> tuple[int, int, int]:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise CineforgeError(
                f"WanDiT expects latents (B, {c.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        if any(n % p for n, p in zip(x.shape[2:], c.patch_size, strict=True)):
            raise CineforgeError(
                f"latent size {tuple(x.shape[2:])} is not divisible by the patch size "
                f"{c.patch_size}; choose a video size whose latent is a multiple of it"
            )
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.text_dim:
            raise CineforgeError(
                f"WanDiT expects text tokens ({x.shape[0]}, L, {c.text_dim}), "
                f"got {tuple(context.shape)}: use the text encoder this model was trained with"
            )
        if t.numel() not in (1, x.shape[0]):
            raise CineforgeError(
                f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        return tuple(n // p for n, p in zip(x.shape[2:], c.patch_size, strict=True))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> WanDiT:
        """The release's initialisation, drawn from ``generator``: Xavier-uniform linears and
        patch embedding, N(0, 0.02) text/time embeddings, zero biases, a zero output layer (so
        a fresh model predicts zero velocity), modulation tables N(0, 1/dim), unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1), generator=generator)
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02, generator=generator)
        for table in [b.modulation for b in self.blocks] + [self.head.modulation]:
            nn.init.normal_(table, std=self.config.dim**-0.5, generator=generator)
        nn.init.zeros_(self.head.head.weight)
        return self


def pad_context(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """Zero-pad text tokens ``B, L, D`` to ``B, text_len, D`` (the release's convention)."""
    n = context.shape[1]
    if n > text_len:
        raise CineforgeError(
            f"prompt has {n} tokens, more than this model's {text_len}; shorten the prompt"
        )
    return F.pad(context, (0, 0, 0, text_len - n))


def wan_dit_flops(config: WanDiTConfig, latent_shape: tuple[int, ...], text_len: int) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls and attention only) for latents
    ``latent_shape = (B, C, T, H, W)`` and ``text_len`` text tokens."""
    b, _, t, h, w = latent_shape
    pt, ph, pw = config.patch_size
    n = (t // pt) * (h // ph) * (w // pw)
    d, m = config.dim, text_len
    patch = n * config.in_channels * pt * ph * pw * d
    text = m * (config.text_dim * d + d * d)
    time = config.freq_dim * d + d * d + 6 * d * d
    self_attn = 4 * n * d * d + 2 * n * n * d
    cross_attn = 2 * n * d * d + 2 * m * d * d + 2 * n * m * d
    ffn = 2 * n * d * config.ffn_dim
    head = n * d * config.out_channels * pt * ph * pw
    per_block = self_attn + cross_attn + ffn
    return 2.0 * b * (patch + text + time + config.num_layers * per_block + head)
