"""The curation catalog: sources, scenes, per-stage tasks, metrics, captions and latent shards.

One SQLAlchemy schema on two engines: a SQLite file (WAL journal, every transaction
``BEGIN IMMEDIATE`` so writers queue instead of failing) for one machine, PostgreSQL by URL
(``postgresql://user@host/db``, driven by psycopg 3) for many. ``open_catalog`` takes either
a URL or a plain file path and creates the tables that are missing (or, for readers such as
``status`` and ``export``, refuses a catalog that does not exist yet). PostgreSQL connections
give up after ``CONNECT_TIMEOUT_S`` without an answer, and the server cancels a statement after
``STATEMENT_TIMEOUT_S`` or a lock wait after ``LOCK_TIMEOUT_S``; the URL's own
``connect_timeout=`` or ``options=`` replace these.

A scene is ``active`` until a stage rejects it with a reason; each (stage, item) pair has one
``Task`` row whose state moves pending -> claimed -> done (or failed, with the error), see
``claims``.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from cineforge.errors import CineforgeError

STAGES = ("split", "dedup", "filters", "caption", "encode")  # pipeline order


class Base(DeclarativeBase):
    pass


class Source(Base):
    """A registered video file and what probing it found (or why it is unusable)."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | rejected
    reason: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    frames: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    bitrate: Mapped[int | None] = mapped_column(BigInteger)
    codec: Mapped[str | None] = mapped_column(String(32))
    added_at: Mapped[float] = mapped_column(Float, default=time.time)


