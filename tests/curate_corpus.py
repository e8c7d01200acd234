"""A tiny generated corpus for the curation tests: distinct synthetic clips (a smooth random
background panning under four moving shapes), joined with hard cuts and fades through black,
plus planted duplicates (re-encoded, resized, letterboxed: black bars the split stage crops
away), bad clips (dark, static, blurred, text-covered, too short), a letterboxed distinct clip
and a corrupt file. Clips are 64x64 at 12 fps, 3 s long. Also: PostgreSQL test databases
(``catalog_db``) and a stand-in VAE for the encode stage (``make_encoder``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

FPS = 12
SIZE = 64


def clip(seed: int, frames: int = 36, size: int = SIZE, moving: bool = True) -> np.ndarray:
    """uint8 ``T, H, W, 3``: a smooth random colour field panning 1 px/frame, four shapes."""
    rng = np.random.default_rng(seed)
    canvas = size + frames
    coarse = rng.uniform(50, 210, (3, 3, 3)).astype(np.float32)
    field_ = cv2.resize(coarse, (canvas, canvas), interpolation=cv2.INTER_CUBIC)
    shapes = []
    for _ in range(4):  # bright on dark or dark on bright: every edge has contrast
        base = 0 if field_.mean() > 130 else 190
        colour = tuple(int(v) for v in base + rng.integers(0, 66, 3))
        pos = rng.uniform(0.2 * size, 0.8 * size, 2)
        speed, angle = rng.uniform(1.0, 2.0), rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.cos(angle), np.sin(angle)]) if moving else np.zeros(2)
        shapes.append((colour, pos, vel, int(rng.integers(4, 9)), bool(rng.integers(2))))
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        off = t if moving else 0
        img = np.clip(field_[off : off + size, off : off + size], 0, 255).astype(np.uint8).copy()
        for colour, pos, vel, r, round_ in shapes:
            x, y = (pos + t * vel) % size
            if round_:
                cv2.circle(img, (int(x), int(y)), r, colour, -1, lineType=cv2.LINE_AA)
            else:
                cv2.rectangle(img, (int(x - r), int(y - r)), (int(x + r), int(y + r)), colour, -1)
        out[t] = img
    return out


def write(path: Path, frames: np.ndarray, fps: int = FPS, crf: int = 18) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def fade(a: np.ndarray, b: np.ndarray, n: int = 6) -> tuple[np.ndarray, int]:
    """``a`` fading out to black over its last ``n`` frames, then ``b`` fading in over its
    first ``n``; returns the frames and the ground-truth cut (first frame of ``b``)."""
    ramp = np.linspace(1.0, 0.0, n + 1)[1:, None, None, None]
    a, b = a.astype(np.float32), b.astype(np.float32)
    a[-n:] *= ramp
    b[:n] *= ramp[::-1]
    return np.concatenate([a, b]).round().astype(np.uint8), len(a)


def dark(frames: np.ndarray) -> np.ndarray:
    return (frames.astype(np.float32) * 0.12).astype(np.uint8)


def blurred(frames: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def with_text(frames: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for f in out:
        for row, words in enumerate(("BIG SALE", "CALL NOW", "50% OFF", "FREE GIFT", "BUY")):
            cv2.putText(f, words, (1, 11 + 12 * row), cv2.FONT_HERSHEY_PLAIN, 0.8,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return out


def letterbox(frames: np.ndarray, bar: int = 8) -> np.ndarray:
    out = frames.copy()
    out[:, :bar] = 0
    out[:, -bar:] = 0
    return out


def resized(frames: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def padded(frames: np.ndarray, bar: int = 8) -> np.ndarray:
    """The clip inside black bars above and below (a letterboxed re-upload)."""
    return np.pad(frames, ((0, 0), (bar, bar), (0, 0), (0, 0)))


@dataclass
class Corpus:
    root: Path
    cuts: dict[str, list[int]] = field(default_factory=dict)  # file name -> true cut frames
    scenes: dict[str, int] = field(default_factory=dict)  # file name -> true scene count
    duplicates: list[str] = field(default_factory=list)  # files that repeat another clip
    bad: dict[str, str] = field(default_factory=dict)  # file name -> expected reject reason
    corrupt: list[str] = field(default_factory=list)


def make_corpus(root: Path) -> Corpus:
    """Write the corpus under ``root`` (about 1 s on one core)."""
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    distinct = [clip(s) for s in range(1, 11)]
    a, b, d = distinct[:3]
    write(root / "cuts.mp4", np.concatenate(distinct[:6]))
    c.cuts["cuts.mp4"], c.scenes["cuts.mp4"] = [36, 72, 108, 144, 180], 6
    joined, cuts = distinct[6], []
    for nxt in distinct[7:]:
        joined, cut = fade(joined, nxt)
        cuts.append(cut)
    write(root / "fades.mp4", joined)
    c.cuts["fades.mp4"], c.scenes["fades.mp4"] = cuts, 4
    for name, frames, crf in (
        ("dup_reencoded.mp4", a, 30),
        ("dup_resized.mp4", resized(b, 96), 18),
        ("dup_letterboxed.mp4", padded(d), 18),
    ):
        write(root / name, frames, crf=crf)
        c.duplicates.append(name)
    for name, frames, reason in (
        ("bad_dark.mp4", dark(clip(18)), "too_dark"),
        ("bad_static.mp4", clip(19, moving=False), "static"),
        ("bad_blurred.mp4", blurred(clip(20)), "blurry"),
        ("bad_text.mp4", with_text(clip(21)), "text"),
        ("bad_short.mp4", clip(22, frames=18), "too_short"),
    ):
        write(root / name, frames)
        c.bad[name] = reason
    write(root / "letterbox.mp4", letterbox(clip(23)))
    c.scenes["letterbox.mp4"] = 1
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    c.corrupt.append("broken.mp4")
    return c


PG_ENV = "CINEFORGE_TEST_PG_URL"


@contextmanager
def fresh_pg_database(url: str) -> Iterator[str]:
    """URL of a new, empty database on the PostgreSQL server of ``url``; dropped after."""
    import sqlalchemy as sa

    from cineforge.data.curate.catalog import catalog_url

    base = sa.engine.make_url(catalog_url(url))
    name = f"cf_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def catalog_db(backend: str, folder: Path) -> Iterator[str]:
    """A catalog location for ``backend``: a SQLite file in ``folder``, or a fresh PostgreSQL
    database on the server named by $CINEFORGE_TEST_PG_URL (the test is skipped without)."""
    if backend == "sqlite":
        yield str(folder / "catalog.db")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need ${PG_ENV} (e.g. postgresql://postgres@/postgres"
                    "?host=/tmp/pg&port=55432); .ci/run starts a server and sets it")
    with fresh_pg_database(url) as db:
        yield db


class PoolEncoder:
    """A stand-in VAE: every 4th frame, 8x8 average pooling, 4 channels; text: one row per
    word, valued by the caption's length."""

    meta = {"encoder": "pool", "latent_channels": 4, "text_dim": 8}

    def encode_video(self, video):
        z = F.avg_pool3d(video[:, :, ::4], (1, 8, 8))
        return torch.cat([z, z.mean(1, keepdim=True)], 1)

    def encode_text(self, captions):
        return [torch.full((len(c.split()), 8), float(len(c))) for c in captions]


def make_encoder():
    return PoolEncoder()
