"""Work claims with expiring leases: every task is done exactly once, even when workers die.

A worker claims a batch of pending tasks (or tasks whose lease expired) in one short
transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers never
block on or take the same rows; ``BEGIN IMMEDIATE`` on SQLite, which admits one writer at a
time. The claim stamps each row with a fresh random token and a lease deadline.

The worker then computes its results outside any transaction and commits them together with
``finish``: the task row moves to ``done`` only if it still carries the worker's token, in the
same transaction as the result rows. A worker killed mid-batch commits nothing for its
unfinished tasks; their leases expire and another worker claims them. A worker that was only
slow finds its token replaced, and ``finish`` returns False so it discards its results. Either
way each task's results are written once. Lease times are the workers' wall clocks: keep the
machines' clocks within a small fraction of the lease.

While a batch runs, a ``Heartbeat`` thread keeps extending its lease, so the lease can be short
(seconds): a worker that dies stops renewing and its unfinished tasks are claimable a lease
later; ``release_worker`` hands them back at once when the worker is known to be dead.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cineforge.data.curate.catalog import Task, is_postgres


@dataclass(frozen=True)
class Claim:
    task_id: int
    stage: str
    item_id: int
    token: str


def add_tasks(session: Session, stage: str, item_ids: Iterable[int]) -> None:
    """Queue ``stage`` for these items; items that already have that task are left alone."""
    rows = [{"stage": stage, "item_id": int(i), "state": "pending"} for i in item_ids]
    if not rows:
        return
    dialect = postgresql if is_postgres(session.get_bind()) else sqlite
    stmt = dialect.insert(Task).values(rows).on_conflict_do_nothing(
        index_elements=["stage", "item_id"]
    )
    session.execute(stmt)


def claim(
    sessions: sessionmaker[Session], stages: Sequence[str], worker: str, n: int, lease_s: float
) -> list[Claim]:
    """Up to ``n`` claimable tasks of ``stages``, leased to ``worker`` for ``lease_s`` seconds."""
    with sessions.begin() as session:
        now = time.time()
        query = (
            select(Task.id, Task.stage, Task.item_id)
            .where(Task.stage.in_(list(stages)), _claimable(now))
            .order_by(Task.id)
            .limit(n)
        )
        if is_postgres(session.get_bind()):
            query = query.with_for_update(skip_locked=True)
        rows = session.execute(query).all()
        if not rows:
            return []
        token = uuid.uuid4().hex
        session.execute(
            update(Task)
            .where(Task.id.in_([r.id for r in rows]))
            .values(
                state="claimed",
                worker=worker,
                token=token,
                lease_until=now + lease_s,
                attempts=Task.attempts + 1,
            )
        )
    return [Claim(r.id, r.stage, r.item_id, token) for r in rows]


def _claimable(now: float):
    return or_(Task.state == "pending", and_(Task.state == "claimed", Task.lease_until < now))


def _held(c: Claim):
    return and_(Task.id == c.task_id, Task.token == c.token, Task.state == "claimed")


def finish(session: Session, c: Claim, *, error: str | None = None) -> bool:
    """Mark the task done (or failed with ``error``) if ``c`` still holds it. Call it in the
    transaction that writes the task's results, and roll back when it returns False."""
    values = {"state": "failed" if error else "done", "error": error, "finished_at": time.time()}
    result = session.execute(update(Task).where(_held(c)).values(**values))
    return result.rowcount == 1


def extend(sessions: sessionmaker[Session], claims: Sequence[Claim], lease_s: float) -> None:
    """Push the lease of the still-held ``claims`` ``lease_s`` seconds past now."""
    if not claims:
        return
    with sessions.begin() as session:
        # lock the rows in id order, as ``claim`` and a batch's ``finish``es do: no deadlock
        query = select(Task.id).where(or_(*(_held(c) for c in claims))).order_by(Task.id)
        if is_postgres(session.get_bind()):
            query = query.with_for_update()
        ids = list(session.scalars(query))
        if ids:
            session.execute(update(Task).where(Task.id.in_(ids))
                            .values(lease_until=time.time() + lease_s))


class Heartbeat:
    """``with Heartbeat(sessions, claims, lease_s):`` extends the lease of the still-held
    ``claims`` every ``lease_s / 5`` seconds from a background thread while the block runs."""

    def __init__(self, sessions: sessionmaker[Session], claims: Sequence[Claim],
                 lease_s: float) -> None:
        self._args = (sessions, list(claims), lease_s)
        self._every = lease_s / 5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            # a failed beat: the next one tries again; a lease lost meanwhile fails finish()
            with contextlib.suppress(SQLAlchemyError):
                extend(*self._args)


def release(sessions: sessionmaker[Session], claims: Sequence[Claim]) -> None:
    """Hand unfinished claims back at once (a worker that stops cleanly)."""
    if not claims:
        return
    with sessions.begin() as session:
        held = or_(*(_held(c) for c in claims))
        session.execute(
            update(Task).where(held).values(state="pending", token=None, lease_until=0.0)
        )


def release_worker(sessions: sessionmaker[Session], worker: str) -> int:
    """Hand back every claim of ``worker``, known to be dead (a process that exited): its
    tasks need not wait for their leases to run out. The number handed back."""
    with sessions.begin() as session:
        result = session.execute(
            update(Task).where(Task.worker == worker, Task.state == "claimed")
            .values(state="pending", token=None, lease_until=0.0)
        )
        return result.rowcount


@dataclass(frozen=True)
class Holder:
    worker: str
    tasks: int
    until: float  # wall-clock time the last of its leases runs out


def holders(session: Session, stages: Sequence[str]) -> list[Holder]:
    """Workers holding live leases on tasks of ``stages``, longest-held first."""
    rows = session.execute(
        select(Task.worker, func.count(), func.max(Task.lease_until))
        .where(Task.stage.in_(list(stages)), Task.state == "claimed",
               Task.lease_until >= time.time())
        .group_by(Task.worker)
    ).all()
    return sorted((Holder(w or "?", n, until) for w, n, until in rows),
                  key=lambda h: -h.until)


def claimable(session: Session, stages: Sequence[str]) -> int:
    """Tasks of ``stages`` a worker could claim now (pending, or with an expired lease)."""
    query = select(func.count()).where(Task.stage.in_(list(stages)), _claimable(time.time()))
    return session.execute(query).scalar_one()


def outstanding(session: Session, stages: Sequence[str]) -> int:
    """Tasks of ``stages`` that are neither done nor failed."""
    query = select(func.count()).where(
        Task.stage.in_(list(stages)), Task.state.in_(("pending", "claimed"))
    )
    return session.execute(query).scalar_one()

