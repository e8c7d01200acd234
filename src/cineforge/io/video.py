"""Video and image files <-> uint8 frames, through PyAV (bundled FFmpeg) and Pillow.

Frames on disk are uint8 ``T, H, W, 3`` (RGB); video tensors are float ``C, T, H, W`` (or
``1, C, T, H, W``) in [-1, 1]. ``write_video`` picks the format from the extension:

- ``.mp4``: H.264 (libx264), yuv420p, constant quality ``crf``; width and height must be even.
  x264's macroblock-tree rate control is off (``mbtree=0``): with it, identical frames
  encoded to different pixels in up to 10 of 16 runs here (threaded or not), and a seed
  must reproduce the file, not only the tensor.
- ``.webm``: VP9 (libvpx-vp9), yuv420p, constant quality ``crf``; even sizes too.
- ``.gif``: FFmpeg's GIF encoder, one 256-colour palette per frame (Pillow median cut),
  looping forever. GIF stores delays in 1/100 s, so 16 fps reads back as 16.67.
- ``.png``: one frame -> that file; T frames -> ``<stem>_0000.png`` ... ``<stem>_{T-1}.png``
  beside it (at least 4 digits), the named file itself is not written. Frames of an earlier
  sequence of that name that this write did not make (``<stem>_<4+ digits>.png``, e.g. the
  tail of a longer one) are removed, so the folder holds one sequence.

Nothing is written in place: every file goes to a temporary file beside its target (a hidden
``.<stem>.partial-<random><suffix>``) and is renamed over the target only when all files are
complete. A write error (a full disk) or an interrupt leaves the existing files as they were
and no temporary file behind. ``check_output_path`` says before any work whether a path can
be written.
"""

import contextlib
import errno
import math
import numbers
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cineforge.errors import CineforgeError

__all__ = [
    "VIDEO_EXTENSIONS",
    "check_fps",
    "check_output_path",
    "from_uint8_frames",
    "read_image",
    "read_video",
    "to_uint8_frames",
    "write_image",
    "write_video",
]

_CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9"}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".png")


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """``C, T, H, W`` (or ``1, C, T, H, W``) float in [-1, 1] -> uint8 ``T, H, W, C`` (rounded,
    clamped)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise CineforgeError(
                f"to_uint8_frames takes one video, got a batch of {video.shape[0]}; pass video[i]"
            )
        video = video[0]
    if video.ndim != 4:
        raise CineforgeError(
            f"expected a video tensor C, T, H, W, got shape {tuple(video.shape)}"
        )
    pixels = ((video.detach().float() + 1) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def from_uint8_frames(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 ``T, H, W, C`` -> float32 ``C, T, H, W`` in [-1, 1] (inverse of to_uint8_frames)."""
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise CineforgeError(
            f"expected uint8 frames T, H, W, C, got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames.permute(3, 0, 1, 2).float() / 127.5 - 1


def _as_frames(frames: np.ndarray | Tensor) -> np.ndarray:
    """uint8 ``T, H, W, 3`` from uint8 frames (array or tensor) or a float video tensor."""
    if isinstance(frames, Tensor) and frames.is_floating_point():
        frames = to_uint8_frames(frames)
    frames = frames.cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise CineforgeError(
            f"expected RGB uint8 frames T, H, W, 3 with T >= 1 (or a float video tensor "
            f"C, T, H, W in [-1, 1]), got {frames.dtype} {frames.shape}"
        )
    return np.ascontiguousarray(frames)


def _encode(container, stream, images) -> None:
    for image in images:
        container.mux(stream.encode(image))
    container.mux(stream.encode())


def _check_even(codec: str, frames: np.ndarray) -> None:
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise CineforgeError(
            f"{codec} video needs an even width and height (yuv420p), got {width}x{height}; "
            f"crop or resize to {width - width % 2}x{height - height % 2}, or write .gif/.png"
        )


def _write_encoded(path: Path, codec: str, frames: np.ndarray, fps: Fraction, crf: int) -> None:
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        extra = {"b": "0"} if codec == "libvpx-vp9" else {"x264-params": "mbtree=0"}
        options = {"crf": str(crf)} | extra
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        _encode(container, stream, (av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames))


def _palette_frame(frame: np.ndarray) -> av.VideoFrame:
    """An 8-bit palette frame: Pillow's median-cut palette for this frame."""
    indexed = Image.fromarray(frame).quantize(256)
    rgb = np.zeros((256, 3), np.uint8)
    palette = np.asarray(indexed.getpalette(), np.uint8).reshape(-1, 3)[:256]
    rgb[: len(palette)] = palette
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
    return av.VideoFrame.from_ndarray((np.asarray(indexed), argb), format="pal8")


def _write_gif(path: Path, frames: np.ndarray, fps: Fraction) -> None:
    with av.open(str(path), "w") as container:  # the GIF muxer loops forever by default
        stream = container.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "pal8"
        _encode(container, stream, (_palette_frame(f) for f in frames))


def check_output_path(path: str | Path) -> Path:
    """Raise a CineforgeError unless ``write_video`` can write ``path``: a known extension,
    not a folder, and a writable folder to hold it (missing folders are created when writing:
    their nearest existing one must be writable). Writes nothing; call it before the work
    that makes the frames. Returns ``path`` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise CineforgeError(f"{path} is a folder; name a file in it, e.g. {path / 'video.mp4'}")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        what = f"unknown extension {path.suffix!r}" if path.suffix else "no extension"
        raise CineforgeError(
            f"cannot write video to {path}: {what}; use one of {', '.join(VIDEO_EXTENSIONS)}"
        )
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if folder is None:  # not even the working folder exists: writing will say why
        return path
    if not folder.is_dir():
        raise CineforgeError(f"cannot write {path}: {folder} is a file, not a folder; "
                             "choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CineforgeError(f"cannot write {path}: the folder {folder} is not writable; "
                             "choose another output folder")
    return path


def check_fps(fps: float) -> None:
    """Raise a CineforgeError unless ``fps`` is a usable frame rate (a finite number > 0)."""
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and _rate(fps) > 0):
        raise CineforgeError(f"{{fps}} must be a number of frames per second > 0, got {fps!r}",
                             fields=("fps",))


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


@contextlib.contextmanager
def _replacing(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths`` to write; when the block ends without an error each
    is renamed over its path, else all are removed and ``paths`` stay as they were."""
    partials = [p.with_name(f".{p.stem}.partial-{secrets.token_hex(4)}{p.suffix}")
                for p in paths]
    try:
        yield partials
        for partial, path in zip(partials, paths, strict=True):
            os.replace(partial, path)
    except BaseException:  # an interrupt too: never leave a partial file behind
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise


def _write_replacing(paths: Sequence[Path], write: Callable[[list[Path]], None]) -> None:
    """Create the folder, ``write(partials)``, then rename the partials over ``paths`` (see
    ``_replacing``); a write error (a full disk, an I/O error) becomes a CineforgeError."""
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        with _replacing(paths) as partials:
            write(partials)
    except OSError as error:  # av.error.OSError is one too
        what = paths[0] if len(paths) == 1 else f"{len(paths)} frames to {paths[0].parent}"
        full = error.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))
        raise CineforgeError(
            f"cannot write {what} ({error.strerror or error}); existing files are unchanged; "
            + ("free some space or write elsewhere" if full else "write elsewhere")
        ) from error