class Scene(Base):
    """Frames ``[start_frame, end_frame)`` of a source, with the crop that removes its black
    borders. ``status`` is ``active`` until a stage rejects it (``reject_stage``,
    ``reject_reason``)."""

    __tablename__ = "scenes"
    __table_args__ = (UniqueConstraint("source_id", "index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # position within its source
    start_frame: Mapped[int] = mapped_column(Integer)
    end_frame: Mapped[int] = mapped_column(Integer)  # exclusive
    fps: Mapped[float] = mapped_column(Float)
    crop_x: Mapped[int] = mapped_column(Integer, default=0)
    crop_y: Mapped[int] = mapped_column(Integer, default=0)
    crop_w: Mapped[int] = mapped_column(Integer)
    crop_h: Mapped[int] = mapped_column(Integer)
    brightness: Mapped[float | None] = mapped_column(Float)  # mean luma, 0..255
    clip_path: Mapped[str | None] = mapped_column(String(1024))  # transcoded copy, if any
    phash: Mapped[int | None] = mapped_column(BigInteger)  # signed 64-bit perceptual hash
    duplicate_of: Mapped[int | None] = mapped_column(Integer)  # the kept scene it repeats
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | rejected
    reject_stage: Mapped[str | None] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(String(64))
    shard_id: Mapped[int | None] = mapped_column(ForeignKey("shards.id"))

    @property
    def duration_s(self) -> float:
        return (self.end_frame - self.start_frame) / self.fps


class Task(Base):
    """One unit of work: ``stage`` applied to ``item_id`` (a source for split, else a scene).
    ``token`` fences completion: only the holder of the current claim may finish it."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("stage", "item_id"),
        Index("ix_tasks_claimable", "stage", "state", "lease_until"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    item_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|claimed|done|failed
    worker: Mapped[str | None] = mapped_column(String(128))
    token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[float | None] = mapped_column(Float)


class Metric(Base):
    """A number a stage measured on a scene (motion, sharpness, text_fraction, ...)."""

    __tablename__ = "metrics"
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)


class Rejection(Base):
    """Why a stage rejected a scene: the measured ``value`` of ``metric`` and the limit it
    broke (``value op threshold`` must hold to pass; ``op`` is ``>=``, ``<=`` or, for the
    Hamming distance to a kept scene, ``>``). A plug-in
    filter that declares no limits leaves ``metric`` and ``threshold`` empty."""

    __tablename__ = "rejections"
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    op: Mapped[str | None] = mapped_column(String(2))
    threshold: Mapped[float | None] = mapped_column(Float)


class Caption(Base):
    __tablename__ = "captions"
    __table_args__ = (UniqueConstraint("scene_id", "captioner"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id"), index=True)
    captioner: Mapped[str] = mapped_column(String(64))  # "manual", "ground_truth", model name
    text: Mapped[str] = mapped_column(Text)


class Shard(Base):
    """A file of pre-encoded latents of one aspect-ratio/length bucket."""

    __tablename__ = "shards"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    bucket: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)


def catalog_url(db: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a plain path (a SQLite file)."""
    text = str(db)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver we ship
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


CONNECT_TIMEOUT_S = 10  # PostgreSQL: no answer to the connection within this: an error
STATEMENT_TIMEOUT_S = 300  # the server cancels a statement running longer
LOCK_TIMEOUT_S = 60  # ... or waiting longer for a lock
SQLITE_MAGIC = b"SQLite format 3\x00"


def shown(db: str | Path) -> str:
    """``db`` as messages show it: a URL's password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(db))


def open_catalog(db: str | Path, *, create: bool = True) -> Engine:
    """An engine for the catalog at ``db`` (URL or SQLite path), tables created if missing;
    with ``create=False`` the catalog must exist already (a missing one is an error)."""
    url = catalog_url(db)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise CineforgeError(
            f"cannot parse catalog URL {shown(db)}; pass {{db}} a file path or "
            "postgresql://user@host:port/db", fields=("db",)
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, parsed.database, create)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True, connect_args=_pg_args(parsed))
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise CineforgeError(
                f"no database driver for {parsed.drivername} ({exc}); "
                "install it, e.g. pip install 'psycopg[binary]'"
            ) from None
    try:
        if create:
            _create_tables(engine)
        else:
            with engine.connect() as conn:
                missing = not inspect(conn).has_table(Task.__tablename__)
    except DatabaseError as exc:
        engine.dispose()
        raise CineforgeError(
            f"cannot open the catalog {shown(db)} ({_describe(exc, parsed)}); check {{db}} "
            "and, for a URL, that the database server is running and reachable", fields=("db",)
        ) from None
    if not create and missing:
        engine.dispose()
        raise CineforgeError(
            f"{shown(db)} holds no curation catalog; check {{db}}, or register videos first "
            "with `cineforge curate ingest`", fields=("db",)
        )
    return engine


def _pg_args(url) -> dict:
    """psycopg connection arguments: the timeouts (unless the URL sets its own) and TCP
    keepalives, so a server that stops answering is an error instead of a hang."""
    args: dict = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                  "keepalives_count": 3}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in url.query:
        args["options"] = (f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000} "
                           f"-c lock_timeout={LOCK_TIMEOUT_S * 1000}")
    return args


def _describe(exc: DatabaseError, url) -> str:
    """The first line of a driver error; a connection timeout says how long it waited."""
    first = str(exc.orig or exc).strip().splitlines()[0]
    if type(exc.orig).__name__ == "ConnectionTimeout":  # psycopg's
        first += f": no answer within {url.query.get('connect_timeout', CONNECT_TIMEOUT_S)} s"
    return first


def _create_tables(engine: Engine) -> None:
    """Create missing tables (ours and the near-duplicate index's) in one transaction that
    workers starting together take in turn: PostgreSQL's concurrent CREATE TABLEs of one name
    fail, so they wait on an advisory lock (SQLite's BEGIN IMMEDIATE already serialises)."""
    from cineforge.data.curate.framehash import FrameHashIndex
    from cineforge.data.curate.phash import HashIndex

    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DDL_LOCK})
        Base.metadata.create_all(conn)
        HashIndex(engine).metadata.create_all(conn)
        FrameHashIndex(engine).metadata.create_all(conn)


_DDL_LOCK = 0x63667467  # any constant shared by all cineforge workers ("cftg")


def _sqlite_engine(url: str, database: str | None, create: bool) -> Engine:
    if database and database != ":memory:":
        _check_sqlite_file(Path(database), create)
    engine = create_engine(url, connect_args={"timeout": 60.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock at the start: a deferred transaction that later upgrades to a
        # writer can fail with "database is locked" instead of waiting its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _check_sqlite_file(path: Path, create: bool) -> None:
    """Refuse, before SQLite touches it, a catalog file that is missing (for a reader) or
    is not a SQLite database (a video, a folder)."""
    if not create and not path.exists():
        raise CineforgeError(
            f"catalog file {path} does not exist; check {{db}}, or create it first with "
            "`cineforge curate ingest`", fields=("db",)
        )
    if not path.parent.is_dir():
        raise CineforgeError(f"folder of the catalog file {path} does not exist; create it "
                             "first")
    if path.is_dir():
        raise CineforgeError(f"{path} is a folder; pass {{db}} a catalog file",
                             fields=("db",))
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise CineforgeError(f"cannot read the catalog file {path} ({exc.strerror}); check "
                             "{db} and the file's permissions", fields=("db",)) from None
    if head and head != SQLITE_MAGIC:
        raise CineforgeError(
            f"{path} is not a SQLite database; pass {{db}} a catalog file (or a new path)",
            fields=("db",)
        )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def task_counts(session: Session) -> dict[str, dict[str, int]]:
    """``{stage: {state: count}}`` over all tasks."""
    rows = session.execute(
        select(Task.stage, Task.state, func.count()).group_by(Task.stage, Task.state)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for stage, state, n in rows:
        counts.setdefault(stage, {})[state] = n
    return counts


@dataclass(frozen=True)
class Summary:
    sources: dict[str, int]  # status -> count
    source_reasons: dict[str, int]  # reason code ("unreadable", ...) -> count
    tasks: dict[str, dict[str, int]]  # stage -> state -> count
    scenes: dict[str, int]  # status -> count
    rejects: dict[tuple[str, str], int]  # (stage, reason) -> count


def _count_by(session: Session, column) -> dict:
    return dict(session.execute(select(column, func.count()).group_by(column)).tuples().all())


def summary(session: Session) -> Summary:
    """Counts per status, stage and reject reason: what ``cineforge curate status`` shows."""
    sources = _count_by(session, Source.status)
    reasons = Counter(
        (r or "").split(":", 1)[0]
        for r in session.scalars(select(Source.reason).where(Source.status == "rejected"))
    )
    scenes = _count_by(session, Scene.status)
    rejects = session.execute(
        select(Scene.reject_stage, Scene.reject_reason, func.count())
        .where(Scene.status == "rejected")
        .group_by(Scene.reject_stage, Scene.reject_reason)
    ).all()
    return Summary(sources, dict(reasons), task_counts(session), scenes,
                   {(stage, reason): n for stage, reason, n in rejects})


@dataclass(frozen=True)
class MetricStats:
    """How one metric is distributed over the scenes that have it, and what its limits
    removed: ``cuts`` maps ``(op, threshold)`` to the scenes rejected by that limit."""

    name: str
    stage: str
    count: int
    quantiles: tuple[float, ...]  # at QUANTILES
    cuts: dict[tuple[str, float], int]


QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def metric_stats(session: Session) -> list[MetricStats]:
    """Per metric: count, quantiles and the rejections of each threshold (``status``)."""
    import numpy as np

    values: dict[tuple[str, str], list[float]] = {}
    for name, stage, value in session.execute(select(Metric.name, Metric.stage, Metric.value)):
        values.setdefault((name, stage), []).append(value)
    for name, stage, value in session.execute(
            select(Rejection.metric, Rejection.stage, Rejection.value)
            .where(Rejection.metric.is_not(None), Rejection.stage == "dedup")):
        values.setdefault((name, stage), []).append(value)  # distances exist for copies only
    cuts: dict[tuple[str, str], dict[tuple[str, float], int]] = {}
    for name, stage, op, threshold, n in session.execute(
            select(Rejection.metric, Rejection.stage, Rejection.op, Rejection.threshold,
                   func.count()).where(Rejection.metric.is_not(None))
            .group_by(Rejection.metric, Rejection.stage, Rejection.op, Rejection.threshold)):
        cuts.setdefault((name, stage), {})[(op, threshold)] = n
    out = []
    for (name, stage), vs in values.items():
        q = tuple(float(x) for x in np.quantile(np.asarray(vs, np.float64), QUANTILES))
        out.append(MetricStats(name, stage, len(vs), q, cuts.get((name, stage), {})))
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(out, key=lambda m: (order.get(m.stage, 99), m.name))


def scene_record(session: Session, scene_id: int) -> dict | None:
    """Everything the catalog holds on one scene (``cineforge curate explain``), or None."""
    scene = session.get(Scene, scene_id)
    if scene is None:
        return None
    source = session.get(Source, scene.source_id)
    rejection = session.get(Rejection, scene_id)
    tasks = {t.stage: {"state": t.state, "attempts": t.attempts, "error": t.error}
             for t in session.scalars(select(Task).where(Task.item_id == scene_id,
                                                         Task.stage != "split"))}
    return {
        "scene_id": scene.id, "source": source.path, "index": scene.index,
        "start_frame": scene.start_frame, "end_frame": scene.end_frame, "fps": scene.fps,
        "duration_s": round(scene.duration_s, 4),
        "crop": [scene.crop_x, scene.crop_y, scene.crop_w, scene.crop_h],
        "brightness": scene.brightness, "clip": scene.clip_path, "status": scene.status,
        "rejected": None if rejection is None else {
            "stage": rejection.stage, "reason": rejection.reason, "metric": rejection.metric,
            "value": rejection.value, "op": rejection.op, "threshold": rejection.threshold},
        "duplicate_of": scene.duplicate_of,
        "phash": None if scene.phash is None else f"{scene.phash & (2**64 - 1):016x}",
        "metrics": {m.name: m.value for m in session.scalars(
            select(Metric).where(Metric.scene_id == scene_id).order_by(Metric.name))},
        "captions": {c.captioner: c.text for c in session.scalars(
            select(Caption).where(Caption.scene_id == scene_id))},
        "tasks": tasks,
    }


def export_rows(session: Session, after: str = "filters") -> list[dict]:
    """The kept scenes: active, with the ``after`` stage done; one JSON-able dict each
    (source, frame range, seconds, crop, metrics, captions, shard)."""
    done = select(Task.item_id).where(Task.stage == after, Task.state == "done")
    query = (
        select(Scene, Source.path)
        .join(Source, Source.id == Scene.source_id)
        .where(Scene.status == "active", Scene.id.in_(done))
        .order_by(Scene.id)
    )
    kept = query.with_only_columns(Scene.id).order_by(None).scalar_subquery()
    metrics: dict[int, dict[str, float]] = {}
    for m in session.scalars(select(Metric).where(Metric.scene_id.in_(kept))):
        metrics.setdefault(m.scene_id, {})[m.name] = m.value
    captions: dict[int, dict[str, str]] = {}
    for c in session.scalars(select(Caption).where(Caption.scene_id.in_(kept))):
        captions.setdefault(c.scene_id, {})[c.captioner] = c.text
    shards = dict(session.execute(select(Shard.id, Shard.path)).tuples().all())
    return [
        {
            "scene_id": s.id, "source": path, "clip": s.clip_path,
            "start_frame": s.start_frame, "end_frame": s.end_frame, "fps": s.fps,
            "start_s": round(s.start_frame / s.fps, 4), "end_s": round(s.end_frame / s.fps, 4),
            "crop": [s.crop_x, s.crop_y, s.crop_w, s.crop_h], "brightness": s.brightness,
            "metrics": metrics.get(s.id, {}), "captions": captions.get(s.id, {}),
            "shard": shards.get(s.shard_id),
        }
        for s, path in session.execute(query).tuples()
    ]
