"""Curation throughput: scenes per second per core for each stage.

One question: how much CPU does each curation stage spend per scene? A corpus of ShapesWorld
sources (``--clips`` 3-second clips joined with hard cuts per source, ``--size`` pixels
square, 16 fps) is ingested into a fresh catalog, then each stage runs alone in this process
(one worker) over everything the previous stage left: probe (ingest), split, dedup, filters.
``per core`` divides by the process's CPU seconds (all its threads), so it does not depend on
how many cores decoding happened to use; ``wall`` is the elapsed rate. Duplicate lookup at
1M/10M stored hashes is benchmarks/bench_dedup.py.

    python benchmarks/bench_curate.py [--sources 6 --clips 4 --size 128] [--db URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from sqlalchemy import func, select

from cineforge.data.curate.catalog import Scene, Task, open_catalog, session_factory
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, work
from cineforge.data.curate.stages import CurateConfig
from cineforge.data.shapes import ShapesWorld, ShapesWorldConfig, render

FPS = 16


def write_sources(folder: Path, sources: int, clips: int, size: int) -> list[Path]:
    world = ShapesWorld(ShapesWorldConfig(height=size, width=size, frames=3 * FPS,
                                          image_fraction=0.0, two_object_fraction=0.5))
    paths = []
    for s in range(sources):
        frames = np.concatenate([render(world.spec(s * clips + c)) for c in range(clips)])
        path = folder / f"source{s:03d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(FPS))
            stream.width = stream.height = size
            stream.pix_fmt, stream.options = "yuv420p", {"crf": "20"}
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def stage_times(db: str, engine, folder: Path) -> list[tuple[str, int, float, float]]:
    """``(stage, items done, wall s, CPU s)`` of probing ``folder`` into the catalog and then
    each stage (split, dedup, filters) run alone by one worker."""
    sessions = session_factory(engine)
    config = CurateConfig()
    report, wall, cpu = timed(lambda: ingest(engine, [folder]))
    rows = [("probe", report.added, wall, cpu)]
    for stage in ("split", "dedup", "filters"):
        _, wall, cpu = timed(lambda s=stage: work(db, config, WorkOptions(stages=(s,))))
        with sessions() as session:
            if stage == "split":
                n = session.execute(select(func.count()).select_from(Scene)).scalar_one()
            else:
                n = session.execute(select(func.count()).where(
                    Task.stage == stage, Task.state == "done")).scalar_one()
        rows.append((stage, n, wall, cpu))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", type=int, default=6)
    p.add_argument("--clips", type=int, default=4, help="3 s clips per source")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--db", help="catalog URL (default: a temporary SQLite file)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_sources(folder, args.sources, args.clips, args.size)
        db = args.db or str(folder / "bench.db")
        engine = open_catalog(db)
        rows = stage_times(db, engine, folder)
        engine.dispose()

    print(f"{args.sources} sources x {args.clips} clips of 3 s, {args.size}x{args.size} "
          f"@ {FPS} fps; catalog {'given URL' if args.db else 'SQLite'}")
    print(f"{'stage':<9}{'items':>12}{'wall s':>8}{'cpu s':>7}{'per s':>8}{'per s/core':>11}"
          f"{'video s/s/core':>15}")
    for stage, n, wall, cpu in rows:
        per_core = n / cpu if cpu else float("nan")
        unit = "files" if stage == "probe" else "scenes"
        seconds = per_core * 3 * (args.clips if stage == "probe" else 1)
        print(f"{stage:<9}{n:>5} {unit:<6}{wall:>8.2f}{cpu:>7.2f}{n / wall:>8.1f}"
              f"{per_core:>11.1f}{seconds:>15.0f}")

if __name__ == "__main__":
    main()
