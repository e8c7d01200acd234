"""Workers that drain the catalog's tasks, in this process or in N worker processes.

``work`` is one worker: claim a batch, run each task's handler, commit its results together
with the task's completion, repeat; a heartbeat thread renews the batch's leases meanwhile, and
a worker that is interrupted or terminated hands its unfinished claims back. It returns when no
task of its stages is pending or claimed (it waits while other workers hold claims, since their
leases may expire or their results queue more work, and says whose). ``run`` starts ``workers``
such processes (spawned, so each opens its own database connections), reports progress from
the parent, hands back at once the claims of a worker that died and names it in its error. Any
number of ``run``s on any number of machines may share one PostgreSQL catalog.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cineforge.data.curate import encode
from cineforge.data.curate.catalog import STAGES, open_catalog, session_factory, task_counts
from cineforge.data.curate.claims import (
    Claim,
    Heartbeat,
    claim,
    claimable,
    finish,
    holders,
    outstanding,
    release,
    release_worker,
)
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
    lease_s: float = 30.0  # renewed every lease_s / 5 while a batch runs
    poll_s: float = 0.2

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise CineforgeError(
                f"unknown or missing stages {unknown or '(none)'}; choose from {', '.join(STAGES)}"
            )
        if self.batch < 1 or self.lease_s <= 0 or self.poll_s <= 0:
            raise ValueError("need batch >= 1, lease_s > 0, poll_s > 0")


def worker_name(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def work(db: str, config: CurateConfig, options: WorkOptions,
         say: Callable[[str], None] | None = None) -> dict[str, int]:
    """Process tasks of ``options.stages`` until none is left; returns counts per outcome.
    ``say`` (if given) hears, while the worker has nothing to claim, whose leases it waits for."""
    engine = open_catalog(db)
    sessions = session_factory(engine)
    ctx = StageContext(engine, config)
    me, done = worker_name(), {"done": 0, "failed": 0, "lost": 0}
    notice = WaitNotice(say)
    if "encode" in options.stages and config.encode is not None:
        with sessions.begin() as session:
            encode.publish_pending(session, str(Path(config.encode.shard_dir)))
    while True:
        claims = claim(sessions, options.stages, me, options.batch, options.lease_s)
        if not claims:
            with sessions() as session:
                if outstanding(session, options.stages) == 0:
                    break
                notice.update(say and waiting_for(session, options.stages, {me}))
            time.sleep(options.poll_s)
            continue
        notice.update(None)
        try:
            with Heartbeat(sessions, claims, options.lease_s):
                _work_batch(ctx, sessions, claims, done)
        except BaseException:  # interrupted or terminated: others may take the rest now
            with contextlib.suppress(SQLAlchemyError):
                release(sessions, claims)
            raise
    engine.dispose()
    return done


def _work_batch(ctx: StageContext, sessions, claims: list[Claim], done: dict[str, int]) -> None:
    for c in claims:
        if c.stage != "encode":
            done[_process(ctx, sessions, c)] += 1
    batch = [c for c in claims if c.stage == "encode"]
    if batch:
        for outcome, n in _encode_batch(ctx, sessions, batch).items():
            done[outcome] += n


def waiting_for(session: Session, stages: tuple[str, ...], ours: set[str]) -> str | None:
    """What a run whose workers are ``ours`` waits for, when nothing is claimable and only
    others hold leases (a worker elsewhere, or one that died): ``None`` when it is not waiting."""
    held = holders(session, stages)
    if not held or any(h.worker in ours for h in held) or claimable(session, stages):
        return None
    parts = [f"{h.tasks} task{'s' * (h.tasks != 1)} leased by worker {h.worker} until "
             f"{time.strftime('%H:%M:%S', time.localtime(h.until))}" for h in held[:3]]
    more = f" and {len(held) - 3} more workers" if len(held) > 3 else ""
    return "waiting for " + ", ".join(parts) + more


class WaitNotice:
    """Passes a wait's message to ``say`` once it has lasted ``after_s``, then every
    ``every_s`` while it lasts; ``update(None)`` ends the wait."""

    def __init__(self, say: Callable[[str], None] | None, after_s: float = 1.0,
                 every_s: float = 10.0) -> None:
        self.say, self.after_s, self.every_s = say, after_s, every_s
        self._since: float | None = None
        self._last = -math.inf

    def update(self, message: str | None) -> None:
        now = time.monotonic()
        if message is None or self.say is None:
            self._since, self._last = None, -math.inf
            return
        if self._since is None:
            self._since = now
        if now - self._since >= self.after_s and now - self._last >= self.every_s:
            self.say(message)
            self._last = now


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
    # SIGTERM (the parent stopping, a user's kill) unwinds like Ctrl-C: claims go back
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        work(db, config, options)
    except KeyboardInterrupt:
        raise SystemExit(128 + signal.SIGINT) from None
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


def describe_exit(code: int) -> str:
    """A process's exit code as words: ``exited with code 1``, ``was killed by SIGKILL``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(db: str, config: CurateConfig, options: WorkOptions, workers: int = 1,
        progress: Callable[[dict[str, dict[str, int]]], None] | None = None,
        say: Callable[[str], None] = _stderr) -> None:
    """Drain the tasks of ``options.stages`` with ``workers`` processes (1: this process).
    ``say`` hears what the run waits for and which worker died."""
    if workers < 1:
        raise CineforgeError(f"{{workers}} must be >= 1, got {workers}", fields=("workers",))
    open_catalog(db).dispose()  # create the tables once, before the workers race to
    if workers == 1 and progress is None:
        work(db, config, options, say=say)
        return
    procs = start_workers(db, config, options, workers)
    names = {p: worker_name(p.pid) for p in procs}
    sessions = session_factory(open_catalog(db, create=False))
    notice, dead = WaitNotice(say), {}
    try:
        while any(p.is_alive() for p in procs):
            _reap(procs, names, dead, sessions, say)
            with sessions() as session:
                if progress is not None:
                    progress(task_counts(session))
                notice.update(waiting_for(session, options.stages, set(names.values())))
            time.sleep(0.5)
    except BaseException:
        _stop(procs, names, sessions)
        raise
    _reap(procs, names, dead, sessions, say)
    if progress is not None:
        with sessions() as session:
            progress(task_counts(session))
    if dead:
        which = "; ".join(f"worker {names[p]} {describe_exit(code)}" for p, code in dead.items())
        raise CineforgeError(
            f"{len(dead)} of {workers} workers stopped: {which} (any error it printed is "
            "above); fix it and run again: finished work is kept"
        )


def _reap(procs, names, dead, sessions, say) -> None:
    """Hand back the claims of workers that died since the last look, and say so."""
    for p in procs:
        if p.exitcode not in (None, 0) and p not in dead:
            dead[p] = p.exitcode
            n = release_worker(sessions, names[p])
            back = f"; {n} task{'s' * (n != 1)} it held go back to the queue" if n else ""
            say(f"worker {names[p]} {describe_exit(p.exitcode)}{back}")


def _stop(procs, names, sessions) -> None:
    """Stop the workers (an interrupted run): they hand their claims back as they unwind;
    the claims of any that must be killed are handed back here."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
    with contextlib.suppress(SQLAlchemyError):
        for p in procs:
            release_worker(sessions, names[p])