def _remove_stale_frames(path: Path, written: Sequence[Path]) -> None:
    """Remove the ``<stem>_<4+ digits><suffix>`` files beside ``path`` that this write did
    not make: frames of an earlier, longer sequence of the same name."""
    pattern = re.compile(re.escape(path.stem) + r"_\d{4,}" + re.escape(path.suffix))
    keep = {p.name for p in written}
    for old in path.parent.iterdir():
        if pattern.fullmatch(old.name) and old.name not in keep and old.is_file():
            old.unlink()


def write_video(
    path: str | Path, frames: np.ndarray | Tensor, fps: float = 16, *, crf: int = 18
) -> list[Path]:
    """Write frames (uint8 ``T, H, W, 3`` or a float video tensor) by extension; create parent
    folders; return the written paths (several for a ``.png`` sequence). Existing files are
    replaced only once the new ones are complete (see the module)."""
    path = check_output_path(path)
    check_fps(fps)
    suffix = path.suffix.lower()
    frames = _as_frames(frames)
    rate = _rate(fps)
    if suffix in _CODECS:
        codec = _CODECS[suffix]
        _check_even(codec, frames)
        _write_replacing([path], lambda tmp: _write_encoded(tmp[0], codec, frames, rate, crf))
        return [path]
    if suffix == ".gif":
        _write_replacing([path], lambda tmp: _write_gif(tmp[0], frames, rate))
        return [path]
    digits = max(4, len(str(len(frames) - 1)))
    targets = [path] if len(frames) == 1 else [
        path.with_name(f"{path.stem}_{i:0{digits}d}{path.suffix}") for i in range(len(frames))
    ]

    def write_frames(partials: list[Path]) -> None:
        for partial, frame in zip(partials, frames, strict=True):
            _save_image(partial, frame)

    _write_replacing(targets, write_frames)
    _remove_stale_frames(path, targets)
    return targets


# FFmpeg's decoders of text art: its text demuxers turn any .txt/.nfo/.asc file into "video"
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of the first video stream as uint8 ``T, H, W, 3`` RGB, and the frame rate."""
    path = Path(path)
    if not path.is_file():
        raise CineforgeError(f"video file not found: {path}; check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CineforgeError(f"{path} has no video stream; pass a video file")
            stream = container.streams.video[0]
            if stream.codec_context.name in TEXT_CODECS:
                raise CineforgeError(f"{path} is a text file, not a video (FFmpeg reads it as "
                                     f"{stream.codec_context.name} art); pass a video file")
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            rate = stream.average_rate or stream.guessed_rate
    except av.FFmpegError as error:
        raise CineforgeError(
            f"cannot decode video {path} ({error}); the file is corrupt or not a video, "
            "re-export or re-download it"
        ) from error
    if not frames:
        raise CineforgeError(f"video {path} has no frames; re-export it")
    return np.stack(frames), (float(rate) if rate else 0.0)


def write_image(path: str | Path, image: np.ndarray | Tensor) -> Path:
    """Write an RGB uint8 ``H, W, 3`` image (array or tensor; PNG, JPEG, ... by extension),
    replacing an existing file only once the new one is complete."""
    path = Path(path)
    image = image.cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise CineforgeError(
            f"expected an RGB uint8 image H, W, 3, got {image.dtype} {image.shape}; "
            "convert a video tensor with to_uint8_frames(video)[0]"
        )
    _write_replacing([path], lambda partials: _save_image(partials[0], image, path))
    return path


def _save_image(path: Path, image: np.ndarray, target: Path | None = None) -> None:
    try:
        Image.fromarray(image).save(path)
    except (KeyError, ValueError) as error:  # Pillow: unknown extension
        raise CineforgeError(
            f"cannot write image {target or path}: {error}; use .png (or .jpg)"
        ) from error


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 ``H, W, 3``."""
    path = Path(path)
    if not path.is_file():
        raise CineforgeError(f"image file not found: {path}; check the path")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:  # Pillow: UnidentifiedImageError, truncated file
        raise CineforgeError(
            f"cannot read image {path} ({error}); the file is corrupt or not an image"
        ) from error
