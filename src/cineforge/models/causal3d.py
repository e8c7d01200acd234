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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

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
