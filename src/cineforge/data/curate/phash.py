"""Perceptual hashes of scenes and an exact near-duplicate index over them.

**The hash.** ``scene_phash(frames)`` is a 64-bit DCT perceptual hash (the pHash of
``imagehash.phash``, computed with numpy + Pillow) of a scene's *mean luma frame*: ``samples``
frames spread evenly over the scene are converted to luma (BT.601), each resized to 32x32
(Lanczos), averaged, transformed by an orthonormal 2-D DCT-II; bit ``k`` (most significant
first, row-major over the lowest 8x8 frequencies, DC included) is set when that coefficient is
above the median of the 64. Sampling at fractions of the scene's length makes the hash
independent of frame rate; averaging several frames cancels most coding noise. Measured on
20 synthetic 128x128 clips with natural-image (1/f) texture: H.264 re-encodes (crf 23-30),
rescales (0.75x, 2x) and halved frame rates move it by at most 2 bits, distinct clips are at
least 16 bits apart. Crops are its weak point: 1 pixel cut per side (0.8 %) moves it by 2
bits on average (at most 4), 2 pixels (1.6 %) by 4 (at most 8); near-flat frames (plain
backgrounds) also hash less stably (up to 6 bits at crf 28 on 64x64 ShapesWorld clips).
Raise ``max_distance`` to catch cropped copies.

**The index.** ``HashIndex`` answers "which stored hashes are within Hamming distance d of
h?" exactly, by multi-index hashing: the hash is cut into four 16-bit bands, each an indexed
integer column. Two hashes within distance ``d`` agree on at least one band up to
``d // 4`` bits (pigeonhole), so the candidates are the rows whose band ``i`` lies within
``d // 4`` bits of the query's band ``i`` for some ``i`` (for d <= 3: an exactly equal band;
an indexed ``IN`` list otherwise), and an exact popcount then keeps the true neighbours. Hashes
are stored as signed 64-bit integers (``BIGINT``), so SQLite and PostgreSQL hold the same
values and give the same answers.

``HashIndex(engine, method="pgvector")`` (PostgreSQL with pgvector only) looks candidates up
through an HNSW index (``bit_hamming_ops``) on a generated ``bit(64)`` column instead:
approximate (the ``candidates`` nearest by the graph, then exact distances) and, measured on
2 cores with pgvector 0.8.5, no faster: 200k hashes took 305 s to index (bands: 0.5 s) and
6.6 ms per query (bands: 0.6 ms), recall 1.0 at distance <= 3. Use the bands.

**Concurrency.** ``add_if_new`` checks and inserts in one transaction that first takes a lock
covering every possible near-duplicate:

* PostgreSQL: transaction-scoped advisory locks ``pg_advisory_xact_lock(class, key)`` on the
  four (band index, band value) keys, taken in sorted order (no deadlock). Two hashes within
  distance 3 share one band exactly, so they contend on that key and the second worker runs
  its lookup after the first commits (READ COMMITTED, forced for this transaction, gives each
  statement a fresh snapshot). Unrelated hashes proceed in parallel. Lookups wider than 3 bits
  take the class-wide lock exclusively; band lockers hold it shared.
* Other backends (SQLite): the transaction's first statement updates a one-row lock table,
  which takes SQLite's database write lock; concurrent callers wait (the driver's busy
  timeout, 5 s by default: raise it with ``connect_args={"timeout": 30}`` for many workers)
  and then see the committed rows. This is correct in both rollback-journal and WAL modes,
  because the statement that waits is the one that starts the transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from itertools import combinations

import numpy as np

from cineforge.errors import CineforgeError

__all__ = [
    "HashIndex", "bands", "brute_force", "hamming", "scene_phash", "to_signed", "to_unsigned",
]

_SIZE = 32  # resized frame side
_LOW = 8  # lowest frequencies kept per axis: 8 x 8 = 64 bits
_BANDS = 4
_BAND_BITS = 16
_MAX_DISTANCE = 15  # per-band search radius d // 4 <= 3 (at most 697 values per band)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def scene_phash(frames: np.ndarray, *, samples: int = 5) -> int:
    """64-bit perceptual hash (unsigned int) of uint8 frames ``T, H, W, 3``."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise CineforgeError(f"scene_phash needs uint8 frames T,H,W,3, got {frames.dtype} "
                             f"{tuple(frames.shape)}; decode the scene to RGB uint8 first")
    if frames.shape[0] < 1 or min(frames.shape[1:3]) < 8:
        raise CineforgeError(f"scene_phash needs >= 1 frame of >= 8x8 pixels, got "
                             f"{tuple(frames.shape[:3])}")
    if samples < 1:
        raise CineforgeError(f"samples must be >= 1, got {samples}")
    t = frames.shape[0]
    picks = np.unique(np.linspace(0, t - 1, min(samples, t)).round().astype(int))
    mean = np.zeros((_SIZE, _SIZE), np.float64)
    for i in picks:
        luma = frames[i].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        small = Image.fromarray(luma, mode="F").resize((_SIZE, _SIZE), Image.Resampling.LANCZOS)
        mean += np.asarray(small, np.float64)
    d = _dct_matrix(_SIZE)
    low = (d @ (mean / len(picks)) @ d.T)[:_LOW, :_LOW].ravel()
    value = 0
    for bit in low > np.median(low):
        value = (value << 1) | int(bit)
    return value


