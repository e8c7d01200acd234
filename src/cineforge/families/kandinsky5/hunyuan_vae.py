"""HunyuanVideo's causal 3D VAE (also Kandinsky 5's video VAE): 8x space, 4x time, 16 channels.

The encoder maps a video ``B, 3, 1 + 4k, H, W`` in [-1, 1] to the moments of a diagonal
Gaussian ``B, 16, 1 + k, H/8, W/8``; the decoder maps latents back to frames. Every
convolution pads time on the past side only, with copies of the clip's first frame
("replicate"), and pads space by replicating the border.

Whole clip, not streaming. Unlike Wan's VAE, this one cannot be fed chunk by chunk exactly:
every GroupNorm takes its statistics over all frames of its input, and the middle
attention, though causal (a frame attends to itself and earlier frames), is preceded by
such a GroupNorm. A chunked walk would change every norm's statistics. So a clip is
encoded or decoded whole, and long or large clips go through the same overlapping
temporal and spatial tiles as diffusers' ``AutoencoderKLHunyuanVideo`` (``HunyuanTiling``;
by default, as in diffusers, temporal tiles of 16 frames every 12 frames, no spatial
tiles; a 16-frame window is 17 frames, and each later one drops its first output frame).
Tiles are walked one after the other, keeping only the previous tile (row) besides the
output, so working memory is that of one tile whatever the clip's length; results equal
diffusers' (max |diff| ~1e-5 in the tests).

Encoder: conv_in -> stages (residual blocks, then a strided causal conv) -> mid (res,
frame-causal attention, res) -> GroupNorm, SiLU, conv_out -> quant_conv -> (mu, logvar).
Decoder: post_quant_conv -> conv_in -> mid -> stages (residual blocks, then nearest
upsampling and a causal conv) -> GroupNorm, SiLU, conv_out.

Latents at the public interface are ``z * scaling_factor`` (0.476986), as diffusers'
Kandinsky 5 pipelines scale them (``latent_dist.sample() * scaling_factor`` to encode,
``latents / scaling_factor`` before decoding). Key maps: ``hunyuan_vae_keys`` beside this
file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.attention import get_attention_backend
from cineforge.models.causal3d import Stage, blend_, posterior_sample

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HunyuanVAEConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    latent_channels: int = 16
    layers_per_block: int = 2
    norm_num_groups: int = 32
    spatial_ratio: int = 8
    temporal_ratio: int = 4
    mid_attention: bool = True
    scaling_factor: float = 0.476986
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if n < 3 or min(self.block_out_channels) < 1:
            raise ValueError("block_out_channels needs at least 3 positive widths")
        if self.latent_channels < 1 or self.layers_per_block < 1 or self.norm_num_groups < 1:
            raise ValueError("latent_channels, layers_per_block and norm_num_groups must be > 0")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"every width must be divisible by norm_num_groups={self.norm_num_groups}"
            )
        s = self.spatial_ratio
        if s < 1 or s & (s - 1) or s > 2**n:
            raise ValueError(f"spatial_ratio must be a power of 2 up to 2**{n}, got {s}")
        if self.temporal_ratio != 4:
            raise ValueError(f"only temporal_ratio=4 is supported, got {self.temporal_ratio}")
        if self.scaling_factor <= 0:
            raise ValueError("scaling_factor must be positive")

    def stage_strides(self) -> list[tuple[int, int]]:
        """``(time, space)`` factor of each encoder stage's downsample (1, 1: none).

        The first log2(spatial_ratio) stages halve space; the two stages before the last
        halve time (the release's rule for 4x temporal compression).
        """
        n, levels = len(self.block_out_channels), int(math.log2(self.spatial_ratio))
        return [(2 if n - 3 <= i < n - 1 else 1, 2 if i < levels else 1) for i in range(n)]


HUNYUAN_VAE = HunyuanVAEConfig()
HUNYUAN_VAE_TINY = HunyuanVAEConfig(
    block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4
)


@dataclass(frozen=True)
class HunyuanTiling:
    """Overlapping tiles, in pixels and frames, with diffusers' names and defaults.

    A clip longer than ``frames`` frames goes through tiles of ``frames + 1`` frames every
    ``frame_stride`` frames; if ``size`` is set, frames larger than ``size`` pixels go
    through ``size x size`` tiles every ``stride`` pixels. Overlaps are blended linearly.
    """

    frames: int = 16
    frame_stride: int = 12
    size: int | None = None
    stride: int = 192

    def __post_init__(self) -> None:
        if not 0 < self.frame_stride <= self.frames or self.frames % 4 or self.frame_stride % 4:
            raise ValueError("need 0 < frame_stride <= frames, both multiples of 4")
        if self.size is not None and (
            not 0 < self.stride <= self.size or self.size % 8 or self.stride % 8
        ):
            raise ValueError("need 0 < stride <= size, both multiples of 8 pixels")


DIFFUSERS_TILING = HunyuanTiling()  # what AutoencoderKLHunyuanVideo does unless told otherwise


class ReplicateCausalConv3d(nn.Conv3d):
    """A 3D conv padded by replication: ``k_t - 1`` copies of the first frame in front
    (nothing after), ``k // 2`` border copies on each side in space."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: tuple[int, int, int] = (1, 1, 1)
    ):
        super().__init__(c_in, c_out, kernel, stride=stride)
        k = kernel // 2
        self.pad = (k, k, k, k, kernel - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return F.conv3d(x, self.weight, self.bias, self.stride)


class ResidualBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``; the skip through a 1x1x1 conv
    when the width changes. Norms are GroupNorms over all frames."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = ReplicateCausalConv3d(c_in, c_out, 3)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.conv2 = ReplicateCausalConv3d(c_out, c_out, 3)
        self.shortcut = ReplicateCausalConv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class FrameCausalAttention(nn.Module):
    """Single-head attention over all pixels, each frame seeing itself and earlier frames.

    Computed frame by frame (queries of frame t against keys of frames 0..t), which is the
    block-causal mask of the release without building an ``L x L`` mask.
    """

    def __init__(self, dim: int, groups: int, attention: str) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attention = get_attention_backend(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, 1, t * h * w, c)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        n = h * w
        out = torch.cat(
            [self.attention(q[:, :, i * n : (i + 1) * n], k[:, :, : (i + 1) * n],
                            v[:, :, : (i + 1) * n]) for i in range(t)],
            dim=2,
        )  # fmt: skip
        out = self.proj(out).view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, dim: int, config: HunyuanVAEConfig) -> None:
        super().__init__()
        groups = config.norm_num_groups
        self.res1 = ResidualBlock(dim, dim, groups)
        self.attn = (
            FrameCausalAttention(dim, groups, config.attention) if config.mid_attention else None
        )
        self.res2 = ResidualBlock(dim, dim, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)


