"""Scene splitting in one streaming pass over the decoded frames.

Each frame (downscaled to at most ``analysis_width`` pixels wide) goes to PySceneDetect's
AdaptiveDetector (hard cuts: a content change far above its neighbours') and ThresholdDetector
(fades through black); their cuts are merged. The same pass keeps small per-frame statistics
(row/column means and maxima of the luma), from which each scene gets its mean brightness and
its black borders without a second decode. Scenes shorter than ``min_scene_s`` are rejected as
``too_short``; longer than ``max_scene_s`` are cut into equal pieces; too dark or too bright
scenes are rejected with that reason. ``transcode_scene`` writes a scene above the size or
frame-rate limits as its own smaller H.264 file.

Frame ``i`` of a video is the ``i``-th decoded frame (constant frame rate assumed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from cineforge.errors import CineforgeError


@dataclass(frozen=True)
class SplitConfig:
    min_scene_s: float = 2.0
    max_scene_s: float = 60.0
    adaptive_threshold: float = 3.0  # AdaptiveDetector: score / neighbours' mean score
    min_content_val: float = 15.0  # AdaptiveDetector: smallest content change that can cut
    fade_luma: float = 12.0  # a fade through black passes below this mean luma
    min_cut_gap_s: float = 0.5  # cuts closer than this merge into the first
    dark_below: float = 40.0  # mean luma (0..255) of the scene inside its crop
    bright_above: float = 225.0
    border_luma: float = 24.0  # edge rows/columns whose luma never exceeds this are border
    analysis_width: int = 256
    max_height: int = 1080  # transcode limits (used when the stage is given an output folder)
    max_fps: float = 30.0

    def __post_init__(self):
        if not 0 < self.min_scene_s < self.max_scene_s:
            raise ValueError("need 0 < min_scene_s < max_scene_s")
        if not 0 <= self.dark_below < self.bright_above <= 255:
            raise ValueError("need 0 <= dark_below < bright_above <= 255")
        if self.analysis_width < 16 or self.max_height < 16 or self.max_fps <= 0:
            raise ValueError("analysis_width and max_height must be >= 16, max_fps > 0")


@dataclass(frozen=True)
class SceneCut:
    index: int
    start_frame: int
    end_frame: int  # exclusive
    crop: tuple[int, int, int, int]  # x, y, w, h in source pixels
    brightness: float
    reject_reason: str | None = None


@dataclass
class _Stats:
    """Per-frame luma statistics at analysis resolution (``n`` frames of ``h x w``)."""

    row_mean: list[np.ndarray] = field(default_factory=list)
    col_mean: list[np.ndarray] = field(default_factory=list)
    row_max: list[np.ndarray] = field(default_factory=list)
    col_max: list[np.ndarray] = field(default_factory=list)

    def add(self, luma: np.ndarray) -> None:
        self.row_mean.append(luma.mean(axis=1, dtype=np.float32))
        self.col_mean.append(luma.mean(axis=0, dtype=np.float32))
        self.row_max.append(luma.max(axis=1))
        self.col_max.append(luma.max(axis=0))


def _analysis_size(width: int, height: int, limit: int) -> tuple[int, int]:
    if width <= limit:
        return width, height
    return limit, max(2, round(height * limit / width / 2) * 2)


def iter_frames(path: str | Path, *, width: int | None = None, height: int | None = None,
                fmt: str = "rgb24") -> Iterator[np.ndarray]:
    """Decoded frames of the first video stream, optionally resized, one at a time."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format=fmt, width=width, height=height)