def to_signed(h: int) -> int:
    """Unsigned 64-bit hash -> the signed BIGINT stored in the database."""
    if not 0 <= h < 1 << 64:
        raise CineforgeError(f"hash {h} is not an unsigned 64-bit integer")
    return h - (1 << 64) if h >= 1 << 63 else h


def to_unsigned(s: int) -> int:
    """Signed (or already unsigned) 64-bit hash -> unsigned int."""
    if not -(1 << 63) <= s < 1 << 64:
        raise CineforgeError(f"hash {s} is not a 64-bit integer")
    return s + (1 << 64) if s < 0 else s


def hamming(a: int, b: int) -> int:
    """Bit distance of two hashes (signed or unsigned 64-bit ints)."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def bands(h: int) -> tuple[int, ...]:
    """The four 16-bit bands of a hash, most significant first."""
    h = to_unsigned(h)
    shifts = range(_BAND_BITS * (_BANDS - 1), -1, -_BAND_BITS)
    return tuple((h >> s) & 0xFFFF for s in shifts)


def _as_uint64(hashes) -> np.ndarray:
    if isinstance(hashes, np.ndarray) and hashes.dtype in (np.uint64, np.int64):
        return hashes.ravel().view(np.uint64)
    return np.array([to_unsigned(int(h)) for h in hashes], dtype=np.uint64)


def _ball(value: int, radius: int) -> list[int]:
    """All 16-bit values within ``radius`` bits of ``value``."""
    out = [value]
    for r in range(1, radius + 1):
        for flips in combinations(range(_BAND_BITS), r):
            out.append(value ^ sum(1 << f for f in flips))
    return out


class HashIndex:
    """Near-duplicate lookup over stored 64-bit hashes, exact up to ``max_distance`` 15.

    ``HashIndex(engine)`` keeps its own tables (``table`` and ``table + "_lock"``) in its own
    MetaData; call ``create()`` once (idempotent). Scene ids are 64-bit integers.
    ``method="pgvector"`` and ``candidates`` select the approximate HNSW lookup (module doc).
    """

    def __init__(self, engine, *, table: str = "phash_index", method: str = "bands",
                 candidates: int = 64) -> None:
        import sqlalchemy as sa

        if method not in ("bands", "pgvector"):
            raise CineforgeError(f"unknown HashIndex method {method!r}; use 'bands' or "
                                 "'pgvector'")
        if method == "pgvector" and engine.dialect.name != "postgresql":
            raise CineforgeError("HashIndex(method='pgvector') needs a PostgreSQL catalog with "
                                 "the pgvector extension; use method='bands'")
        self.engine, self.method, self.candidates = engine, method, candidates
        self.metadata = sa.MetaData()
        columns = [
            # SQLite: INTEGER PRIMARY KEY is the 64-bit rowid itself (no second B-tree)
            sa.Column("scene_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=False),
            sa.Column("hash", sa.BigInteger, nullable=False),
            *(sa.Column(f"band{i}", sa.Integer, nullable=False, index=method == "bands")
              for i in range(_BANDS)),
        ]
        if method == "pgvector":
            from sqlalchemy.dialects.postgresql import BIT

            columns.append(sa.Column("bits", BIT(64), sa.Computed("hash::bit(64)", persisted=True)))
        self.table = sa.Table(table, self.metadata, *columns)
        if method == "pgvector":
            sa.Index(f"ix_{table}_bits_hnsw", self.table.c.bits, postgresql_using="hnsw",
                     postgresql_ops={"bits": "bit_hamming_ops"})
        self.lock_table = sa.Table(
            f"{table}_lock", self.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("n", sa.BigInteger, nullable=False),
        )
        self._lock_class = zlib.crc32(table.encode()) & 0x7FFF_FFFF

    @property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def create(self, *, indexes: bool = True) -> None:
        """Create the tables if missing; safe to call from many workers at once. For a bulk
        load of millions of hashes: ``create(indexes=False)``, ``add_many``, then
        ``create_indexes()`` (about 5x faster than inserting into indexed columns)."""
        import sqlalchemy as sa

        lock = self.engine.dialect.identifier_preparer.format_table(self.lock_table)
        with self.engine.begin() as conn:
            self._ddl_lock(conn)
            if self.method == "pgvector":
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            for table in (self.lock_table, self.table):  # without the band indexes
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
            conn.execute(sa.text(f"INSERT INTO {lock} (id, n) VALUES (0, 0) "
                                 "ON CONFLICT DO NOTHING"))
        if indexes:
            self.create_indexes()

    def create_indexes(self) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            self._ddl_lock(conn)
            for index in sorted(self.table.indexes, key=lambda ix: ix.name):
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
            if self._postgres:
                table = self.engine.dialect.identifier_preparer.format_table(self.table)
                conn.execute(sa.text(f"ANALYZE {table}"))  # planner statistics

    def _ddl_lock(self, conn) -> None:
        """PostgreSQL: serialise concurrent ``create`` calls (two concurrent ``CREATE TABLE IF
        NOT EXISTS`` can both try to create the table's type and one fail)."""
        import sqlalchemy as sa

        if self._postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, -2)"),
                         {"c": self._lock_class})

    # -------------------------------------------------------------------------- writing
    def add(self, scene_id: int, h: int) -> None:
        self.add_many([scene_id], [h])

    def add_many(self, scene_ids: Iterable[int], hashes: Iterable[int], *,
                 chunk: int = 100_000) -> int:
        """Insert (id, hash) pairs: hashes as Python ints (unsigned or signed) or a uint64 /
        int64 array. One transaction per chunk, sent by driver-level executemany (psycopg:
        COPY, ~10x faster than executemany there)."""
        import sqlalchemy as sa

        ids = np.asarray(scene_ids, dtype=np.int64).ravel()
        hs = _as_uint64(hashes)
        if len(ids) != len(hs):
            raise CineforgeError(f"add_many got {len(ids)} scene ids but {len(hs)} hashes")
        names = ["scene_id", "hash", *(f"band{i}" for i in range(_BANDS))]
        insert = self.table.insert().values({n: sa.bindparam(n) for n in names}).compile(
            dialect=self.engine.dialect)
        copy = self.engine.dialect.driver == "psycopg"
        for start in range(0, len(ids), chunk):
            h = hs[start:start + chunk]
            columns = [ids[start:start + chunk], h.view(np.int64)]
            columns += [((h >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.int64)
                        for s in range(_BAND_BITS * (_BANDS - 1), -1, -_BAND_BITS)]
            rows = list(zip(*(c.tolist() for c in columns), strict=True))
            with self.engine.begin() as conn:
                if copy:
                    cursor = conn.connection.driver_connection.cursor()
                    table = self.engine.dialect.identifier_preparer.format_table(self.table)
                    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as out:
                        for row in rows:
                            out.write_row(row)
                elif insert.positional:
                    conn.exec_driver_sql(str(insert), rows)
                else:
                    conn.exec_driver_sql(str(insert), [dict(zip(names, r, strict=True))
                                                       for r in rows])
        return len(ids)

    def add_if_new(self, scene_id: int, h: int, max_distance: int = 2) -> int | None:
        """Store ``h`` unless a stored scene is within ``max_distance``: then return the
        nearest one's id (ties: smallest id) and store nothing. Race-free across processes
        (module docstring); calling it again for a stored ``scene_id`` returns None."""
        import sqlalchemy as sa

        self._check_distance(max_distance)
        conn = self.engine.connect()
        if self._postgres:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        with conn, conn.begin():
            self._lock(conn, h, max_distance)
            mine = sa.select(self.table.c.scene_id).where(self.table.c.scene_id == scene_id)
            if conn.execute(mine).first() is not None:
                return None
            near = [m for m in self._lookup(conn, h, max_distance) if m[0] != scene_id]
            if near:
                return near[0][0]
            conn.execute(self.table.insert().values(**self._row(scene_id, h)))
        return None

    def _row(self, scene_id: int, h: int) -> dict:
        h = to_unsigned(h)
        return {"scene_id": scene_id, "hash": to_signed(h),
                **{f"band{i}": b for i, b in enumerate(bands(h))}}

    def _lock(self, conn, h: int, max_distance: int) -> None:
        import sqlalchemy as sa

        if not self._postgres:
            conn.execute(self.lock_table.update().where(self.lock_table.c.id == 0)
                         .values(n=self.lock_table.c.n + 1))
            return
        cls = {"c": self._lock_class}
        if max_distance > 3:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, -1)"), cls)
            return
        conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:c, -1)"), cls)
        for key in sorted((i << _BAND_BITS) | b for i, b in enumerate(bands(h))):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:c, :k)"), {**cls, "k": key})

    # -------------------------------------------------------------------------- reading
    def query(self, h: int, max_distance: int = 2) -> list[tuple[int, int]]:
        """Stored ``(scene_id, distance)`` within ``max_distance`` of ``h``, nearest first."""
        self._check_distance(max_distance)
        with self.engine.connect() as conn:
            return self._lookup(conn, h, max_distance)

    def __len__(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()

    def _lookup(self, conn, h: int, max_distance: int) -> list[tuple[int, int]]:
        import sqlalchemy as sa

        if self.method == "pgvector":
            return self._lookup_hnsw(conn, h, max_distance)
        radius = max_distance // _BANDS
        c = self.table.c
        terms = []
        for i, b in enumerate(bands(h)):
            col = c[f"band{i}"]
            terms.append(col == b if radius == 0 else col.in_(_ball(b, radius)))
        rows = conn.execute(sa.select(c.scene_id, c.hash).where(sa.or_(*terms)))
        return brute_force(rows, h, max_distance)

    def _lookup_hnsw(self, conn, h: int, max_distance: int) -> list[tuple[int, int]]:
        """Approximate: the ``candidates`` nearest by the HNSW graph, then exact distances."""
        import sqlalchemy as sa
        from sqlalchemy.dialects.postgresql import BIT

        c = self.table.c
        conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {max(40, int(self.candidates))}"))
        q = sa.cast(sa.cast(sa.literal(to_signed(to_unsigned(h))), sa.BigInteger), BIT(64))
        rows = conn.execute(sa.select(c.scene_id, c.hash).order_by(c.bits.op("<~>")(q))
                            .limit(self.candidates))
        return brute_force(rows, h, max_distance)

    @staticmethod
    def _check_distance(max_distance: int) -> None:
        if not 0 <= max_distance <= _MAX_DISTANCE:
            raise CineforgeError(f"max_distance must be in 0..{_MAX_DISTANCE}, got "
                                 f"{max_distance}; scan all hashes for wider searches")


def brute_force(stored: Iterable[tuple[int, int]], h: int,
                max_distance: int) -> list[tuple[int, int]]:
    """``(scene_id, distance)`` of the ``(scene_id, hash)`` pairs within ``max_distance`` of
    ``h``, nearest first (ties: smallest id): the oracle of ``HashIndex.query``."""
    found = [(sid, hamming(s, h)) for sid, s in stored]
    return sorted(((sid, d) for sid, d in found if d <= max_distance),
                  key=lambda m: (m[1], m[0]))
