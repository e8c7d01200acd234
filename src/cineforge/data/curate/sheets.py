"""Contact sheets: one JPEG per scene, so a user can look at what curation kept and rejected.

A sheet is four frames of the scene (at 1/8, 3/8, 5/8 and 7/8 of its length, cropped like the
scene) side by side under a caption line: the scene id, the verdict and, for a rejection, the
metric, its value and the threshold it broke. Kept scenes go to ``DIR/kept/``, rejected ones to
``DIR/rejected/STAGE-REASON/``; scenes still in progress get none. A scene whose frames cannot
be read (a moved file) is counted, not fatal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from cineforge.data.curate.catalog import Rejection, Scene
from cineforge.data.curate.scenes import read_scene
from cineforge.errors import CineforgeError

TILE_HEIGHT = 120
CAPTION_HEIGHT = 18
POSITIONS = (1 / 8, 3 / 8, 5 / 8, 7 / 8)


def caption_line(scene_id: int, rejection: Rejection | None,
                 duplicate_of: int | None = None) -> str:
    if rejection is None:
        return f"scene {scene_id}: kept"
    line = f"scene {scene_id}: {rejection.stage} {rejection.reason}"
    if duplicate_of is not None:
        line += f" of scene {duplicate_of}"
    if rejection.metric is not None and rejection.value is not None:
        line += f" ({rejection.metric} {rejection.value:.4g}"
        line += f", needs {rejection.op} {rejection.threshold:.4g})" if rejection.op else ")"
    return line


def sheet(frames: np.ndarray, caption: str):
    """A PIL image: ``frames`` (uint8 ``T, H, W, 3``) in a row under ``caption``."""
    from PIL import Image, ImageDraw

    tiles = []
    for f in frames:
        h, w = f.shape[:2]
        width = max(1, round(w * TILE_HEIGHT / h))
        tiles.append(Image.fromarray(f).resize((width, TILE_HEIGHT), Image.Resampling.BILINEAR))
    total = max(sum(t.width for t in tiles), 8 * len(caption))
    image = Image.new("RGB", (total, TILE_HEIGHT + CAPTION_HEIGHT), (0, 0, 0))
    x = 0
    for t in tiles:
        image.paste(t, (x, CAPTION_HEIGHT))
        x += t.width
    ImageDraw.Draw(image).text((4, 3), caption, fill=(255, 255, 255))
    return image


def scene_sample(engine: Engine, scene_id: int) -> np.ndarray:
    """Four frames of a scene at ``POSITIONS``, cropped, long side at most 320."""
    from cineforge.data.curate.stages import scene_video

    with Session(engine) as session:
        scene, path, start, end, crop = scene_video(session, scene_id)
        n = scene.end_frame - scene.start_frame
    picks = sorted({min(n - 1, int(p * n)) for p in POSITIONS})
    frames = [read_scene(path, start + i, start + i + 1, crop, max_side=320)[0] for i in picks]
    return np.stack(frames)


def write_contact_sheets(engine: Engine, folder: str | Path, kept: set[int]) -> dict[str, int]:
    """Write a sheet for each scene in ``kept`` and each rejected scene; counts per kind."""
    folder = Path(folder)
    with Session(engine) as session:
        rejected = {r.scene_id: r for r in session.scalars(select(Rejection))}
        legacy = session.execute(select(Scene.id, Scene.reject_stage, Scene.reject_reason,
                                        Scene.duplicate_of)
                                 .where(Scene.status == "rejected")).all()
    copies = {sid: dup for sid, _, _, dup in legacy if dup is not None}
    for sid, stage, reason, _ in legacy:  # rejected before reasons carried their limits
        rejected.setdefault(sid, Rejection(scene_id=sid, stage=stage or "?",
                                           reason=reason or "?"))
    counts = {"kept": 0, "rejected": 0, "unreadable": 0}
    for sid in sorted(kept | set(rejected)):
        r = rejected.get(sid)
        out = folder / "kept" if r is None else folder / "rejected" / f"{r.stage}-{r.reason}"
        try:
            frames = scene_sample(engine, sid)
        except (CineforgeError, OSError, ValueError):
            counts["unreadable"] += 1
            continue
        out.mkdir(parents=True, exist_ok=True)
        image = sheet(frames, caption_line(sid, r, copies.get(sid)))
        image.save(out / f"scene{sid:06d}.jpg", quality=85)
        counts["kept" if r is None else "rejected"] += 1
    return counts