class Upsample(nn.Module):
    """Nearest upsampling by ``(time, space)`` (the first frame in space only), then a
    causal 3x3x3 conv: 1 + n frames become 1 + time * n."""

    def __init__(self, dim: int, time: int, space: int) -> None:
        super().__init__()
        self.time, self.space = time, space
        self.conv = ReplicateCausalConv3d(dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = float(self.space)
        first = F.interpolate(x[:, :, :1], scale_factor=(1.0, s, s), mode="nearest")
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(float(self.time), s, s), mode="nearest")
            first = torch.cat([first, rest], dim=2)
        return self.conv(first)


class Encoder(nn.Module):
    def __init__(self, config: HunyuanVAEConfig) -> None:
        super().__init__()
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = ReplicateCausalConv3d(3, widths[0], 3)
        stages = []
        c_in = widths[0]
        for c_out, (t, s) in zip(widths, config.stage_strides(), strict=True):
            blocks = [ResidualBlock(c_in if j == 0 else c_out, c_out, groups)
                      for j in range(config.layers_per_block)]  # fmt: skip
            down = (
                ReplicateCausalConv3d(c_out, c_out, 3, stride=(t, s, s))
                if (t, s) != (1, 1)
                else None
            )
            stages.append(Stage(blocks, down))
            c_in = c_out
        self.down = nn.ModuleList(stages)
        self.mid = MidBlock(widths[-1], config)
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = ReplicateCausalConv3d(widths[-1], 2 * config.latent_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down:
            x = stage(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, config: HunyuanVAEConfig) -> None:
        super().__init__()
        widths, groups = config.block_out_channels[::-1], config.norm_num_groups
        self.conv_in = ReplicateCausalConv3d(config.latent_channels, widths[0], 3)
        self.mid = MidBlock(widths[0], config)
        stages = []
        c_in = widths[0]
        for c_out, (t, s) in zip(widths, config.stage_strides(), strict=True):
            blocks = [ResidualBlock(c_in if j == 0 else c_out, c_out, groups)
                      for j in range(config.layers_per_block + 1)]  # fmt: skip
            up = Upsample(c_out, t, s) if (t, s) != (1, 1) else None
            stages.append(Stage(blocks, up))
            c_in = c_out
        self.up = nn.ModuleList(stages)
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = ReplicateCausalConv3d(widths[-1], 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(x))
        for stage in self.up:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class HunyuanVAE(nn.Module):
    """HunyuanVideo's video VAE. ``encode``/``decode`` need no gradients; ``moments`` and
    ``decode_raw`` keep them (training)."""

    def __init__(self, config: HunyuanVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(config.latent_channels, config.latent_channels, 1)
        self.decoder = Decoder(config)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruct a video through the posterior mean."""
        return self.decode(self.encode(video))

    @torch.no_grad()
    def encode_moments(
        self, video: torch.Tensor, *, tiling: HunyuanTiling = DIFFUSERS_TILING
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior ``(mu, logvar)``, each ``B, 16, 1 + (T-1)/4, H/8, W/8``."""
        return self.moments(video, tiling=tiling)

    def moments(
        self, video: torch.Tensor, *, tiling: HunyuanTiling = DIFFUSERS_TILING
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_moments`` with gradients when they are enabled (training)."""
        self._check_video(video)
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        frames, height, width = video.shape[2:]

        def whole(x: torch.Tensor) -> torch.Tensor:
            return self.quant_conv(self.encoder(x))

        size = (1 + (frames - 1) // r, height // s, width // s)
        moments = run_tiled(whole, video, tiling, size, time=(1, r), space=(1, s))
        mu, logvar = moments.chunk(2, dim=1)
        return mu, logvar

    def encode(
        self,
        video: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiling: HunyuanTiling = DIFFUSERS_TILING,
    ) -> torch.Tensor:
        """Scaled latents ``z * scaling_factor`` of ``video`` (B, 3, 1 + 4k, H, W in [-1, 1]).

        ``z`` is the posterior mean, or with ``sample=True`` a draw from the posterior.
        """
        mu, logvar = self.encode_moments(video, tiling=tiling)
        z = posterior_sample(mu, logvar, generator) if sample else mu
        return z * self.config.scaling_factor

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, *, tiling: HunyuanTiling = DIFFUSERS_TILING
    ) -> torch.Tensor:
        """Frames in [-1, 1], ``B, 3, 1 + 4(T_lat - 1), 8 H_lat, 8 W_lat``, from scaled latents."""
        self._check_latents(latents)
        return self.decode_raw(latents / self.config.scaling_factor, tiling=tiling).clamp_(-1, 1)

    def decode_raw(
        self, z: torch.Tensor, *, tiling: HunyuanTiling = DIFFUSERS_TILING
    ) -> torch.Tensor:
        """Unclamped frames from UNSCALED latents, with gradients when enabled (training)."""
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        n, height, width = z.shape[2:]

        def whole(x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.post_quant_conv(x))

        size = (1 + r * (n - 1), height * s, width * s)
        return run_tiled(whole, z, tiling, size, time=(r, 1), space=(s, 1))

    def _check_video(self, video: torch.Tensor) -> None:
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        if video.ndim != 5 or video.shape[1] != 3:
            raise CineforgeError(
                f"the VAE encodes videos shaped (B, 3, T, H, W), got {tuple(video.shape)}"
            )
        frames, height, width = video.shape[2:]
        if frames < 1 or (frames - 1) % r or height % s or width % s or not height or not width:
            raise CineforgeError(
                f"video of {frames} frames at {height}x{width}: the HunyuanVideo VAE needs {r}k+1 "
                f"frames and height/width divisible by {s}; trim or pad the video (e.g. to "
                f"{1 + r * max(0, (frames - 1) // r)} frames at {height // s * s}x{width // s * s})"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[1] != c or 0 in latents.shape:
            raise CineforgeError(
                f"the VAE decodes latents shaped (B, {c}, T, H, W), got {tuple(latents.shape)}"
            )


def run_tiled(
    fn: Fn,
    x: torch.Tensor,
    tiling: HunyuanTiling,
    size: tuple[int, int, int],
    *,
    time: tuple[int, int],
    space: tuple[int, int],
) -> torch.Tensor:
    """``fn(x)`` cropped to ``size`` (T, H, W), whole or in ``tiling``'s tiles.

    ``time`` and ``space`` are ``(input, output)`` units per frame/pixel of ``tiling``:
    ``(1, 4)`` and ``(1, 8)`` to encode (tiles given in frames and pixels, blends in latent
    cells), ``(4, 1)`` and ``(8, 1)`` to decode.
    """
    (t_in, t_out), (s_in, s_out) = time, space

    def frame(y: torch.Tensor) -> torch.Tensor:
        if tiling.size is None or max(y.shape[-2:]) <= tiling.size // s_in:
            return fn(y)[..., : size[1], : size[2]]
        blend, keep = (tiling.size - tiling.stride) // s_out, tiling.stride // s_out
        return tile_space(fn, y, tiling.size // s_in, tiling.stride // s_in, blend, keep, size[1:])

    if x.shape[2] <= tiling.frames // t_in:
        return frame(x)[:, :, : size[0]]
    blend, keep = (tiling.frames - tiling.frame_stride) // t_out, tiling.frame_stride // t_out
    return tile_time(
        frame, x, tiling.frames // t_in, tiling.frame_stride // t_in, blend, keep, size[0]
    )


def tile_time(
    fn: Fn, x: torch.Tensor, size: int, stride: int, blend: int, keep: int, total: int
) -> torch.Tensor:
    """Run ``fn`` on windows of ``size + 1`` frames of ``x`` every ``stride`` frames.

    A window after the first drops its first output frame (its causal start), blends its
    first ``blend`` output frames with the previous window's last ones and contributes
    ``keep`` frames (the first window ``keep + 1``) to an output of ``total`` frames. Only
    the previous window is held besides the output.
    """
    out, prev, at = None, None, 0
    for start in range(0, x.shape[2], stride):
        window = fn(x[:, :, start : start + size + 1])
        if prev is None:
            piece = window[:, :, : keep + 1]
            out = window.new_empty(*window.shape[:2], total, *window.shape[3:])
        else:
            window = window[:, :, 1:]
            blend_(prev, window, blend, dim=2)
            piece = window[:, :, :keep]
        n = min(piece.shape[2], total - at)
        out[:, :, at : at + n] = piece[:, :, :n]
        at, prev = at + n, window
    return out


def tile_space(
    fn: Fn,
    x: torch.Tensor,
    size: int,
    stride: int,
    blend: int,
    keep: int,
    total: tuple[int, int],
) -> torch.Tensor:
    """Run ``fn`` on ``size x size`` tiles of ``x`` every ``stride`` cells, row by row.

    Each tile blends its top ``blend`` rows with the tile above and its left ``blend``
    columns with the tile to its left (both already blended), then contributes its
    top-left ``keep x keep`` corner to an output of ``total`` (H, W). Only the previous row
    of tiles is held besides the output.
    """
    out, above = None, []
    for row_index, y in enumerate(range(0, x.shape[3], stride)):
        row: list[torch.Tensor] = []
        for i, x0 in enumerate(range(0, x.shape[4], stride)):
            tile = fn(x[:, :, :, y : y + size, x0 : x0 + size])
            if above:
                blend_(above[i], tile, blend, dim=3)
            if row:
                blend_(row[-1], tile, blend, dim=4)
            row.append(tile)
            if out is None:
                out = tile.new_empty(*tile.shape[:3], *total)
            y_out, x_out = row_index * keep, i * keep
            h, w = min(keep, total[0] - y_out), min(keep, total[1] - x_out)
            out[..., y_out : y_out + h, x_out : x_out + w] = tile[..., :h, :w]
        above = row
    return out
