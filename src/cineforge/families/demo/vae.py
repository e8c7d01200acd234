"""A compact causal video VAE for CPUs: 2D convolutions per latent frame, time in channels.

Wan's VAE spends 3x3x3 convolutions at full resolution on every frame; at the demo's width
(16 channels) on a 2-core CPU it trained slowly (24.9 dB image / 19.5 dB video PSNR after
7500 steps). This VAE folds time into channels instead, so all of its work is 2D:

    frame 0 --image_in (3 -> w0)--------------+
    frames 1+4i..4+4i --video_in (12 -> w0)---+--> per latent frame: [res blocks, down] per
    level (2D) --> causal time mix --> norm, SiLU, 1x1 conv --> (mu, logvar)  B, z, 1+k, H/s, W/s

    z --3x3 conv--> causal time mix --> [res blocks, up] per level (2D) --> norm, SiLU -->
    image_out (w0 -> 3) for latent frame 0, video_out (w0 -> 12) -> 4 frames for the others

Like Wan's VAE it maps ``1 + 4k`` frames to ``1 + k`` latent frames and an image to one
latent frame, and it is causal: latent frame i depends on frames up to ``4i`` only (the
time mix is a residual convolution over the current and the previous latent frame, zero at
init). Spatial ratio ``2 ** (len(widths) - 1)``. Residual blocks are pre-norm
(GroupNorm, SiLU, 3x3 conv) x 2 with the second conv zero-initialised.

The 2D stacks run on channels-last tensors: oneDNN's convolutions take them without
reordering: on a 2-core CPU a demo clip decodes in 22 ms instead of 36 and encodes in 10
instead of 28, with the same numbers to float rounding (3e-6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.models.causal3d import LatentVideoVAE


@dataclass(frozen=True)
class CompactVAEConfig:
    widths: tuple[int, ...] = (32, 64, 64)  # channels per resolution level, full res first
    z_dim: int = 16
    frames_per_latent: int = 4  # video frames folded into one latent frame (after the first)
    num_res_blocks: int = 1
    norm_groups: int = 8
    latents_mean: tuple[float, ...] = (0.0,) * 16
    latents_std: tuple[float, ...] = (1.0,) * 16
    # the decoder's own widths and res blocks per level (() and 0: the encoder's), e.g. a
    # wider decoder fine-tuned behind a trained encoder (``vae.decoder_only``)
    decoder_widths: tuple[int, ...] = ()
    decoder_res_blocks: int = 0

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1 or self.z_dim < 1:
            raise ValueError(f"widths and z_dim must be positive, got {self.widths}, {self.z_dim}")
        if self.decoder_widths and (len(self.decoder_widths) != len(self.widths)
                                    or min(self.decoder_widths) < 1):
            raise ValueError(f"decoder_widths must be () or {len(self.widths)} positive widths "
                             f"(one per level, as widths), got {self.decoder_widths}")
        if any(w % self.norm_groups for w in (*self.widths, *self.decoder_widths)):
            raise ValueError(f"every width must be divisible by norm_groups={self.norm_groups}")
        if self.frames_per_latent < 1 or self.num_res_blocks < 1 or self.decoder_res_blocks < 0:
            raise ValueError("frames_per_latent and num_res_blocks must be >= 1, "
                             "decoder_res_blocks >= 0")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError("latents_mean and latents_std need z_dim values each")
        if min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")

    @property
    def decoder_levels(self) -> tuple[tuple[int, ...], int]:
        """The decoder's widths (full resolution first) and res blocks per level."""
        return self.decoder_widths or self.widths, self.decoder_res_blocks or self.num_res_blocks

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def temporal_ratio(self) -> int:
        return self.frames_per_latent


COMPACT_VAE_TINY = CompactVAEConfig(widths=(8, 16), z_dim=4, norm_groups=4,
                                    latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)


