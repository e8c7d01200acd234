"""End to end on a generated corpus: ingest -> split -> dedup -> filters on a SQLite file and
(when $CINEFORGE_TEST_PG_URL is set) on PostgreSQL. Cuts, duplicates and bad clips are planted
by tests/curate_corpus.py; the catalog must find each of them and nothing else."""

from pathlib import Path

import pytest
from sqlalchemy import select

from cineforge.data.curate.catalog import Scene, Source, open_catalog, session_factory, summary
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, run
from cineforge.data.curate.stages import CurateConfig
from curate_corpus import catalog_db, make_corpus

pytest.importorskip("scenedetect")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def curated(request, corpus, tmp_path_factory):
    with catalog_db(request.param, tmp_path_factory.mktemp("db")) as db:
        engine = open_catalog(db)
        report = ingest(engine, [corpus.root])
        run(db, CurateConfig(), WorkOptions(stages=("split", "dedup", "filters")))
        with session_factory(engine)() as session:
            sources = {Path(s.path).name: s for s in session.scalars(select(Source))}
            names = {s.id: name for name, s in sources.items()}
            scenes: dict[str, list[Scene]] = {name: [] for name in sources}
            for scene in session.scalars(select(Scene).order_by(Scene.source_id, Scene.index)):
                scenes[names[scene.source_id]].append(scene)
            status = summary(session)
        yield report, sources, scenes, status
        engine.dispose()


def _match(truth, found, tol):
    """(precision, recall) of ``found`` cut frames against ``truth``, within ``tol`` frames."""
    hits = sum(any(abs(f - t) <= tol for t in truth) for f in found)
    recalled = sum(any(abs(f - t) <= tol for f in found) for t in truth)
    return hits / max(1, len(found)), recalled / max(1, len(truth))


def test_cut_detection_precision_and_recall(corpus, curated):
    _, _, scenes, _ = curated
    tp = fp = fn = 0
    for name, tol in (("cuts.mp4", 1), ("fades.mp4", 3)):  # fades: within half the fade
        found = [s.start_frame for s in scenes[name][1:]]
        truth = corpus.cuts[name]
        precision, recall = _match(truth, found, tol)
        tp += round(recall * len(truth))
        fp += len(found) - round(precision * len(found))
        fn += len(truth) - round(recall * len(truth))
        assert len(scenes[name]) == corpus.scenes[name]
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (tp, fp, fn)
    # scenes tile their source without gaps
    for name in ("cuts.mp4", "fades.mp4"):
        ends = [(s.start_frame, s.end_frame) for s in scenes[name]]
        assert all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False))


def test_every_planted_duplicate_removed_and_nothing_else(corpus, curated):
    _, _, scenes, _ = curated
    originals = {"dup_reencoded.mp4": 0, "dup_resized.mp4": 1, "dup_letterboxed.mp4": 2}
    for name in corpus.duplicates:
        (scene,) = scenes[name]
        assert (scene.status, scene.reject_reason) == ("rejected", "duplicate"), name
        assert scene.duplicate_of == scenes["cuts.mp4"][originals[name]].id, name
    dups = [s for ss in scenes.values() for s in ss if s.reject_reason == "duplicate"]
    assert len(dups) == len(corpus.duplicates)


def test_each_bad_clip_rejected_with_its_reason(corpus, curated):
    _, _, scenes, _ = curated
    for name, reason in corpus.bad.items():
        (scene,) = scenes[name]
        assert (scene.status, scene.reject_reason) == ("rejected", reason), name
    good = [*scenes["cuts.mp4"][3:], *scenes["fades.mp4"], *scenes["letterbox.mp4"]]
    assert all(s.status == "active" for s in good), [(s.id, s.reject_reason) for s in good]


def test_corrupt_file_recorded_not_fatal(corpus, curated):
    report, sources, _, status = curated
    assert report.rejected == 1 and report.added == len(sources) - 1
    broken = sources["broken.mp4"]
    assert broken.status == "rejected" and broken.reason.startswith("unreadable:")
    assert status.source_reasons == {"unreadable": 1}


def test_black_borders_cropped(curated):
    _, _, scenes, _ = curated
    (scene,) = scenes["letterbox.mp4"]
    assert (scene.crop_x, scene.crop_y, scene.crop_w, scene.crop_h) == (0, 8, 64, 48)
    assert 100 < scene.brightness < 180  # measured inside the crop, bars excluded
    (dup,) = scenes["dup_letterboxed.mp4"]
    assert (dup.crop_x, dup.crop_y, dup.crop_w, dup.crop_h) == (0, 8, 64, 64)


def test_status_counts(corpus, curated):
    _, sources, scenes, status = curated
    n_scenes = sum(len(v) for v in scenes.values())
    assert sum(status.scenes.values()) == n_scenes
    assert status.rejects == {
        ("split", "too_dark"): 1, ("split", "too_short"): 1, ("dedup", "duplicate"): 3,
        ("filters", "static"): 1, ("filters", "blurry"): 1, ("filters", "text"): 1,
    }
    assert status.tasks["split"] == {"done": len(sources) - 1}
    active = n_scenes - sum(status.rejects.values())
    assert status.tasks["caption"] == {"pending": active}  # queued for a later run
