"""Wan 2.1's causal 3D VAE (Wan-VAE): 8x spatial and 4x temporal compression, 16 channels.

The encoder maps a video ``B, 3, 1 + 4k, H, W`` in [-1, 1] to the moments of a diagonal
Gaussian ``B, 16, 1 + k, H/8, W/8``; the decoder maps latents back to frames. Every
convolution over time is causal, so the video streams through the network: the encoder
takes the first frame alone and then chunks of 4 frames, the decoder one latent frame at a
time, each layer carrying the frames it needs from the past in a ``CausalCache``. Peak
memory is that of one chunk, not of the video.

Encoder: conv_in -> [residual blocks, downsample] per stage -> mid (res, attention, res)
-> RMS norm, SiLU, conv_out -> quant_conv (1x1x1) -> (mu, logvar).
Decoder: post_quant_conv (1x1x1) -> conv_in -> mid -> [residual blocks, upsample] per
stage -> RMS norm, SiLU, conv_out.

Module names follow the release's ``WanVAE_`` where it is a flat list (``encoder.down.N``
is ``encoder.downsamples.N``, ``decoder.up.N`` is ``decoder.upsamples.N``); the key maps
live in ``cineforge.families.wan.vae_keys``. Latents at the public interface are
normalised per channel, ``(mu - mean) / std``, with the release's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.models.attention import get_attention_backend
from cineforge.models.causal3d import (
    CHANNELS_LAST,
    CausalCache,
    CausalConv3d,
    LatentVideoVAE,
)

# Per-channel statistics of Wan 2.1 latents, as published with the release.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError("base_dim, z_dim and num_res_blocks must be positive")
        if len(self.dim_mult) < 1 or min(self.dim_mult) < 1:
            raise ValueError(f"dim_mult must be positive integers, got {self.dim_mult}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temporal_downsample needs one flag per downsampling stage")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError("latents_mean and latents_std need z_dim values each")
        if min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(self.temporal_downsample)


WAN_VAE_2_1 = WanVAEConfig()
WAN_VAE_TINY = WanVAEConfig(base_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1)


def conv2d_per_frame(x: torch.Tensor, conv: nn.Conv2d, **kwargs) -> torch.Tensor:
    """Apply a 2D conv to every frame of ``B, C, T, H, W`` (as a 1xkxk 3D conv, no copies)."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, **kwargs)


class RMSNorm(nn.Module):
    """``x / ||x|| * sqrt(C) * gamma``, the norm taken over channels at each position.

    ``gamma`` has the release's shape: ``C, 1, 1, 1`` (``C, 1, 1`` in attention blocks).
    """

    def __init__(self, dim: int, *, per_frame: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if per_frame else torch.ones(dim, 1, 1, 1))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x`` (B, C, T, H, W), into ``out`` if given. The norm is fp32.

        Without gradients it works in place in ``out``; with gradients (training) it runs
        out of place and copies into ``out``, which autograd follows.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=dtype)
        gain = self.gamma.view(-1, 1, 1, 1) * self.scale
        if torch.is_grad_enabled():
            y = (x / norm.clamp_min(1e-12)).to(x.dtype) * gain
            return y if out is None else out.copy_(y)
        out = torch.div(x, norm.clamp_min_(1e-12), out=torch.empty_like(x) if out is None else out)
        return out.mul_(gain)


def norm_silu_into(
    norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor, cache: CausalCache, dropout: float = 0.0
) -> torch.Tensor:
    """``dropout(silu(norm(x)))`` written straight into ``conv``'s input buffer, behind the
    past frames: run it with ``conv.forward_buffer`` (no concatenation copy)."""
    buffer, present = conv.frame_buffer(x, cache)
    if torch.is_grad_enabled():  # autograd needs silu's input: no in-place activation
        present.copy_(F.dropout(F.silu(norm(x)), dropout, training=dropout > 0))
        return buffer
    F.silu(norm(x, out=present), inplace=True)
    if dropout:
        F.dropout(present, dropout, training=True, inplace=True)
    return buffer


def norm_silu_conv(
    norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor, cache: CausalCache
) -> torch.Tensor:
    """``conv(silu(norm(x)))``, the pre-activation block of every Wan convolution."""
    return conv.forward_buffer(norm_silu_into(norm, conv, x, cache), cache)


class ResidualBlock(nn.Module):
    """``x + conv2(dropout(silu(norm2(conv1(silu(norm1(x)))))))``, causal 3x3x3 convs.

    The skip goes through a 1x1x1 conv when the width changes.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.dropout = dropout
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = norm_silu_conv(self.norm1, self.conv1, x, cache)
        dropout = self.dropout if self.training else 0.0
        buffer = norm_silu_into(self.norm2, self.conv2, h, cache, dropout)
        del h  # conv1's output now lives in the buffer: free it before conv2 runs
        h = self.conv2.forward_buffer(buffer, cache)
        return h.add_(x if self.shortcut is None else self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention among the pixels of each frame, plus the input."""

    def __init__(self, dim: int, attention: str) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, per_frame=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # as the release: a fresh block starts as identity
        self.attention = get_attention_backend(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)
        qkv = F.linear(tokens, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias)
        out = self.attention(*qkv.chunk(3, dim=-1))
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return x + out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class Downsample(nn.Module):
    """Halve H and W (stride-2 3x3 conv per frame, padded right and bottom).

    If ``temporal``, then halve the frames too with a stride-2 conv over time whose window
    starts at the previous chunk's last frame; the stream's first frame passes unchanged,
    so 1 + 2n frames become 1 + n.
    """

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None
        if self.time_conv is not None:  # start as the mean of each pair of frames
            with torch.no_grad():
                eye = torch.eye(dim)
                self.time_conv.weight.zero_()
                self.time_conv.weight[:, :, 1, 0, 0] = 0.5 * eye
                self.time_conv.weight[:, :, 2, 0, 0] = 0.5 * eye
                self.time_conv.bias.zero_()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = conv2d_per_frame(F.pad(x, (0, 1, 0, 1)), self.conv, stride=(1, 2, 2))
        if self.time_conv is None:
            return x
        past = cache.past(self)
        cache.keep(self, x[:, :, -1:])
        if cache.first_chunk:
            return x
        return self.time_conv(torch.cat([past, x], dim=2))