def detect(path: str | Path, config: SplitConfig) -> tuple[list[int], _Stats, float, tuple]:
    """Cut frames, per-frame statistics, fps and (width, height, analysis w, analysis h)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        width, height = stream.codec_context.width, stream.codec_context.height
    if not rate or not width:
        raise CineforgeError(f"{path}: no frame rate or size in the video stream")
    try:
        from scenedetect.common import FrameTimecode
        from scenedetect.detectors import AdaptiveDetector, ThresholdDetector
    except ImportError:
        raise CineforgeError(
            "scene splitting needs PySceneDetect: pip install --no-deps scenedetect==0.7.2 "
            "opencv-python-headless platformdirs 'click~=8.0,!=8.3.0'"
        ) from None
    aw, ah = _analysis_size(width, height, config.analysis_width)
    fps = Fraction(rate)
    adaptive = AdaptiveDetector(
        adaptive_threshold=config.adaptive_threshold,
        min_content_val=config.min_content_val,
        min_scene_len=1,
    )
    fades = ThresholdDetector(threshold=config.fade_luma, min_scene_len=1)
    cuts: list[int] = []
    stats = _Stats()
    timecode = None
    for i, bgr in enumerate(iter_frames(path, width=aw, height=ah, fmt="bgr24")):
        timecode = FrameTimecode(i, fps)
        cuts += [c.frame_num for c in adaptive.process_frame(timecode, bgr)]
        cuts += [c.frame_num for c in fades.process_frame(timecode, bgr)]
        # ITU-R BT.601 luma from BGR, as float32 then uint8 for the maxima
        luma = bgr @ np.array([0.114, 0.587, 0.299], np.float32)
        stats.add(luma.astype(np.uint8))
    if timecode is not None:
        cuts += [c.frame_num for c in adaptive.post_process(timecode)]
        cuts += [c.frame_num for c in fades.post_process(timecode)]
    return _merge(cuts, round(config.min_cut_gap_s * float(fps))), stats, float(fps), (
        width, height, aw, ah)


def _merge(cuts: list[int], gap: int) -> list[int]:
    kept: list[int] = []
    for c in sorted(set(cuts)):
        if c > 0 and (not kept or c - kept[-1] >= gap):
            kept.append(c)
    return kept


def _pieces(start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    n = math.ceil((end - start) / max_frames)
    bounds = [start + round(k * (end - start) / n) for k in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _border(maxima: np.ndarray, luma: float) -> tuple[int, int]:
    """(first, last + 1) of the non-border lines; the whole range when over half is border."""
    bright = np.flatnonzero(maxima > luma)
    if bright.size == 0 or (bright[-1] + 1 - bright[0]) * 2 < maxima.size:
        return 0, maxima.size
    return int(bright[0]), int(bright[-1]) + 1


def _scene_stats(stats: _Stats, start: int, end: int, config: SplitConfig, sizes: tuple):
    width, height, aw, ah = sizes
    row_max = np.max(stats.row_max[start:end], axis=0)
    col_max = np.max(stats.col_max[start:end], axis=0)
    y0, y1 = _border(row_max, config.border_luma)
    x0, x1 = _border(col_max, config.border_luma)
    rows = np.mean(stats.row_mean[start:end], axis=0)
    cols = np.mean(stats.col_mean[start:end], axis=0)
    # mean luma inside the crop: the frame's sum less the border bands (corners ~black)
    total = rows.sum() * aw
    outside = (rows[:y0].sum() + rows[y1:].sum()) * aw + (cols[:x0].sum() + cols[x1:].sum()) * ah
    brightness = float((total - outside) / max(1, (y1 - y0) * (x1 - x0)))
    sx, sy = width / aw, height / ah  # back to source pixels, rounded inwards, even sizes
    cx0, cy0 = math.ceil(x0 * sx), math.ceil(y0 * sy)
    cw = (math.floor(x1 * sx) - cx0) // 2 * 2
    ch = (math.floor(y1 * sy) - cy0) // 2 * 2
    return (cx0, cy0, cw, ch), brightness


def split_scenes(path: str | Path, config: SplitConfig) -> tuple[float, list[SceneCut]]:
    """The video's fps and its scenes, each with crop, brightness and a reject reason."""
    cuts, stats, fps, sizes = detect(path, config)
    n = len(stats.row_mean)
    if n == 0:
        raise CineforgeError(f"{path}: no decodable frames")
    bounds = [0, *cuts, n]
    segments = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if (end - start) / fps > config.max_scene_s:
            segments += _pieces(start, end, int(config.max_scene_s * fps))
        else:
            segments.append((start, end))
    scenes = []
    for index, (start, end) in enumerate(segments):
        crop, brightness = _scene_stats(stats, start, end, config, sizes)
        reason = None
        if (end - start) / fps < config.min_scene_s:
            reason = "too_short"
        elif brightness < config.dark_below:
            reason = "too_dark"
        elif brightness > config.bright_above:
            reason = "too_bright"
        scenes.append(SceneCut(index, start, end, crop, brightness, reason))
    return fps, scenes


def iter_scene(path: str | Path, start: int, end: int, crop: tuple[int, int, int, int], *,
               step: int = 1, fmt: str = "rgb24",
               offsets: set[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frame) for frames ``start, start + step, ... < end`` of a video, cropped (or,
    with ``offsets``, frames ``start + o`` only). Seeks to the key frame before ``start``;
    frame indices come from timestamps."""
    x, y, w, h = crop
    if offsets is not None:
        step, end = 1, min(end, start + max(offsets, default=-1) + 1)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate)
        base, first = float(stream.time_base), stream.start_time or 0
        if start > 0:
            container.seek(first + int(start / fps / base), stream=stream, backward=True)
        for frame in container.decode(stream):
            i = round((frame.pts - first) * base * fps)
            if i >= end:
                break
            if i >= start and (i - start) % step == 0 and (offsets is None or i - start in offsets):
                yield i, frame.to_ndarray(format=fmt)[y : y + h, x : x + w]


def read_scene(path: str | Path, start: int, end: int, crop: tuple[int, int, int, int], *,
               step: int = 1, fmt: str = "rgb24", max_side: int | None = None,
               offsets: set[int] | None = None) -> np.ndarray:
    """Frames ``start, start + step, ... < end`` (or ``start + o`` for ``o`` in ``offsets``)
    of a video, cropped, shrunk to at most ``max_side`` pixels on the long side: uint8
    ``T, H, W, C``."""
    frames = [_shrink(f, max_side) for _, f in iter_scene(path, start, end, crop, step=step,
                                                          fmt=fmt, offsets=offsets)]
    if not frames:
        raise CineforgeError(f"{path}: frames {start}..{end} are missing; re-ingest the file")
    return np.stack(frames)


def _shrink(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = frame.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def needs_transcode(width: int, height: int, fps: float, config: SplitConfig) -> bool:
    return height > config.max_height or fps > config.max_fps + 1e-3


def transcode_scene(path: str | Path, scene: SceneCut, fps: float, out: str | Path,
                    config: SplitConfig, crf: int = 20) -> Path:
    """Write ``scene`` (cropped) as H.264 at most ``max_height`` tall and ``max_fps``."""
    x, y, w, h = scene.crop
    scale = min(1.0, config.max_height / h)
    ow, oh = max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)
    out_fps = min(fps, config.max_fps)
    keep = fps / out_fps  # output frame k is scene frame round(k * keep)
    out = Path(out)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(out_fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = ow, oh, "yuv420p"
        stream.options = {"crf": str(crf)}
        k = 0
        for i, image in iter_scene(path, scene.start_frame, scene.end_frame, scene.crop):
            if i - scene.start_frame != round(k * keep):
                continue
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame.reformat(width=ow, height=oh)))
            k += 1
        container.mux(stream.encode())
    return out
