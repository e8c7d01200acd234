"""Wan 2.2's causal 3D VAE (the TI2V-5B VAE): 16x spatial and 4x temporal compression, 48
channels.

The frames are first folded 2x2 into channels (``patchify``: ``B, 3, T, H, W`` ->
``B, 12, T, H/2, W/2``, channel ``c * 4 + r * 2 + q`` for the pixel at row ``2h + q``,
column ``2w + r``); the network then compresses 8x in space as Wan 2.1's does, so a latent
cell covers 16x16 pixels. The decoder's 12 output channels are unfolded the same way.

Each level of the encoder and decoder is a residual stage: its blocks and resampler, plus a
parameter-free shortcut that changes the shape without learning:

    encoder stage: y = resample(blocks(x)) + avg_down(x)   (space/time folded into
                   channels, then channel groups averaged down to the output width)
    decoder stage: y = resample(blocks(x)) + dup_up(x)     (channels repeated, then unfolded
                   into space/time; the stream's first chunk keeps one frame)

The decoder is wider than the encoder (``decoder_base_dim`` 256 vs ``base_dim`` 160), its
upsamplers keep the width, and its stages take ``num_res_blocks + 1`` blocks. Blocks,
attention, resamplers and the streaming walk (first frame alone, then chunks of 4; one
latent frame at a time when decoding; a ``CausalCache``) are Wan 2.1's
(``cineforge.families.wan.vae``). Latents at the public interface are normalised per
channel with the release's 48 statistics. Key maps: ``cineforge.families.wan.vae22_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.families.wan.vae import (
    Downsample,
    MidBlock,
    ResidualBlock,
    RMSNorm,
    Upsample,
    WanVAE,
    WanVAEConfig,
    norm_silu_conv,
)
from cineforge.models.causal3d import CausalCache, CausalConv3d

# Per-channel statistics of Wan 2.2 latents, as published with the release (vae2_2.py).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class Wan22VAEConfig(WanVAEConfig):
    base_dim: int = 160
    decoder_base_dim: int = 256
    z_dim: int = 48
    patch_size: int = 2
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_base_dim < 1 or self.patch_size < 1:
            raise ValueError("decoder_base_dim and patch_size must be positive")

    @property
    def spatial_ratio(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)


WAN_VAE_2_2 = Wan22VAEConfig()
# Tiny: the release's widths / 40 and / 32, one block per stage; its shortcuts average and
# repeat channel groups in the same pattern as the release's.
WAN_VAE_2_2_TINY = Wan22VAEConfig(base_dim=4, decoder_base_dim=8, num_res_blocks=1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``B, C, T, pH, pW`` -> ``B, C p p, T, H, W`` (channel ``c p^2 + r p + q``, pixel row
    ``p h + q``, column ``p w + r``), the release's order."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of ``patchify``."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, c // (p * p), t, h * p, w * p)


def avg_down(x: torch.Tensor, out_dim: int, ft: int, fs: int) -> torch.Tensor:
    """Fold ``ft`` frames (zeros padded in front to a multiple) and ``fs x fs`` pixels into
    channels, then average groups of consecutive channels down to ``out_dim``."""
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, out_dim, -1, t // ft, h // fs, w // fs).mean(dim=2)


def dup_up(x: torch.Tensor, out_dim: int, ft: int, fs: int, first_chunk: bool) -> torch.Tensor:
    """Repeat each channel, then unfold groups of channels into ``ft`` frames and ``fs x fs``
    pixels; on the stream's first chunk only the last of each ``ft`` frames is kept."""
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(out_dim * ft * fs * fs // c, dim=1)
    x = x.reshape(b, out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, out_dim, t * ft, h * fs, w * fs)
    return x[:, :, ft - 1 :] if first_chunk else x


class DownStage(nn.Module):
    """``resample(blocks(x)) + avg_down(x)``; the last stage has no resampler."""

    def __init__(self, in_dim: int, out_dim: int, n: int, dropout: float, *,
                 down: bool, temporal: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(n)
        )
        self.resample = Downsample(out_dim, temporal=temporal) if down else None
        self.out_dim, self.ft, self.fs = out_dim, 2 if temporal else 1, 2 if down else 1

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        skip = avg_down(x, self.out_dim, self.ft, self.fs)
        for block in self.res:
            x = block(x, cache)
        if self.resample is not None:
            x = self.resample(x, cache)
        return x + skip


class UpStage(nn.Module):
    """``resample(blocks(x)) + dup_up(x)``; the last stage has neither."""

    def __init__(self, in_dim: int, out_dim: int, n: int, dropout: float, *,
                 up: bool, temporal: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout) for i in range(n)
        )
        self.resample = Upsample(out_dim, temporal=temporal, out_dim=out_dim) if up else None
        self.out_dim, self.ft = out_dim, 2 if temporal else 1

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.resample is None:
            skip = None
        else:
            skip = dup_up(x, self.out_dim, self.ft, 2, cache.first_chunk)
        for block in self.res:
            x = block(x, cache)
        if self.resample is None:
            return x
        return self.resample(x, cache) + skip


