"""How fast is a near-duplicate lookup over 1M and 10M stored scene hashes?

Compares, side by side in one run on one SQLite file in /tmp (or PostgreSQL with --url):
  index        HashIndex.query: 4 indexed 16-bit band columns, then an exact popcount
  numpy scan   popcount(hashes ^ q) over all hashes already in memory (np.bitwise_count)
  sql scan     a full SQL scan with a Hamming-distance function per row (SQLite: a Python
               UDF; PostgreSQL: bit_count), i.e. what a catalog without the bands does
and prints the bulk-load time (add_many without indexes, then create_indexes). Every query
has planted neighbours at distances 0..3; all methods must return the same answers.

    python benchmarks/bench_dedup.py                 # 1M and 10M, ~3 min on 2 cores
    python benchmarks/bench_dedup.py --sizes 100000  # quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import sqlalchemy as sa

from cineforge.data.curate.phash import HashIndex, hamming


def _planted(rng, queries: np.ndarray) -> np.ndarray:
    """For each query, neighbours at distances 0, 1, 2, 3."""
    out = []
    for q in queries.tolist():
        for d in range(4):
            h = q
            for bit in rng.choice(64, d, replace=False).tolist():
                h ^= 1 << bit
            out.append(h)
    return np.array(out, dtype=np.uint64)


def _timed(fn, items) -> tuple[float, list]:
    t = time.perf_counter()
    results = [fn(q) for q in items]
    return (time.perf_counter() - t) / len(items), results


def bench(n: int, url: str | None, queries: int, sql_queries: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    qs = rng.integers(0, 1 << 64, queries, dtype=np.uint64)
    planted = _planted(rng, qs)
    hashes = np.concatenate([rng.integers(0, 1 << 64, n - len(planted), dtype=np.uint64),
                             planted])
    path = os.path.join(tempfile.gettempdir(), f"cineforge_bench_dedup_{n}.db")
    if url is None and os.path.exists(path):
        os.remove(path)
    engine = sa.create_engine(url or f"sqlite:///{path}")
    index = HashIndex(engine, table=f"bench_phash_{n}")
    index.metadata.drop_all(engine)
    t = time.perf_counter()
    index.create(indexes=False)
    index.add_many(np.arange(n), hashes)
    t_insert = time.perf_counter() - t
    t = time.perf_counter()
    index.create_indexes()
    t_index = time.perf_counter() - t
    size = f"{os.path.getsize(path) / 2**20:.0f} MiB" if url is None else "-"
    print(f"n={n:,}: add_many {t_insert:.1f} s ({n / t_insert / 1e3:.0f}k rows/s), "
          f"create_indexes {t_index:.1f} s, database {size}", flush=True)

    qlist = qs.tolist()
    t_idx, r_idx = _timed(lambda q: index.query(q, 2), qlist)
    t_np, r_np = _timed(lambda q: _numpy_scan(hashes, q, 2), qlist)
    t_sql, r_sql = _timed(lambda q: _sql_scan(engine, index, q, 2), qlist[:sql_queries])
    for a, b, c in zip(r_idx, r_np, r_sql + [None] * len(qlist), strict=False):
        assert a == b and (c is None or c == a), (a, b, c)
        assert len(a) >= 3  # the planted neighbours at distances 0, 1, 2
    t = time.perf_counter()
    with engine.connect() as conn:
        loaded = np.fromiter((h for (h,) in conn.execute(sa.select(index.table.c.hash))),
                             np.int64, n)
    t_load = time.perf_counter() - t
    assert len(loaded) == n
    engine.dispose()
    if url is None:
        os.remove(path)
    return [(n, "index (4 band columns)", t_idx), (n, "numpy scan (in memory)", t_np),
            (n, "sql scan (hamming per row)", t_sql),
            (n, "load all hashes for numpy", t_load)]


def _numpy_scan(hashes: np.ndarray, q: int, d: int) -> list[tuple[int, int]]:
    dist = np.bitwise_count(hashes ^ np.uint64(q))
    ids = np.nonzero(dist <= d)[0]
    return sorted(((int(i), int(dist[i])) for i in ids), key=lambda m: (m[1], m[0]))


def _sql_scan(engine, index: HashIndex, q: int, d: int) -> list[tuple[int, int]]:
    from cineforge.data.curate.phash import to_signed

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.create_function("hamming", 2, hamming,
                                                              deterministic=True)
            sql = f"SELECT scene_id, hamming(hash, :q) FROM {index.table.name} " \
                  "WHERE hamming(hash, :q) <= :d"
        else:
            sql = f"SELECT scene_id, bit_count((hash # :q)::bit(64)) FROM {index.table.name} " \
                  "WHERE bit_count((hash # :q)::bit(64)) <= :d"
        rows = conn.execute(sa.text(sql), {"q": to_signed(q), "d": d})
        return sorted(((int(i), int(k)) for i, k in rows), key=lambda m: (m[1], m[0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000")
    p.add_argument("--url", default=None, help="a PostgreSQL URL instead of a SQLite file")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--sql-queries", type=int, default=3, help="queries for the slow full scan")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        rows += bench(n, args.url, args.queries, args.sql_queries, args.seed)
    print(f"\n{'stored':>12}  {'method':<28} {'ms/query':>10} {'x index':>9}")
    base = {n: t for n, m, t in rows if m.startswith("index")}
    for n, method, t in rows:
        print(f"{n:>12,}  {method:<28} {t * 1e3:>10.2f} {t / base[n]:>9.1f}")


if __name__ == "__main__":
    main()
