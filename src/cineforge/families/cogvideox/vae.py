"""CogVideoX's 3D causal VAE (also Kandinsky 4.0's): 8x space, 4x time, 16 channels.

The encoder maps a video ``B, 3, 1 + 4k, H, W`` in [-1, 1] to the moments of a diagonal
Gaussian ``B, 16, 1 + k, H/8, W/8``; the decoder maps latents back to frames. Every 3x3x3
convolution is causal in time: it sees the present and the two frames before, and a stream
starts from two copies of its first frame (the release's "first" padding; space is padded
with zeros). The release config (THUDM/CogVideoX-2b and -5b ``vae/config.json``): widths
(128, 256, 256, 512), 3 residual blocks per encoder level and 4 per decoder level, GroupNorm
of 32 groups, no quant convs; 215,583,907 parameters.

Frame batches, as diffusers' ``AutoencoderKLCogVideoX`` walks a clip. Every GroupNorm takes
its statistics over all frames of its input, so the result depends on how the clip is cut:
like the release, the encoder takes 8 frames at a time (the first batch also the remainder:
17 frames go as 9 + 8) and the decoder 2 latent frames at a time (13 latents go as 3 + 2 +
2 + ...), each batch continuing the previous one through the convolutions' ``CausalCache``.
In a batch, the time downsampler averages pairs of frames (an odd batch keeps its first
frame alone), and the time upsampler repeats frames (an odd batch's first frame once), so
an odd number of latent frames decodes to ``1 + 4(T - 1)`` frames and an even one, as in
diffusers, to ``4 T``.

Encoder: conv_in -> levels (residual blocks, then a stride-2 conv per frame, after a time
average in the first log2(4) levels; none after the last) -> mid (2 residual blocks) ->
GroupNorm, SiLU, conv_out -> (mu, logvar).
Decoder: conv_in -> mid -> levels (residual blocks, then nearest 2x upsampling, in time too
in the first two levels, and a 3x3 conv per frame) -> norm_out, SiLU, conv_out. Every
decoder norm is a spatial norm, ``GroupNorm(f) * scale(z) + shift(z)``, with ``z`` the
batch's latents resized (nearest) to ``f``'s frames and pixels.

Tiles (``CogVideoXTiling``): optional overlapping spatial tiles, each walked in frame
batches, blended linearly over the overlap as diffusers' ``tiled_encode``/``tiled_decode``.

Latents at the public interface are ``z * scaling_factor`` (1.15258426 for CogVideoX-2B,
0.7 for -5B and 1.5-5B), as diffusers' CogVideoX pipelines scale them. Key maps:
``vae_keys`` beside this file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.causal3d import (
    CausalCache,
    CausalConv3d,
    LatentVideoVAE,
    blend_,
    posterior_sample,
)


@dataclass(frozen=True)
class CogVideoXVAEConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    norm_num_groups: int = 32
    norm_eps: float = 1e-6  # encoder residual blocks only; other norms use 1e-6 (as diffusers)
    temporal_compression_ratio: int = 4
    scaling_factor: float = 1.15258426
    sample_frames_batch: int = 8  # diffusers' num_sample_frames_batch_size
    latent_frames_batch: int = 2  # diffusers' num_latent_frames_batch_size

    def __post_init__(self) -> None:
        widths, groups = self.block_out_channels, self.norm_num_groups
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError("block_out_channels needs at least 2 positive widths")
        if self.latent_channels < 1 or self.layers_per_block < 1 or groups < 1:
            raise ValueError("latent_channels, layers_per_block and norm_num_groups must be > 0")
        if any(c % groups for c in widths):
            raise ValueError(f"every width must be divisible by norm_num_groups={groups}")
        r = self.temporal_compression_ratio
        if r < 1 or r & (r - 1) or r > self.spatial_ratio:
            raise ValueError(f"temporal_compression_ratio must be a power of 2 up to "
                             f"{self.spatial_ratio}, got {r}")  # fmt: skip
        if self.norm_eps <= 0 or self.scaling_factor <= 0:
            raise ValueError("norm_eps and scaling_factor must be positive")
        if self.sample_frames_batch < 1 or self.sample_frames_batch % r:
            raise ValueError(f"sample_frames_batch must be a positive multiple of {r}")
        if self.latent_frames_batch < 2 or self.latent_frames_batch % 2:
            raise ValueError("latent_frames_batch must be even (an odd batch decodes to "
                             "1 + r (n - 1) frames, not r n)")  # fmt: skip

    @property
    def z_dim(self) -> int:
        return self.latent_channels

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_ratio(self) -> int:
        return self.temporal_compression_ratio

    @property
    def time_levels(self) -> int:
        """How many levels (the first ones) also resample time."""
        return int(math.log2(self.temporal_compression_ratio))

    @property
    def latents_mean(self) -> tuple[float, ...]:
        return (0.0,) * self.latent_channels

    @property
    def latents_std(self) -> tuple[float, ...]:
        return (1.0 / self.scaling_factor,) * self.latent_channels


COGVIDEOX_VAE = CogVideoXVAEConfig()
COGVIDEOX_VAE_2B = COGVIDEOX_VAE
COGVIDEOX_VAE_5B = dataclasses.replace(COGVIDEOX_VAE, scaling_factor=0.7)  # also 1.5-5B
COGVIDEOX_VAE_TINY = CogVideoXVAEConfig(
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4
)


@dataclass(frozen=True)
class CogVideoXTiling:
    """Overlapping spatial tiles, in latent cells, as (height, width).

    Tiles of ``tile`` cells start every ``tile - overlap`` cells; each blends its first
    ``overlap`` rows / columns with the tile above / to its left and keeps ``tile -
    overlap``. The default is diffusers' ``enable_tiling()`` for its 480x720 sample size:
    240x360-pixel tiles, overlap factors 1/6 and 1/5. Frames not larger than a tile are
    not tiled.
    """

    tile: tuple[int, int] = (30, 45)
    overlap: tuple[int, int] = (5, 9)

    def __post_init__(self) -> None:
        if any(t < 2 or not 0 <= o < t for t, o in zip(self.tile, self.overlap, strict=True)):
            raise ValueError(
                f"tile={self.tile}, overlap={self.overlap}: need tile >= 2 and 0 <= overlap < tile"
            )


DIFFUSERS_TILING = CogVideoXTiling()


class CausalConv(CausalConv3d):
    """A causal 3x3x3 conv whose stream starts from copies of its first frame, not zeros."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        buffer, present = self.frame_buffer(x, cache)
        present.copy_(x)
        if cache is None or cache.past(self) is None:
            buffer[:, :, : self.past_frames] = x[:, :, :1]
        return self.forward_buffer(buffer, cache)