class Encoder22(nn.Module):
    def __init__(self, config: Wan22VAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        stages = len(config.dim_mult)
        self.conv_in = CausalConv3d(3 * config.patch_size**2, dims[0], 3, padding=1)
        self.down = nn.ModuleList(
            DownStage(d_in, d_out, config.num_res_blocks, config.dropout, down=i < stages - 1,
                      temporal=i < stages - 1 and config.temporal_downsample[i])
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True))
        )
        self.mid = MidBlock(dims[-1], config)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for stage in self.down:
            x = stage(x, cache)
        x = self.mid(x, cache)
        return norm_silu_conv(self.norm_out, self.conv_out, x, cache)


class Decoder22(nn.Module):
    def __init__(self, config: Wan22VAEConfig) -> None:
        super().__init__()
        mults = config.dim_mult
        dims = [config.decoder_base_dim * m for m in (mults[-1], *reversed(mults))]
        temporal_up = tuple(reversed(config.temporal_downsample))
        stages = len(mults)
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid = MidBlock(dims[0], config)
        self.up = nn.ModuleList(
            UpStage(d_in, d_out, config.num_res_blocks + 1, config.dropout, up=i < stages - 1,
                    temporal=i < stages - 1 and temporal_up[i])
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True))
        )
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3 * config.patch_size**2, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        x = self.mid(x, cache)
        for stage in self.up:
            x = stage(x, cache)
        return norm_silu_conv(self.norm_out, self.conv_out, x, cache)


class Wan22VAE(WanVAE):
    """Wan 2.2's video VAE. ``encode``/``decode`` stream over time and need no gradients."""

    label = "the Wan 2.2 VAE"

    def __init__(self, config: Wan22VAEConfig) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.encoder = Encoder22(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder22(config)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_moments`` with gradients when they are enabled (training)."""
        self._check_video(video)
        x = patchify(video, self.config.patch_size)
        r = self.config.temporal_ratio
        cache, chunks = CausalCache(), []
        for i in range(1 + (x.shape[2] - 1) // r):
            chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + r * (i - 1) : 1 + r * i]
            chunks.append(self.quant_conv(self.encoder(chunk, cache)))
            cache.next_chunk()
        mu, logvar = torch.cat(chunks, dim=2).chunk(2, dim=1)
        return mu, logvar

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unclamped frames from RAW latents, with gradients when enabled (training)."""
        cache, frames = CausalCache(), []
        for i in range(z.shape[2]):
            frames.append(self.decoder(self.post_quant_conv(z[:, :, i : i + 1]), cache))
            cache.next_chunk()
        return unpatchify(torch.cat(frames, dim=2), self.config.patch_size)
