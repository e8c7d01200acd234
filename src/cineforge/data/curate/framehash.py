"""Near-duplicate scenes from several frame hashes each, and their exact SQL index.

A scene is summed up by the 64-bit pHash (``phash.scene_phash`` of one frame) of ``POSITIONS``
frames, at fixed relative times 0.1, 0.3, 0.5, 0.7 and 0.9 of its length. A scene repeats a
stored one when at least ``min_matches`` of its hashes are within ``max_distance`` bits of the
stored scene's hash at the same position. One frame alone is brittle (a re-encode of flat
content moves a hash by 4 bits); several frames let the threshold rise without letting distinct
scenes through, since they must agree at most positions.

The index stores one row per (scene, position) with the hash cut into ``BANDS`` = 8 bands of 8
bits. Two hashes within ``d`` bits differ in at most ``d // 8`` bits in at least one band
(pigeonhole), so looking up every band value within that radius (1 + 8 = 9 values per band at
``d`` 8..15, the value itself below 8) finds every stored hash within ``d``: the lookup is
exact up to ``MAX_DISTANCE`` = 15, then distances are computed exactly. Works on SQLite and
PostgreSQL; ``add_if_new`` holds one lock (SQLite's write lock, a PostgreSQL advisory lock)
from lookup to insert, so concurrent workers cannot both keep two copies of a scene.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cineforge.data.curate.phash import hamming, scene_phash, to_signed, to_unsigned
from cineforge.errors import CineforgeError

POSITIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
BANDS = 8
BAND_BITS = 8
MAX_DISTANCE = 15


def frame_indices(n: int, positions: Sequence[float] = POSITIONS) -> list[int]:
    """Frame offsets (0..n-1) of ``positions`` in a scene of ``n`` frames."""
    return [min(n - 1, int(p * n)) for p in positions]


def frame_hashes(frames: np.ndarray) -> list[int]:
    """One 64-bit pHash per uint8 RGB frame of ``T, H, W, 3``."""
    return [scene_phash(f[None], samples=1) for f in np.asarray(frames)]


def band_values(h: int) -> list[int]:
    h = to_unsigned(h)
    return [(h >> (BAND_BITS * (BANDS - 1 - i))) & 0xFF for i in range(BANDS)]


def _ball(value: int, radius: int) -> list[int]:
    return [value] + ([value ^ (1 << b) for b in range(BAND_BITS)] if radius else [])


@dataclass(frozen=True)
class Match:
    scene_id: int
    matches: int  # positions within the distance
    distances: tuple[int | None, ...]  # per position; None where the stored scene has none

    @property
    def distance(self) -> int:
        """The ``min_matches``-th smallest distance (what the threshold was tested on)."""
        return sorted(d for d in self.distances if d is not None)[self.matches - 1]


def best_match(query: Sequence[int], stored: dict[int, dict[int, int]], max_distance: int,
               min_matches: int) -> Match | None:
    """The stored scene (``{scene_id: {position: hash}}``) that ``query`` (hash per position)
    repeats: most matching positions, then smallest summed distance, then smallest id."""
    best, best_key = None, None
    for sid, hashes in stored.items():
        dist = tuple(hamming(h, hashes[p]) if p in hashes else None
                     for p, h in enumerate(query))
        n = sum(d is not None and d <= max_distance for d in dist)
        if n < min_matches:
            continue
        key = (-n, sum(d for d in dist if d is not None), sid)
        if best_key is None or key < best_key:
            best, best_key = Match(sid, n, dist), key
    return best


class FrameHashIndex:
    """Per-position frame hashes of kept scenes in table ``table`` (``create()`` once)."""

    def __init__(self, engine, *, table: str = "frame_hash_index") -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            table, self.metadata,
            sa.Column("scene_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("hash", sa.BigInteger, nullable=False),
            *(sa.Column(f"band{i}", sa.Integer, nullable=False) for i in range(BANDS)),
        )
        for i in range(BANDS):
            sa.Index(f"ix_{table}_band{i}", self.table.c.position, self.table.c[f"band{i}"])
        self.lock_table = sa.Table(
            f"{table}_lock", self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("n", sa.BigInteger, nullable=False),
        )
        self._lock_class = zlib.crc32(table.encode()) & 0x7FFF_FFFF

    @property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def create(self) -> None:
        import sqlalchemy as sa

        lock = self.engine.dialect.identifier_preparer.format_table(self.lock_table)
        with self.engine.begin() as conn:
            if self._postgres:  # concurrent CREATE TABLE IF NOT EXISTS can collide
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, -2)"),
                             {"c": self._lock_class})
            self.metadata.create_all(conn)
            conn.execute(sa.text(f"INSERT INTO {lock} (id, n) VALUES (0, 0) "
                                 "ON CONFLICT DO NOTHING"))

    def _lock(self, conn) -> None:
        import sqlalchemy as sa

        if self._postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, -1)"),
                         {"c": self._lock_class})
        else:  # the first write takes SQLite's lock for the whole transaction
            conn.execute(self.lock_table.update().where(self.lock_table.c.id == 0)
                         .values(n=self.lock_table.c.n + 1))

    def add_if_new(self, scene_id: int, hashes: Sequence[int], max_distance: int,
                   min_matches: int) -> Match | None:
        """Store ``hashes`` (one per position) unless a stored scene matches (then return it
        and store nothing). Idempotent: a stored ``scene_id`` gets None again."""
        import sqlalchemy as sa

        self._check(max_distance, min_matches, len(hashes))
        conn = self.engine.connect()
        if self._postgres:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        with conn, conn.begin():
            self._lock(conn)
            mine = sa.select(self.table.c.scene_id).where(self.table.c.scene_id == scene_id)
            if conn.execute(mine.limit(1)).first() is not None:
                return None
            match = self._lookup(conn, hashes, max_distance, min_matches, exclude=scene_id)
            if match is not None:
                return match
            conn.execute(self.table.insert(), [self._row(scene_id, p, h)
                                               for p, h in enumerate(hashes)])
        return None

    def query(self, hashes: Sequence[int], max_distance: int,
              min_matches: int) -> Match | None:
        self._check(max_distance, min_matches, len(hashes))
        with self.engine.connect() as conn:
            return self._lookup(conn, hashes, max_distance, min_matches)

    def _row(self, scene_id: int, position: int, h: int) -> dict:
        return {"scene_id": scene_id, "position": position, "hash": to_signed(to_unsigned(h)),
                **{f"band{i}": b for i, b in enumerate(band_values(h))}}

    def _lookup(self, conn, hashes, max_distance, min_matches, exclude=None) -> Match | None:
        import sqlalchemy as sa

        c, radius = self.table.c, max_distance // BANDS
        terms = [sa.and_(c.position == p, sa.or_(*(c[f"band{i}"].in_(_ball(b, radius))
                                                   for i, b in enumerate(band_values(h)))))
                 for p, h in enumerate(hashes)]
        near = sa.select(c.scene_id).where(sa.or_(*terms)).distinct()
        if exclude is not None:
            near = near.where(c.scene_id != exclude)
        rows = conn.execute(sa.select(c.scene_id, c.position, c.hash)
                            .where(c.scene_id.in_(near.scalar_subquery())))
        stored: dict[int, dict[int, int]] = {}
        for sid, pos, h in rows:
            stored.setdefault(sid, {})[pos] = h
        return best_match(hashes, stored, max_distance, min_matches)

    @staticmethod
    def _check(max_distance: int, min_matches: int, n: int) -> None:
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise CineforgeError(f"duplicate distance must be in 0..{MAX_DISTANCE}, got "
                                 f"{max_distance}")
        if not 1 <= min_matches <= n:
            raise CineforgeError(f"min_matches must be in 1..{n} (hashes per scene), got "
                                 f"{min_matches}")
