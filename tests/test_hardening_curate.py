"""Curation under careless or hostile use: short leases kept alive by a heartbeat, dead and
interrupted workers, a PostgreSQL server that never answers, catalogs that do not exist or are
not databases, racing ingests, text files and truncated videos posing as video."""

import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import av
import numpy as np
import pytest
from sqlalchemy import func, select

from cineforge.cli.main import main
from cineforge.data.curate import catalog
from cineforge.data.curate.catalog import Source, Task, open_catalog, session_factory
from cineforge.data.curate.claims import Heartbeat, add_tasks, claim, finish
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, run, waiting_for, work
from cineforge.data.curate.stages import CurateConfig
from cineforge.errors import CineforgeError
from curate_corpus import FPS, catalog_db, clip, write

BACKENDS = ["sqlite", "postgresql"]


def _states(sessions, stage):
    with sessions() as s:
        rows = s.execute(select(Task.state, func.count()).where(Task.stage == stage)
                         .group_by(Task.state)).tuples().all()
    return dict(rows)


# ------------------------------------------------------------------ 7: leases and workers

@pytest.mark.parametrize("backend", BACKENDS)
def test_heartbeat_keeps_a_short_lease_and_stops_with_the_batch(backend, tmp_path):
    with catalog_db(backend, tmp_path) as db:
        engine = open_catalog(db)
        sessions = session_factory(engine)
        with sessions.begin() as s:
            add_tasks(s, "dedup", [1, 2])
        mine = claim(sessions, ["dedup"], "a", 2, lease_s=0.3)
        with Heartbeat(sessions, mine, lease_s=0.3):
            time.sleep(0.8)  # well past the lease: the heartbeat renewed it
            assert claim(sessions, ["dedup"], "b", 2, lease_s=60) == []
            with sessions.begin() as s:
                assert finish(s, mine[0])
        time.sleep(0.4)  # the batch ended: no more renewals, the lease runs out
        taken = claim(sessions, ["dedup"], "b", 2, lease_s=60)
        assert [c.item_id for c in taken] == [2]  # the finished task stays finished
        engine.dispose()


class Interrupt:
    """A filter that stands for Ctrl-C in the middle of a batch."""

    reason, cost = "interrupted", 0.0

    def __call__(self, frames):
        raise KeyboardInterrupt


