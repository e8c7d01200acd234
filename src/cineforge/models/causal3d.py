"""Building blocks shared by the causal 3D video VAEs.

A causal video VAE encodes the first frame alone and then groups of frames, and every
convolution over time looks only at the past. That lets it stream: the video goes through
the network one chunk at a time, and each layer that looks back in time keeps the last
frames of its input in a ``CausalCache`` so that the next chunk continues exactly where the
previous one stopped. Peak memory is that of one chunk, whatever the video's length.

- ``CausalCache``: the past frames of every time-looking layer for one stream, passed down
  the calls explicitly and keyed by the layer itself (no slot counters).
- ``CausalConv3d``: a 3D convolution padded on the past side of the time axis only.
- ``decode_tiled``: decode a latent in overlapping spatial tiles and blend them linearly.
- ``Stage``: residual blocks, then an optional resampler (the 2D/3D VAEs' levels).
- ``LatentVideoVAE``: the public API every video VAE shares (normalised latents, posterior
  draws, tiled decode, input checks) over a subclass's ``moments`` and ``decode_raw``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError

CHANNELS_LAST = torch.channels_last_3d


class CausalCache:
    """The frames each time-looking layer needs from earlier chunks of one stream.

    Create one per encode/decode walk (or per tile). ``first_chunk`` is True until the walk
    calls ``next_chunk()``; layers whose first chunk is special (Wan's temporal resamplers)
    read it. A layer with nothing stored yet starts from zeros.
    """

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor] = {}
        self.chunk = 0

    @property
    def first_chunk(self) -> bool:
        return self.chunk == 0

    def next_chunk(self) -> None:
        self.chunk += 1

    def past(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(layer)

    def keep(self, layer: nn.Module, frames: torch.Tensor) -> None:
        """Store a copy of ``frames`` (a slice of a chunk), so the chunk itself can be freed."""
        self._frames[layer] = frames.clone()


class CausalConv3d(nn.Conv3d):
    """A 3D convolution that sees only the present and the past in time.

    ``padding=(pt, ph, pw)`` pads space by ``ph``/``pw`` on both sides, but time by
    ``2 * pt`` frames on the past side only: with a cache, the last frames of the previous
    chunk (zeros at the start of the stream), so a video fed in chunks gives the same
    result as fed whole with zeros in front.

    Inputs are assembled in a channels-last (NDHWC) buffer, past frames first: on CPU the
    convolution then runs without layout reorders (faster, no hidden copy of the input).
    A caller that produces the input itself can write it straight into the buffer
    (``frame_buffer`` then ``forward_buffer``) and save the copy ``forward`` makes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.past_frames = 2 * self.padding[0]
        self.space_padding = (0, self.padding[1], self.padding[2])

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if not self.past_frames:
            return self._conv(x)
        buffer, present = self.frame_buffer(x, cache)
        present.copy_(x)
        return self.forward_buffer(buffer, cache)

    def frame_buffer(
        self, like: torch.Tensor, cache: CausalCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer for past + present frames of ``like``'s shape, the past filled in, and
        the view of it where the present frames go."""
        b, c, t, h, w = like.shape
        p = self.past_frames
        buffer = torch.empty(
            (b, c, p + t, h, w), dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST
        )
        past = cache.past(self) if cache is not None else None
        missing = p - (0 if past is None else past.shape[2])
        buffer[:, :, :missing].zero_()
        if past is not None:
            buffer[:, :, missing:p] = past
        return buffer, buffer[:, :, p:]

    def forward_buffer(self, buffer: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """Convolve a filled ``frame_buffer``; keep its last frames for the next chunk."""
        if cache is not None:
            cache.keep(self, buffer[:, :, -self.past_frames :])
        return self._conv(buffer)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight, self.bias, self.stride, self.space_padding)


def decode_tiled(
    decode: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    scale: int,
) -> torch.Tensor:
    """Decode ``z`` (B, C, T, H, W) in overlapping square tiles and blend the overlaps.

    ``tile`` and ``overlap`` are in latent cells; ``scale`` is the VAE's spatial ratio.
    Each tile is decoded whole in time by ``decode`` (with its own cache). In an overlap
    the two tiles' pixels are mixed with weights that ramp linearly from one to the other;
    every output pixel is the weighted mean of the tiles covering it.
    """
    height, width = z.shape[-2:]
    out = weight_sum = None
    for y0 in _tile_starts(height, tile, overlap):
        for x0 in _tile_starts(width, tile, overlap):
            th, tw = min(tile, height), min(tile, width)
            pixels = decode(z[..., y0 : y0 + th, x0 : x0 + tw])
            if out is None:
                b, c, t = pixels.shape[:3]
                out = pixels.new_zeros(b, c, t, height * scale, width * scale)
                weight_sum = pixels.new_zeros(height * scale, width * scale)
            wy = _ramp(th * scale, overlap * scale, y0 > 0, y0 + th < height, pixels)
            wx = _ramp(tw * scale, overlap * scale, x0 > 0, x0 + tw < width, pixels)
            w = wy[:, None] * wx[None, :]
            ys = slice(y0 * scale, (y0 + th) * scale)
            xs = slice(x0 * scale, (x0 + tw) * scale)
            out[..., ys, xs].addcmul_(pixels, w)
            weight_sum[ys, xs] += w
            del pixels
    return out.div_(weight_sum)


def blend_(prev: torch.Tensor, cur: torch.Tensor, extent: int, dim: int) -> None:
    """Cross-fade in place: ``cur``'s first ``extent`` slices along ``dim`` ramp linearly
    from ``prev``'s last ones (weight 1 at the start) to ``cur``'s own (weight (e-1)/e)."""
    e = min(prev.shape[dim], cur.shape[dim], extent)
    if e <= 0:
        return
    shape = [1] * cur.ndim
    shape[dim] = e
    w = (torch.arange(e, dtype=torch.float64) / e).to(cur.dtype).view(shape).to(cur.device)
    head = cur.narrow(dim, 0, e)
    head.copy_(prev.narrow(dim, prev.shape[dim] - e, e) * (1 - w) + head * w)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def _ramp(size: int, ramp: int, rise: bool, fall: bool, like: torch.Tensor) -> torch.Tensor:
    """1D blending weights: 1 inside, linear (never 0) over ``ramp`` pixels at open edges."""
    w = like.new_ones(size)
    steps = torch.arange(1, ramp + 1, dtype=like.dtype, device=like.device) / (ramp + 1)
    n = min(ramp, size)
    if rise:
        w[:n] = torch.minimum(w[:n], steps[:n])
    if fall:
        w[size - n :] = torch.minimum(w[size - n :], steps[:n].flip(0))
    return w


def posterior_sample(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """A draw ``mu + exp(logvar / 2) * eps`` from a VAE's diagonal Gaussian posterior, with
    ``eps`` from ``generator`` (log-variance clamped to [-30, 20] as the releases do)."""
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + std * noise


class Stage(nn.Module):
    """Residual blocks, then an optional resampler."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res:
            x = block(x)
        return x if self.resample is None else self.resample(x)


class LatentVideoVAE(nn.Module):
    """Public API of a video VAE over two methods a subclass defines:

    - ``moments(video) -> (mu, logvar)``, each ``B, z_dim, 1 + (T - 1) / r, H / s, W / s``
      (r, s = ``config.temporal_ratio``, ``config.spatial_ratio``), with gradients when
      they are enabled (training);
    - ``decode_raw(z) -> frames``: unclamped frames from raw latents, likewise.

    ``config`` needs ``z_dim``, ``spatial_ratio``, ``temporal_ratio``, ``latents_mean`` and
    ``latents_std``. Latents at the public interface are normalised per channel,
    ``(mu - mean) / std``; ``encode``/``decode`` run without gradients.
    """

    label = "the VAE"  # names the model in error messages
    # the submodules ``moments`` runs through: a decoder-only fine-tune freezes them, keeping
    # the latent space a DiT was trained on (empty: not supported by this VAE)
    encoder_modules: tuple[str, ...] = ()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruct a video through the posterior mean."""
        return self.decode(self.encode(video))

    @torch.no_grad()
    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior ``(mu, logvar)`` of ``video`` (B, 3, 1 + rk, H, W in [-1, 1])."""
        return self.moments(video)

    def encode(
        self, video: torch.Tensor, *, sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalised latents of ``video``: the posterior mean, or a draw with ``sample``."""
        mu, logvar = self.encode_moments(video)
        z = posterior_sample(mu, logvar, generator) if sample else mu
        return self.normalize(z)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, *, tile: int | None = None, tile_overlap: int | None = None
    ) -> torch.Tensor:
        """Frames in [-1, 1], ``B, 3, 1 + r (T_lat - 1), s H_lat, s W_lat``, from normalised
        latents. ``tile`` (latent cells) decodes overlapping ``tile x tile`` spatial tiles one
        at a time and blends them linearly over ``tile_overlap`` cells (default ``tile // 4``):
        less memory at large resolutions, small differences near tile borders."""
        self._check_latents(latents)
        z = self.denormalize(latents)
        if tile is None:
            return self.decode_raw(z).clamp_(-1.0, 1.0)
        overlap = max(1, tile // 4) if tile_overlap is None else tile_overlap
        if tile < 2 or not 0 <= overlap < tile:
            raise CineforgeError(
                f"tile={tile}, tile_overlap={overlap}: need tile >= 2 and 0 <= overlap < tile "
                f"(both in latent cells of {self.config.spatial_ratio} pixels)"
            )
        out = decode_tiled(
            self.decode_raw, z, tile=tile, overlap=overlap, scale=self.config.spatial_ratio
        )
        return out.clamp_(-1.0, 1.0)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(z)
        return (z - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._latent_stats(latents)
        return latents * std + mean

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def column(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)

        return column(self.config.latents_mean), column(self.config.latents_std)

    def _check_video(self, video: torch.Tensor) -> None:
        r, s = self.config.temporal_ratio, self.config.spatial_ratio
        if video.ndim != 5 or video.shape[1] != 3:
            raise CineforgeError(
                f"the VAE encodes videos shaped (B, 3, T, H, W), got {tuple(video.shape)}"
            )
        frames, height, width = video.shape[2:]
        if frames < 1 or (frames - 1) % r or height % s or width % s:
            raise CineforgeError(
                f"video of {frames} frames at {height}x{width}: {self.label} needs {r}k+1 "
                f"frames and height/width divisible by {s}; trim or pad the video (e.g. to "
                f"{1 + r * max(0, (frames - 1) // r)} frames at {height // s * s}x{width // s * s})"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim or 0 in latents.shape:
            raise CineforgeError(
                f"the VAE decodes non-empty latents shaped (B, {self.config.z_dim}, T, H, W), "
                f"got {tuple(latents.shape)}"
            )