def conv2d_frames(conv: nn.Conv2d, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """``conv`` applied to every frame of ``B, C, T, H, W``."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, **kwargs)


def resize_like_frames(z: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``z`` resized (nearest) to ``size`` (T, H, W); an odd T > 1 keeps its first frame apart."""
    t, hw = size[0], tuple(size[1:])
    if t > 1 and t % 2:
        first = F.interpolate(z[:, :, :1], size=(1, *hw))
        return torch.cat([first, F.interpolate(z[:, :, 1:], size=(t - 1, *hw))], dim=2)
    return F.interpolate(z, size=tuple(size))


class SpatialNorm(nn.Module):
    """``GroupNorm(f) * scale(z) + shift(z)``, ``scale``/``shift`` 1x1x1 convs of the latents."""

    def __init__(self, dim: int, z_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.scale = nn.Conv3d(z_dim, dim, 1)
        self.shift = nn.Conv3d(z_dim, dim, 1)

    def forward(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = resize_like_frames(z, f.shape[2:])
        return self.norm(f) * self.scale(z) + self.shift(z)


def _norm(layer: nn.Module, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    return layer(x) if z is None else layer(x, z)


class ResidualBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``, the skip through a 1x1x1 conv
    when the width changes. Norms are GroupNorms, or spatial norms given ``z_dim``."""

    def __init__(
        self, c_in: int, c_out: int, groups: int, eps: float, z_dim: int | None = None
    ) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            if z_dim is None:
                return nn.GroupNorm(groups, c, eps=eps)
            return SpatialNorm(c, z_dim, groups)

        self.norm1 = norm(c_in)
        self.conv1 = CausalConv(c_in, c_out)
        self.norm2 = norm(c_out)
        self.conv2 = CausalConv(c_out, c_out)
        self.shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else None

    def forward(
        self, x: torch.Tensor, cache: CausalCache, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.conv1(F.silu(_norm(self.norm1, x, z)), cache)
        h = self.conv2(F.silu(_norm(self.norm2, h, z)), cache)
        return h + (x if self.shortcut is None else self.shortcut(x))


class Downsample(nn.Module):
    """If ``temporal``, average pairs of frames (an odd count keeps its first frame alone);
    then halve H and W with a stride-2 3x3 conv per frame, padded right and bottom."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            k = x.shape[2] % 2
            x = torch.cat([x[:, :, :k], (x[:, :, k::2] + x[:, :, k + 1 :: 2]) / 2], dim=2)
        return conv2d_frames(self.conv, F.pad(x, (0, 1, 0, 1)), stride=(1, 2, 2))


class Upsample(nn.Module):
    """If ``temporal`` and there is more than one frame, repeat every frame twice (an odd
    count keeps its first frame once); then nearest 2x in space and a 3x3 conv per frame."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal and x.shape[2] > 1:
            k = x.shape[2] % 2
            x = torch.cat([x[:, :, :k], x[:, :, k:].repeat_interleave(2, dim=2)], dim=2)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return conv2d_frames(self.conv, x, padding=(0, 1, 1))


class Level(nn.Module):
    """Residual blocks, then an optional resampler."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(blocks)
        self.resample = resample

    def forward(
        self, x: torch.Tensor, cache: CausalCache, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.res:
            x = block(x, cache, z)
        return x if self.resample is None else self.resample(x)


class Encoder(nn.Module):
    def __init__(self, config: CogVideoXVAEConfig) -> None:
        super().__init__()
        widths, groups, eps = config.block_out_channels, config.norm_num_groups, config.norm_eps
        self.conv_in = CausalConv(3, widths[0])
        levels, c_in = [], widths[0]
        for i, c in enumerate(widths):
            blocks = [ResidualBlock(c_in if j == 0 else c, c, groups, eps)
                      for j in range(config.layers_per_block)]  # fmt: skip
            down = Downsample(c, temporal=i < config.time_levels) if i < len(widths) - 1 else None
            levels.append(Level(blocks, down))
            c_in = c
        self.down = nn.ModuleList(levels)
        self.mid = Level([ResidualBlock(c, c, groups, eps) for _ in range(2)], None)
        self.norm_out = nn.GroupNorm(groups, c, eps=1e-6)
        self.conv_out = CausalConv(c, 2 * config.latent_channels)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for level in self.down:
            x = level(x, cache)
        x = self.mid(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    def __init__(self, config: CogVideoXVAEConfig) -> None:
        super().__init__()
        widths, groups, eps = config.block_out_channels[::-1], config.norm_num_groups, 1e-6
        z_dim = config.latent_channels
        self.conv_in = CausalConv(z_dim, widths[0])
        self.mid = Level(
            [ResidualBlock(widths[0], widths[0], groups, eps, z_dim) for _ in range(2)], None
        )
        levels, c_in = [], widths[0]
        for i, c in enumerate(widths):
            blocks = [ResidualBlock(c_in if j == 0 else c, c, groups, eps, z_dim)
                      for j in range(config.layers_per_block + 1)]  # fmt: skip
            up = Upsample(c, temporal=i < config.time_levels) if i < len(widths) - 1 else None
            levels.append(Level(blocks, up))
            c_in = c
        self.up = nn.ModuleList(levels)
        self.norm_out = SpatialNorm(c, z_dim, groups)
        self.conv_out = CausalConv(c, 3)

    def forward(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.mid(self.conv_in(z, cache), cache, z)
        for level in self.up:
            x = level(x, cache, z)
        return self.conv_out(F.silu(self.norm_out(x, z)), cache)


def frame_batches(frames: int, size: int) -> list[slice]:
    """diffusers' cut of ``frames`` into batches of ``size``; the first takes the remainder."""
    count = max(frames // size, 1)
    first = frames - size * (count - 1)
    return [slice(0, first)] + [slice(first + size * i, first + size * (i + 1))
                                for i in range(count - 1)]  # fmt: skip


def decoded_frames(n: int, r: int) -> int:
    """Frames a batch of ``n`` latent frames decodes to (an odd batch's first gives one)."""
    return r * n if n % 2 == 0 else 1 + r * (n - 1)


def tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tiling: CogVideoXTiling,
    unit_in: int,
    unit_out: int,
) -> torch.Tensor:
    """``fn`` over overlapping spatial tiles of ``x``, blended as diffusers' CogVideoX tiling.

    A latent cell is ``unit_in`` cells of ``x`` and ``unit_out`` of the output (1 and 8 to
    decode, 8 and 1 to encode). Tiles are walked row by row; each blends its top rows with
    the (blended) tile above, its left columns with the (blended) tile to its left, and
    writes its top-left corner. Only the previous row of tiles is held besides the output.
    """
    (th, tw), (oh, ow) = tiling.tile, tiling.overlap
    height, width = x.shape[-2:]
    out, above = None, []
    for row, y in enumerate(range(0, height, (th - oh) * unit_in)):
        tiles: list[torch.Tensor] = []
        for col, x0 in enumerate(range(0, width, (tw - ow) * unit_in)):
            tile = fn(x[..., y : y + th * unit_in, x0 : x0 + tw * unit_in])
            if above:
                blend_(above[col], tile, oh * unit_out, dim=3)
            if tiles:
                blend_(tiles[-1], tile, ow * unit_out, dim=4)
            tiles.append(tile)
            if out is None:
                size = (height * unit_out // unit_in, width * unit_out // unit_in)
                out = tile.new_empty(*tile.shape[:3], *size)
            kh, kw = (th - oh) * unit_out, (tw - ow) * unit_out
            out[..., row * kh : (row + 1) * kh, col * kw : (col + 1) * kw] = tile[..., :kh, :kw]
        above = tiles
    return out


class CogVideoXVAE(LatentVideoVAE):
    """CogVideoX's video VAE. ``encode``/``decode`` need no gradients; ``moments`` and
    ``decode_raw`` keep them (training). ``tiling`` (a ``CogVideoXTiling``) splits frames
    larger than a tile into blended tiles; None walks whole frames."""

    label = "the CogVideoX VAE"

    def __init__(self, config: CogVideoXVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def moments(
        self, video: torch.Tensor, *, tiling: CogVideoXTiling | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior ``(mu, logvar)``, each ``B, z_dim, 1 + (T - 1) / 4, H / 8, W / 8``."""
        self._check_video(video)
        s = self.config.spatial_ratio
        if self._tiles(video, tiling, s):
            moments = tiled(self._encode_batches, video, tiling, s, 1)
        else:
            moments = self._encode_batches(video)
        mu, logvar = moments.chunk(2, dim=1)
        return mu, logvar

    @torch.no_grad()
    def encode_moments(
        self, video: torch.Tensor, *, tiling: CogVideoXTiling | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.moments(video, tiling=tiling)

    def encode(
        self,
        video: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiling: CogVideoXTiling | None = None,
    ) -> torch.Tensor:
        """Scaled latents ``z * scaling_factor`` of ``video`` (B, 3, 1 + 4k, H, W in [-1, 1]):
        ``z`` the posterior mean, or with ``sample`` a draw from the posterior."""
        mu, logvar = self.encode_moments(video, tiling=tiling)
        return self.normalize(posterior_sample(mu, logvar, generator) if sample else mu)

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        *,
        tile: int | None = None,
        tile_overlap: int | None = None,
        tiling: CogVideoXTiling | None = None,
    ) -> torch.Tensor:
        """Frames in [-1, 1] from scaled latents. ``tile`` (latent cells) is shorthand for
        square tiles overlapping by ``tile_overlap`` cells (default ``tile // 4``)."""
        self._check_latents(latents)
        if tile is not None:
            overlap = max(1, tile // 4) if tile_overlap is None else tile_overlap
            if tiling is not None or tile < 2 or not 0 <= overlap < tile:
                raise CineforgeError(
                    f"tile={tile}, tile_overlap={overlap}: need tile >= 2 and 0 <= overlap < "
                    f"tile (latent cells of {self.config.spatial_ratio} pixels), and no tiling"
                )
            tiling = CogVideoXTiling((tile, tile), (overlap, overlap))
        return self.decode_raw(self.denormalize(latents), tiling=tiling).clamp_(-1.0, 1.0)

    def decode_raw(self, z: torch.Tensor, *, tiling: CogVideoXTiling | None = None) -> torch.Tensor:
        """Unclamped frames from UNSCALED latents, with gradients when enabled (training)."""
        if self._tiles(z, tiling, 1):
            return tiled(self._decode_batches, z, tiling, 1, self.config.spatial_ratio)
        return self._decode_batches(z)

    def _tiles(self, x: torch.Tensor, tiling: CogVideoXTiling | None, unit: int) -> bool:
        if tiling is None:
            return False
        return x.shape[3] > tiling.tile[0] * unit or x.shape[4] > tiling.tile[1] * unit

    def _encode_batches(self, video: torch.Tensor) -> torch.Tensor:
        cache = CausalCache()
        batches = frame_batches(video.shape[2], self.config.sample_frames_batch)
        return torch.cat([self.encoder(video[:, :, b], cache) for b in batches], dim=2)

    def _decode_batches(self, z: torch.Tensor) -> torch.Tensor:
        b, _, n, height, width = z.shape
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        batches = frame_batches(n, self.config.latent_frames_batch)
        sizes = [decoded_frames(x.stop - x.start, r) for x in batches]
        video = z.new_empty(b, 3, sum(sizes), height * s, width * s)
        cache, at = CausalCache(), 0
        for batch, size in zip(batches, sizes, strict=True):
            video[:, :, at : at + size] = self.decoder(z[:, :, batch], cache)
            at += size
        return video