class Upsample(nn.Module):
    """Double H and W (nearest, then a 3x3 conv per frame that halves the channels, or
    maps them to ``out_dim``).

    If ``temporal``, first double the frames: a causal conv over time gives two output
    frames per input frame, except for the stream's first frame, which stays one.
    """

    def __init__(self, dim: int, *, temporal: bool, out_dim: int | None = None) -> None:
        super().__init__()
        self.time_conv = (
            CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0)) if temporal else None
        )
        if self.time_conv is not None:  # start by repeating each frame twice
            with torch.no_grad():
                eye = torch.eye(dim)
                self.time_conv.weight.zero_()
                self.time_conv.weight[:dim, :, 2, 0, 0] = eye
                self.time_conv.weight[dim:, :, 2, 0, 0] = eye
                self.time_conv.bias.zero_()
        self.conv = nn.Conv2d(dim, dim // 2 if out_dim is None else out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.time_conv is not None and not cache.first_chunk:
            pairs = self.time_conv(x, cache)  # channels [:C] -> even frames, [C:] -> odd
            b, c, t, h, w = x.shape
            x = torch.empty(
                (b, c, 2 * t, h, w), dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST
            )
            x[:, :, 0::2], x[:, :, 1::2] = pairs.chunk(2, dim=1)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")
        return conv2d_per_frame(x, self.conv, padding=(0, 1, 1))


class MidBlock(nn.Module):
    """Residual block, attention within frames, residual block."""

    def __init__(self, dim: int, config: WanVAEConfig) -> None:
        super().__init__()
        self.res1 = ResidualBlock(dim, dim, config.dropout)
        self.attn = AttentionBlock(dim, config.attention)
        self.res2 = ResidualBlock(dim, dim, config.dropout)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, cache)), cache)


class Encoder(nn.Module):
    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for stage, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(d_in, d_out, config.dropout))
                d_in = d_out
            if stage < len(config.temporal_downsample):
                blocks.append(Downsample(d_out, temporal=config.temporal_downsample[stage]))
        self.down = nn.ModuleList(blocks)
        self.mid = MidBlock(dims[-1], config)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in self.down:
            x = block(x, cache)
        x = self.mid(x, cache)
        return norm_silu_conv(self.norm_out, self.conv_out, x, cache)


class Decoder(nn.Module):
    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        mults = config.dim_mult
        dims = [config.base_dim * m for m in (mults[-1], *reversed(mults))]
        temporal_up = tuple(reversed(config.temporal_downsample))
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid = MidBlock(dims[0], config)
        blocks: list[nn.Module] = []
        for stage, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if stage > 0:
                d_in //= 2  # the upsample before this stage halved the channels
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResidualBlock(d_in, d_out, config.dropout))
                d_in = d_out
            if stage < len(temporal_up):
                blocks.append(Upsample(d_out, temporal=temporal_up[stage]))
        self.up = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        x = self.mid(x, cache)
        for block in self.up:
            x = block(x, cache)
        return norm_silu_conv(self.norm_out, self.conv_out, x, cache)


class WanVAE(LatentVideoVAE):
    """Wan 2.1's video VAE. ``encode``/``decode`` stream over time and need no gradients."""

    label = "the Wan VAE"

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_moments`` with gradients when they are enabled (training)."""
        self._check_video(video)
        b, _, frames, height, width = video.shape
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        n = 1 + (frames - 1) // r
        moments = video.new_empty(b, 2 * self.config.z_dim, n, height // s, width // s)
        cache = CausalCache()
        for i in range(n):
            chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + r * (i - 1) : 1 + r * i]
            moments[:, :, i : i + 1] = self.quant_conv(self.encoder(chunk, cache))
            cache.next_chunk()
        mu, logvar = moments.chunk(2, dim=1)
        return mu, logvar

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unclamped frames from RAW latents, with gradients when enabled (training)."""
        b, _, n, height, width = z.shape
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        video = z.new_empty(b, 3, 1 + r * (n - 1), height * s, width * s)
        cache = CausalCache()
        for i in range(n):
            frames = self.decoder(self.post_quant_conv(z[:, :, i : i + 1]), cache)
            start = 0 if i == 0 else 1 + r * (i - 1)
            video[:, :, start : start + frames.shape[2]] = frames
            del frames
            cache.next_chunk()
        return video