class ResBlock(nn.Module):
    """``shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))``."""

    def __init__(self, in_dim: int, out_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_dim)
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # a fresh block starts as its shortcut
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class CausalTimeMix(nn.Module):
    """``x_t + W0 x_{t-1} + W1 x_t`` over latent frames (B, C, N, h, w); zero at init."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, (2, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.pad(x, (0, 0, 0, 0, 1, 0)))


def _levels(widths: tuple[int, ...], blocks: int, groups: int, *, down: bool) -> nn.ModuleList:
    """Res blocks per level and a resampler between levels (encoder: full res first)."""
    layers: list[nn.Module] = []
    order = list(widths) if down else list(reversed(widths))
    d_in = order[0]
    for level, width in enumerate(order):
        for _ in range(blocks):
            layers.append(ResBlock(d_in, width, groups))
            d_in = width
        if level < len(order) - 1:
            if down:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            else:
                layers.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                            nn.Conv2d(width, width, 3, padding=1)))
    return nn.ModuleList(layers)


class CompactVAE(LatentVideoVAE):
    """See the module docstring; the public API is ``LatentVideoVAE``'s."""

    label = "the compact VAE"
    encoder_modules = ("image_in", "video_in", "down", "encoder_time", "encoder_norm",
                       "to_moments")

    def __init__(self, config: CompactVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        w0, wl, r = c.widths[0], c.widths[-1], c.frames_per_latent
        self.image_in = nn.Conv2d(3, w0, 3, padding=1)
        self.video_in = nn.Conv2d(3 * r, w0, 3, padding=1)
        self.down = _levels(c.widths, c.num_res_blocks, c.norm_groups, down=True)
        self.encoder_time = CausalTimeMix(wl)
        self.encoder_norm = nn.GroupNorm(c.norm_groups, wl)
        self.to_moments = nn.Conv2d(wl, 2 * c.z_dim, 1)
        widths, blocks = c.decoder_levels
        self.from_latent = nn.Conv2d(c.z_dim, widths[-1], 3, padding=1)
        self.decoder_time = CausalTimeMix(widths[-1])
        self.up = _levels(widths, blocks, c.norm_groups, down=False)
        self.decoder_norm = nn.GroupNorm(c.norm_groups, widths[0])
        self.image_out = nn.Conv2d(widths[0], 3, 3, padding=1)
        self.video_out = nn.Conv2d(widths[0], 3 * r, 3, padding=1)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_video(video)
        b, _, frames, height, width = video.shape
        r, n = self.config.frames_per_latent, 1 + (frames - 1) // self.config.frames_per_latent
        stems = [self.image_in(video[:, :, 0]).unsqueeze(1)]  # B, 1, w0, H, W
        if n > 1:  # B, 3, (n-1) r, H, W -> B (n-1), 3 r, H, W with channel = colour * r + frame
            groups = video[:, :, 1:].reshape(b, 3, n - 1, r, height, width).transpose(1, 2)
            stems.append(self.video_in(groups.reshape(b * (n - 1), 3 * r, height, width))
                         .view(b, n - 1, -1, height, width))
        x = _channels_last(torch.cat(stems, dim=1).flatten(0, 1))  # B n, w0, H, W
        for layer in self.down:
            x = layer(x)
        x = self.encoder_time(_to_time(x, b)).transpose(1, 2).flatten(0, 1)
        moments = self.to_moments(F.silu(self.encoder_norm(x)))
        mu, logvar = _to_time(moments, b).chunk(2, dim=1)
        return mu, logvar

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        b, _, n, h, w = z.shape
        r = self.config.frames_per_latent
        x = self.from_latent(z.transpose(1, 2).flatten(0, 1))
        x = _channels_last(self.decoder_time(_to_time(x, b)).transpose(1, 2).flatten(0, 1))
        for layer in self.up:
            x = layer(x)
        x = F.silu(self.decoder_norm(x)).unflatten(0, (b, n))  # B, n, w0, H, W
        height, width = x.shape[-2:]
        first = self.image_out(x[:, 0]).unsqueeze(2)  # B, 3, 1, H, W
        if n == 1:
            return first.contiguous()
        rest = self.video_out(x[:, 1:].flatten(0, 1)).reshape(b, n - 1, 3, r, height, width)
        rest = rest.transpose(1, 2).reshape(b, 3, (n - 1) * r, height, width)
        return torch.cat([first, rest], dim=2).contiguous()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``B, C, H, W`` in channels-last memory (same values; see the module docstring)."""
    return x.contiguous(memory_format=torch.channels_last)


def _to_time(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``B n, C, h, w`` -> ``B, C, n, h, w``."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)
