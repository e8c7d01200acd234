"""FLUX.1's image VAE (also Kandinsky 5 Image Lite's): 8x spatial compression, 16 channels.

A 2D convolutional autoencoder (Rombach et al.'s KL autoencoder with 16 latent channels).
Video goes through it one frame at a time: ``encode`` maps ``B, 3, T, H, W`` in [-1, 1] to
latents ``B, 16, T, H/8, W/8`` (``temporal_ratio`` is 1; an image is a 1-frame video) and
``decode`` maps them back. Every GroupNorm takes its statistics over one frame.

Encoder: conv_in -> stages (residual blocks, then a stride-2 conv padded right and bottom)
-> mid (res, attention over all pixels, res) -> GroupNorm, SiLU, conv_out -> (mu, logvar).
Decoder: conv_in -> mid -> stages (residual blocks, then nearest 2x upsampling and a conv)
-> GroupNorm, SiLU, conv_out. There are no quant convs. Key maps (the release's
``ae.safetensors`` and diffusers' ``AutoencoderKL``): ``flux_vae_keys`` beside this file.

Latents at the public interface are ``(z - shift_factor) * scaling_factor``, decoded as
``latents / scaling_factor + shift_factor``. FLUX.1 uses scale 0.3611 and shift 0.1159
(``FLUX1_VAE``). Kandinsky 5 loads the same VAE (``black-forest-labs/FLUX.1-dev``, folder
``vae``) but scales only: its release (``kandinsky/generation_utils.py``: ``encode_video``,
``generate_sample``) and diffusers' ``Kandinsky5T2IPipeline`` encode ``z * scaling_factor``
and decode ``latents / scaling_factor``, never reading ``shift_factor``. ``FLUX_VAE`` is
the VAE as Kandinsky 5 uses it (shift 0).

Large images decode in overlapping spatial tiles (``decode(..., tile=)``), blended by
``cineforge.models.causal3d.decode_tiled``; each tile has its own norm and attention
statistics, so tiled output differs slightly from whole decoding near what the tiles see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.attention import get_attention_backend
from cineforge.models.causal3d import LatentVideoVAE, Stage


@dataclass(frozen=True)
class FluxVAEConfig:
    base_dim: int = 128
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_dim: int = 16
    norm_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.0
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError("base_dim, z_dim and num_res_blocks must be positive")
        if len(self.dim_mult) < 1 or min(self.dim_mult) < 1:
            raise ValueError(f"dim_mult must be positive integers, got {self.dim_mult}")
        widths = (self.base_dim, *self.widths)
        if self.norm_groups < 1 or any(c % self.norm_groups for c in widths):
            raise ValueError(f"every width {widths} must be divisible by norm_groups")
        if self.scaling_factor <= 0:
            raise ValueError("scaling_factor must be positive")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each encoder stage (the decoder walks them in reverse)."""
        return tuple(self.base_dim * m for m in self.dim_mult)

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_ratio(self) -> int:
        return 1  # frames are encoded one by one

    @property
    def latent_channels(self) -> int:
        return self.z_dim


FLUX_VAE = FluxVAEConfig()  # as Kandinsky 5 Image Lite uses it: latents = z * 0.3611
FLUX1_VAE = replace(FLUX_VAE, shift_factor=0.1159)  # as FLUX.1 uses it
FLUX_VAE_TINY = FluxVAEConfig(base_dim=8, dim_mult=(1, 1, 2, 2), num_res_blocks=1, norm_groups=4)


class ResidualBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; the skip through a 1x1 conv when
    the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class Attention(nn.Module):
    """``x + proj(softmax(q k^T / sqrt(C)) v)``: one head over all pixels of a frame."""

    def __init__(self, dim: int, groups: int, attention: str) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attention = get_attention_backend(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2).unsqueeze(1)  # B, 1, HW, C
        out = self.attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        return x + self.proj(out).squeeze(1).transpose(1, 2).view(b, c, h, w)


