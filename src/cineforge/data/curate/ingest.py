"""Register video files in the catalog and probe them with PyAV.

A file that cannot be opened, has no video stream or whose first frame does not decode is
registered as ``rejected`` with a reason (``unreadable: ...``, ``no_video``, ``no_frames``)
instead of stopping the ingest. Every usable source gets a ``split`` task. Registering a path
twice does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import av
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cineforge.data.curate.catalog import Source, session_factory
from cineforge.data.curate.claims import add_tasks
from cineforge.errors import CineforgeError

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
    """Stream facts of a video file; decodes its first frame to be sure it is readable."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError("no_video: the file has no video stream")
            stream = container.streams.video[0]
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
            ctx = stream.codec_context
            return Probe(duration, fps, frames, ctx.width, ctx.height, bitrate, ctx.name)
    except av.FFmpegError as exc:
        raise ProbeError(f"unreadable: {exc}") from None


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
        with sessions.begin() as session:
            session.add(source)
            session.flush()
            if source.status == "ok":
                add_tasks(session, "split", [source.id])
        added += source.status == "ok"
        rejected += source.status == "rejected"
    return IngestReport(added, rejected, len(files) - added - rejected)