class DieOnce:
    """A filter that kills its own worker process with SIGKILL, the first time any worker
    calls it (the marker file named by $CF_TEST_DIE_MARKER records that it happened)."""

    reason, cost = "never", 0.0

    def __call__(self, frames):
        try:
            os.close(os.open(os.environ["CF_TEST_DIE_MARKER"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return {}, True
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def split_catalog(tmp_path_factory):
    """A SQLite catalog of four one-scene sources, split, with their dedup tasks pending."""
    pytest.importorskip("scenedetect")
    root = tmp_path_factory.mktemp("split")
    (root / "videos").mkdir()
    for k in range(4):
        write(root / "videos" / f"v{k}.mp4", clip(40 + k))
    db = str(root / "catalog.db")
    engine = open_catalog(db)
    ingest(engine, [root / "videos"])
    engine.dispose()
    run(db, CurateConfig(), WorkOptions(stages=("split",)))
    return Path(db)


@pytest.fixture
def db(split_catalog, tmp_path):
    return str(shutil.copy(split_catalog, tmp_path / "catalog.db"))


def test_interrupted_worker_hands_its_claims_back(db):
    options = WorkOptions(stages=("dedup", "filters"), batch=4, lease_s=60)
    with pytest.raises(KeyboardInterrupt):
        work(db, CurateConfig(plugins=("test_hardening_curate:Interrupt",)), options)
    sessions = session_factory(open_catalog(db))
    assert _states(sessions, "dedup") == {"done": 4}
    assert _states(sessions, "filters") == {"pending": 4}  # not leased for a minute


def test_waiting_run_names_whose_leases_it_waits_for(db):
    sessions = session_factory(open_catalog(db))
    claim(sessions, ["dedup"], "elsewhere:42", 3, lease_s=4.0)
    with sessions() as s:
        assert waiting_for(s, ("dedup",), {"me:1"}) is None  # one task is there to claim
    claim(sessions, ["dedup"], "elsewhere:42", 1, lease_s=4.0)
    with sessions() as s:
        until = s.scalar(select(func.max(Task.lease_until)).where(Task.stage == "dedup"))
        until = time.strftime("%H:%M:%S", time.localtime(until))
        assert waiting_for(s, ("dedup",), {"elsewhere:42"}) is None  # our own worker
        assert waiting_for(s, ("dedup",), {"me:1"}) == (
            f"waiting for 4 tasks leased by worker elsewhere:42 until {until}")
    heard = []
    work(db, CurateConfig(), WorkOptions(stages=("dedup",), poll_s=0.05), say=heard.append)
    assert heard == [f"waiting for 4 tasks leased by worker elsewhere:42 until {until}"]
    assert _states(sessions, "dedup") == {"done": 4}  # taken over once the leases ran out


def test_dead_worker_is_named_and_its_tasks_return_at_once(db, tmp_path, monkeypatch):
    monkeypatch.setenv("CF_TEST_DIE_MARKER", str(tmp_path / "died"))
    config = CurateConfig(plugins=("test_hardening_curate:DieOnce",))
    options = WorkOptions(stages=("dedup", "filters"), batch=4, lease_s=120, poll_s=0.05)
    heard = []
    with pytest.raises(CineforgeError) as err:
        run(db, config, options, workers=1, progress=lambda counts: None, say=heard.append)
    message = str(err.value)
    assert message.startswith("1 of 1 workers stopped: worker ")
    assert "was killed by SIGKILL" in message and "\n" not in message
    assert len(heard) == 1 and heard[0].endswith(
        "was killed by SIGKILL; 4 tasks it held go back to the queue")
    sessions = session_factory(open_catalog(db))
    assert _states(sessions, "filters") == {"pending": 4}  # not leased for 120 s


# ------------------------------------------------------------ 8: a server that never answers

@contextmanager
def silent_server(seconds: float = 8.0):
    """A TCP port on 127.0.0.1 that accepts connections and never says a word; it closes
    everything after ``seconds`` (or when the block ends)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    stop, conns = threading.Event(), []

    def serve():
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            with suppress(TimeoutError):
                conns.append(srv.accept()[0])
        for c in conns:
            c.close()
        srv.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join()


def test_postgres_that_never_answers_times_out_in_one_line(monkeypatch, capsys):
    pytest.importorskip("psycopg")
    monkeypatch.setattr(catalog, "CONNECT_TIMEOUT_S", 2)  # libpq's shortest
    with silent_server() as port:
        result = []
        url = f"postgresql://me:secret@127.0.0.1:{port}/db"
        caller = threading.Thread(target=lambda: result.append(
            main(["curate", "status", "--db", url])), daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(timeout=6)
        assert result == [2], "still waiting for a server that never answers"
        assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "secret" not in err
    assert f"postgresql://me:***@127.0.0.1:{port}/db" in err
    assert "no answer within 2 s" in err


def test_postgres_sessions_have_statement_and_lock_timeouts(tmp_path):
    with catalog_db("postgresql", tmp_path) as db:
        engine = open_catalog(db)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5min"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1min"
        engine.dispose()


# ------------------------------------------------ 9 and 6: catalogs that are not catalogs

def test_readers_never_create_a_catalog(tmp_path, capsys):
    typo = tmp_path / "typo.db"
    for action in (["status"], ["export", "-o", str(tmp_path / "out.jsonl")]):
        assert main(["curate", *action, "--db", str(typo)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "typo.db does not exist; check --db" in err
    assert not typo.exists() and not (tmp_path / "out.jsonl").exists()
    typo.touch()  # an empty file: no catalog in it either
    assert main(["curate", "status", "--db", str(typo)]) == 2
    assert "holds no curation catalog" in capsys.readouterr().err


def test_db_that_is_not_a_database_is_one_line_and_left_alone(tmp_path, capsys):
    video = write(tmp_path / "clip.mp4", clip(1, frames=4))
    before = video.read_bytes()
    for action in (["status"], ["ingest", str(video)]):
        assert main(["curate", *action, "--db", str(video)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "clip.mp4 is not a SQLite database" in err
    assert video.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no -wal, no -shm
    assert main(["curate", "status", "--db", "postgresql://me:pw@:badport/db"]) == 2
    err = capsys.readouterr().err
    assert err == ("cineforge: error: cannot parse catalog URL postgresql://me:***@:badport/db;"
                   " pass --db a file path or postgresql://user@host:port/db\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ingests_of_the_same_files_at_once(backend, tmp_path):
    (tmp_path / "videos").mkdir()
    for k in range(2):
        write(tmp_path / "videos" / f"v{k}.mp4", clip(60 + k, frames=6))
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"garbage" * 20)
    with catalog_db(backend, tmp_path) as db:
        open_catalog(db).dispose()
        both_looked = threading.Barrier(2)

        def after_both_looked(files):  # both read the known paths (none) before either adds
            both_looked.wait(timeout=10)
            return iter(files)

        def race(reports, errors):
            engine = open_catalog(db)
            try:
                reports.append(ingest(engine, [tmp_path / "videos"], after_both_looked))
            except Exception as exc:
                errors.append(exc)
            finally:
                engine.dispose()

        reports, errors = [], []
        threads = [threading.Thread(target=race, args=(reports, errors)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == [] and len(reports) == 2
        assert sum(r.added for r in reports) == 2 and sum(r.rejected for r in reports) == 1
        assert all(r.added + r.rejected + r.already_known == 3 for r in reports)
        engine = open_catalog(db)
        with session_factory(engine)() as s:
            paths = list(s.scalars(select(Source.path)))
            splits = s.execute(select(func.count()).where(Task.stage == "split")).scalar_one()
        assert sorted(Path(p).name for p in paths) == ["broken.mp4", "v0.mp4", "v1.mp4"]
        assert splits == 2
        engine.dispose()


# ------------------------------------------------------- 10: text and truncated "videos"

def _decodable(path) -> int:
    n = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                n += 1
    except av.FFmpegError:
        pass
    return n


def test_text_files_and_truncated_videos(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("cineforge\n=========\n\nText to video models.\n" * 40)
    with av.open(str(text)) as container:  # what makes this a test: FFmpeg calls it a video
        assert container.streams.video
    frames = np.concatenate([clip(1), clip(2), clip(3)])  # 108 frames
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)  # the index first: it survives
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    truncated = tmp_path / "truncated.mp4"
    data = whole.read_bytes()
    truncated.write_bytes(data[: len(data) * 45 // 100])
    decodable = _decodable(truncated)
    assert 10 < decodable < 100

    engine = open_catalog(str(tmp_path / "c.db"))
    report = ingest(engine, [text, whole, truncated])
    assert (report.added, report.rejected) == (2, 1)
    with session_factory(engine)() as s:
        sources = {Path(x.path).name: x for x in s.scalars(select(Source))}
    assert sources["readme.txt"].status == "rejected"
    assert sources["readme.txt"].reason.startswith("no_video: a text file")
    assert sources["whole.mp4"].frames == 108 and sources["whole.mp4"].duration_s == 9.0
    cut = sources["truncated.mp4"]
    assert cut.status == "ok" and cut.frames == decodable
    assert cut.duration_s == pytest.approx(decodable / FPS)
    engine.dispose()
