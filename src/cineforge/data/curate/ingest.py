"""Register video files in the catalog and probe them with PyAV.

A file that cannot be opened, has no video stream (a text file that FFmpeg reads as ANSI art
counts as none) or whose first frame does not decode is registered as ``rejected`` with a
reason (``unreadable: ...``, ``no_video``, ``no_frames``) instead of stopping the ingest. The
frame count is the header's only when the last frames decode; a damaged (truncated) file is
decoded to the end and registered with the frames that decode. Every usable source gets a
``split`` task. Registering a path twice does nothing, also when two ingests race.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import av
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cineforge.data.curate.catalog import Source, session_factory
from cineforge.data.curate.claims import add_tasks
from cineforge.errors import CineforgeError
from cineforge.io.video import TEXT_CODECS

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".gif"}
)


@dataclass(frozen=True)
class Probe:
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    bitrate: int
    codec: str


class ProbeError(Exception):
    """A file that is not a usable video; ``str(error)`` is the reason stored in the catalog."""


def probe(path: str | Path) -> Probe:
    """Stream facts of a video file; decodes its first and last frames to be sure it is
    readable, and counts the frames that decode when the last ones do not."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError("no_video: the file has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            if ctx.name in TEXT_CODECS:
                raise ProbeError(f"no_video: a text file (FFmpeg reads it as {ctx.name} art)")
            first = next(container.decode(stream), None)
            if first is None:
                raise ProbeError("no_frames: the video stream has no decodable frame")
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = container.duration / av.time_base if container.duration else 0.0
            frames = stream.frames or round(duration * fps)
            bitrate = stream.bit_rate or container.bit_rate or 0
            width, height, codec = ctx.width, ctx.height, ctx.name
    except av.FFmpegError as exc:
        raise ProbeError(f"unreadable: {exc}") from None
    if frames < 1 or fps <= 0 or not _last_frame_decodes(path, frames, fps):
        frames = count_frames(path)
        duration = frames / fps if fps > 0 else duration
    return Probe(duration, fps, frames, width, height, bitrate, codec)


def _last_frame_decodes(path: str | Path, frames: int, fps: float) -> bool:
    """Whether frame ``frames - 1`` (by timestamp, as ``scenes.iter_scene`` numbers them)
    decodes: a seek to the key frame before it and a decode to the end."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base, start = float(stream.time_base), stream.start_time or 0
            container.seek(start + int((frames - 1) / fps / base), stream=stream,
                           backward=True)
            last = max((f.pts for f in container.decode(stream) if f.pts is not None),
                       default=None)
    except av.FFmpegError:
        return False
    return last is not None and round((last - start) * base * fps) >= frames - 1


def count_frames(path: str | Path) -> int:
    """Frames of the first video stream that decode, up to the first that does not."""
    n = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                n += 1
    except av.FFmpegError:
        pass  # a damaged tail: the frames before it count
    return n


def find_videos(paths: Iterable[str | Path]) -> list[Path]:
    """Video files among ``paths``; folders are searched recursively by file suffix."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise CineforgeError(f"{p} does not exist; pass video files or folders")
    return [f.resolve() for f in found]


@dataclass(frozen=True)
class IngestReport:
    added: int
    rejected: int
    already_known: int


def ingest(engine: Engine, paths: Iterable[str | Path],
           progress: Callable[[Iterable[Path]], Iterable[Path]] = iter) -> IngestReport:
    """Probe and register the videos under ``paths``; queue ``split`` for the usable ones."""
    files = find_videos(paths)
    sessions = session_factory(engine)
    with sessions() as session:
        known = set(session.scalars(select(Source.path).where(
            Source.path.in_([str(f) for f in files]))))
    added = rejected = 0
    for f in progress([f for f in files if str(f) not in known]):
        try:
            p = probe(f)
            source = Source(path=str(f), status="ok", duration_s=p.duration_s, fps=p.fps,
                            frames=p.frames, width=p.width, height=p.height, bitrate=p.bitrate,
                            codec=p.codec)
        except ProbeError as exc:
            source = Source(path=str(f), status="rejected", reason=str(exc))
        if not _register(sessions, source):
            continue  # a concurrent ingest registered it first: already known
        added += source.status == "ok"
        rejected += source.status == "rejected"
    return IngestReport(added, rejected, len(files) - added - rejected)


def _register(sessions, source: Source) -> bool:
    """Add ``source`` (and its split task); False if its path was registered meanwhile."""
    try:
        with sessions.begin() as session:
            session.add(source)
            session.flush()
            if source.status == "ok":
                add_tasks(session, "split", [source.id])
    except IntegrityError:
        with sessions() as session:
            if session.scalar(select(Source.id).where(Source.path == source.path)) is None:
                raise
        return False
    return True
