"""Workers that drain the catalog's tasks, in this process or in N worker processes.

``work`` is one worker: claim a batch, run each task's handler, commit its results together
with the task's completion, repeat; it returns when no task of its stages is pending or
claimed (it waits while other workers hold claims, since their leases may expire or their
results queue more work). ``run`` starts ``workers`` such processes (spawned, so each opens its
own database connections) and reports progress from the parent. Any number of ``run``s on any
number of machines may share one PostgreSQL catalog.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from cineforge.data.curate import encode
from cineforge.data.curate.catalog import STAGES, open_catalog, session_factory, task_counts
from cineforge.data.curate.claims import Claim, claim, extend, finish, outstanding, release
from cineforge.data.curate.stages import (
    HANDLERS,
    CurateConfig,
    StageContext,
    record_failure,
    scene_video,
)
from cineforge.errors import CineforgeError


@dataclass(frozen=True)
class WorkOptions:
    stages: tuple[str, ...] = ("split", "dedup", "filters")
    batch: int = 4
    lease_s: float = 300.0
    poll_s: float = 0.2

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise CineforgeError(
                f"unknown or missing stages {unknown or '(none)'}; choose from {', '.join(STAGES)}"
            )
        if self.batch < 1 or self.lease_s <= 0 or self.poll_s <= 0:
            raise ValueError("need batch >= 1, lease_s > 0, poll_s > 0")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(db: str, config: CurateConfig, options: WorkOptions) -> dict[str, int]:
    """Process tasks of ``options.stages`` until none is left; returns counts per outcome."""
    engine = open_catalog(db)
    sessions = session_factory(engine)
    ctx = StageContext(engine, config)
    me, done = worker_name(), {"done": 0, "failed": 0, "lost": 0}
    if "encode" in options.stages and config.encode is not None:
        with sessions.begin() as session:
            encode.publish_pending(session, str(Path(config.encode.shard_dir)))
    while True:
        claims = claim(sessions, options.stages, me, options.batch, options.lease_s)
        if not claims:
            with sessions() as session:
                if outstanding(session, options.stages) == 0:
                    break
            time.sleep(options.poll_s)
            continue
        renewed = time.monotonic()
        for i, c in enumerate(claims):
            if c.stage == "encode":
                continue
            if time.monotonic() - renewed > options.lease_s / 3:  # long batch: keep the rest
                extend(sessions, claims[i:], options.lease_s)
                renewed = time.monotonic()
            done[_process(ctx, sessions, c)] += 1
        batch = [c for c in claims if c.stage == "encode"]
        if batch:
            extend(sessions, batch, options.lease_s)
            for outcome, n in _encode_batch(ctx, sessions, batch).items():
                done[outcome] += n
    engine.dispose()
    return done


def _process(ctx: StageContext, sessions, c: Claim) -> str:
    """Run one task's handler and commit its results with its completion; the outcome."""
    try:
        write, error = HANDLERS[c.stage](ctx, c.item_id), None
    except Exception as exc:  # recorded on the task and its item, never fatal
        write, error = None, f"{type(exc).__name__}: {exc}"
    with sessions.begin() as session:
        if not finish(session, c, error=error):
            return "lost"  # the lease expired and another worker took the task
        if write is not None:
            write(session)
            return "done"
        record_failure(session, c.stage, c.item_id, error)
        return "failed"


class _LostClaim(Exception):
    pass


def _encode_batch(ctx: StageContext, sessions, claims: list[Claim]) -> dict[str, int]:
    """Encode a batch into staged shards, commit them with the tasks, then publish them."""
    cfg = ctx.config.encode
    if cfg is None:
        raise CineforgeError("the encode stage needs an encoder; pass {encoder}",
                             fields=("encoder",))
    shard_dir, token = str(Path(cfg.shard_dir)), claims[0].token
    items, failed = [], {}
    for c in claims:
        try:
            with Session(ctx.engine) as session:
                _, path, start, end, crop = scene_video(session, c.item_id)
                items.append((c, encode.prepare(session, c.item_id, path, start, end, crop,
                                                cfg)))
        except Exception as exc:  # recorded on the task and its scene, never fatal
            failed[c] = f"{type(exc).__name__}: {exc}"
    infos = []
    try:
        if items:
            infos = encode.write_staged(ctx.encoder, [p for _, p in items], cfg, token)
    except Exception as exc:
        encode.discard(shard_dir, token)
        failed.update({c: f"{type(exc).__name__}: {exc}" for c, _ in items})
        items = []
    counts = {"done": 0, "failed": 0, "lost": 0}
    try:
        with sessions.begin() as session:
            if not all(finish(session, c) for c, _ in items):
                raise _LostClaim  # roll back: another worker owns part of this batch
            encode.register(session, shard_dir, infos)
        encode.publish(shard_dir, infos, token)
        counts["done"] += len(items)
    except _LostClaim:
        encode.discard(shard_dir, token)
        release(sessions, [c for c, _ in items])
        counts["lost"] += len(items)
    for c, error in failed.items():
        with sessions.begin() as session:
            if finish(session, c, error=error):
                record_failure(session, "encode", c.item_id, error)
                counts["failed"] += 1
    return counts


def _worker_main(db: str, config: CurateConfig, options: WorkOptions) -> None:
    try:
        work(db, config, options)
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None


def start_workers(db: str, config: CurateConfig, options: WorkOptions, n: int):
    """``n`` started worker processes (spawned: no state shared with this process)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(db, config, options), daemon=True)
             for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def run(db: str, config: CurateConfig, options: WorkOptions, workers: int = 1,
        progress: Callable[[dict[str, dict[str, int]]], None] | None = None) -> None:
    """Drain the tasks of ``options.stages`` with ``workers`` processes (1: this process)."""
    if workers < 1:
        raise CineforgeError(f"{{workers}} must be >= 1, got {workers}", fields=("workers",))
    open_catalog(db).dispose()  # create the tables once, before the workers race to
    if workers == 1 and progress is None:
        work(db, config, options)
        return
    procs = start_workers(db, config, options, workers)
    sessions = session_factory(open_catalog(db, create=False))
    while any(p.is_alive() for p in procs):
        if progress is not None:
            with sessions() as session:
                progress(task_counts(session))
        time.sleep(0.5)
    if progress is not None:
        with sessions() as session:
            progress(task_counts(session))
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise CineforgeError(
            f"{len(failed)} of {workers} workers stopped with an error (printed above); "
            "fix it and run again: finished work is kept"
        )