class MidBlock(nn.Module):
    """Residual block, attention, residual block."""

    def __init__(self, dim: int, config: FluxVAEConfig) -> None:
        super().__init__()
        self.res1 = ResidualBlock(dim, dim, config.norm_groups)
        self.attn = Attention(dim, config.norm_groups, config.attention)
        self.res2 = ResidualBlock(dim, dim, config.norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x)))


class Downsample(nn.Module):
    """Halve H and W: pad one row and column (right, bottom), then a stride-2 3x3 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest upsampling, then a 3x3 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """``B, 3, H, W`` -> moments ``B, 2 z_dim, H/8, W/8`` (mean, then log-variance)."""

    def __init__(self, config: FluxVAEConfig) -> None:
        super().__init__()
        widths, groups, n = config.widths, config.norm_groups, len(config.widths)
        self.conv_in = nn.Conv2d(3, config.base_dim, 3, padding=1)
        stages, c_in = [], config.base_dim
        for i, c_out in enumerate(widths):
            blocks = [ResidualBlock(c_in if j == 0 else c_out, c_out, groups)
                      for j in range(config.num_res_blocks)]  # fmt: skip
            stages.append(Stage(blocks, Downsample(c_out) if i < n - 1 else None))
            c_in = c_out
        self.down = nn.ModuleList(stages)
        self.mid = MidBlock(widths[-1], config)
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down:
            x = stage(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latents ``B, z_dim, h, w`` -> pixels ``B, 3, 8 h, 8 w`` (unclamped)."""

    def __init__(self, config: FluxVAEConfig) -> None:
        super().__init__()
        widths, groups, n = config.widths[::-1], config.norm_groups, len(config.widths)
        self.conv_in = nn.Conv2d(config.z_dim, widths[0], 3, padding=1)
        self.mid = MidBlock(widths[0], config)
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            blocks = [ResidualBlock(c_in if j == 0 else c_out, c_out, groups)
                      for j in range(config.num_res_blocks + 1)]  # fmt: skip
            stages.append(Stage(blocks, Upsample(c_out) if i < n - 1 else None))
            c_in = c_out
        self.up = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for stage in self.up:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply an image network ``fn`` to every frame of ``x`` (B, C, T, H, W), one at a time
    (peak memory is that of one frame), and stack the results along time."""
    out = None
    for t in range(x.shape[2]):
        y = fn(x[:, :, t])
        if out is None:
            out = y.new_empty(y.shape[0], y.shape[1], x.shape[2], *y.shape[2:])
        out[:, :, t] = y
        del y
    return out


class FluxVAE(LatentVideoVAE):
    """FLUX.1's VAE with the video VAEs' interface (``LatentVideoVAE``), frame by frame.
    Latents are normalised as the release does, ``(z - shift) * scale``."""

    label = "the FLUX VAE"

    def __init__(self, config: FluxVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior ``(mu, logvar)``, each ``B, z_dim, T, H/8, W/8``; gradients when
        enabled (training)."""
        self._check_video(video)
        mu, logvar = per_frame(self.encoder, video).chunk(2, dim=1)
        return mu, logvar

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unclamped frames from RAW latents, with gradients when enabled (training)."""
        return per_frame(self.decoder, z)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.config.scaling_factor + self.config.shift_factor

    def _check_video(self, video: torch.Tensor) -> None:
        s = self.config.spatial_ratio
        if video.ndim != 5 or video.shape[1] != 3:
            raise CineforgeError(
                f"the VAE encodes videos shaped (B, 3, T, H, W) (images with T=1), "
                f"got {tuple(video.shape)}"
            )
        frames, height, width = video.shape[2:]
        if frames < 1 or not height or not width or height % s or width % s:
            raise CineforgeError(
                f"video of {frames} frames at {height}x{width}: the FLUX VAE needs at least "
                f"one frame and height/width divisible by {s}; crop or pad the frames (e.g. "
                f"to {max(s, height // s * s)}x{max(s, width // s * s)})"
            )
