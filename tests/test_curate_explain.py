"""Explainable decisions: each rejection keeps the measured value and the threshold it broke;
``curate status`` shows score distributions and what each threshold removed; ``curate explain``
prints one scene; ``curate export --contact-sheet`` writes one image per kept/rejected scene."""

import json

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from cineforge.cli.main import main
from cineforge.data.curate.catalog import Rejection, Scene, open_catalog, session_factory
from cineforge.data.curate.filters import MotionFilter, TechnicalFilter, apply_filters
from curate_corpus import clip, write

pytest.importorskip("scenedetect")


def test_verdict_names_the_broken_limit():
    still = np.repeat(clip(3)[:1], 8, axis=0)
    verdict = apply_filters(still, [MotionFilter(min_motion=0.01)])
    assert verdict.reason == "static"
    assert (verdict.failed.metric, verdict.failed.value, verdict.failed.op,
            verdict.failed.threshold) == ("motion", 0.0, ">=", 0.01)
    washed = (clip(3)[::4] // 16 + 120).astype(np.uint8)
    failed = apply_filters(washed, [TechnicalFilter()]).failed
    assert failed.metric == "contrast" and failed.value < failed.threshold == 12.0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    a = clip(41)
    write(root / "a.mp4", np.concatenate([a, clip(42, moving=False), clip(43, frames=18)]))
    write(root / "copy.mp4", a, crf=30)
    db = str(root / "c.db")
    assert main(["curate", "ingest", str(root), "--db", db]) == 0
    assert main(["curate", "run", "--db", db]) == 0
    return root, db


def test_rejections_store_value_and_threshold(catalog):
    _, db = catalog
    with session_factory(open_catalog(db, create=False))() as session:
        rows = {r.reason: r for r in session.scalars(select(Rejection))}
        active = session.scalars(select(Scene.id).where(Scene.status == "active")).all()
    assert len(active) == 1 and set(rows) == {"static", "too_short", "duplicate"}
    short = rows["too_short"]
    assert (short.stage, short.metric, short.op, short.threshold) == ("split", "duration_s",
                                                                      ">=", 2.0)
    assert short.value == pytest.approx(18 / 12)
    static = rows["static"]
    assert static.metric == "motion" and static.value < static.threshold
    dup = rows["duplicate"]
    assert dup.metric == "duplicate_distance" and dup.value <= dup.threshold


def test_status_explain_and_contact_sheets(catalog, capsys):
    root, db = catalog
    capsys.readouterr()
    assert main(["curate", "status", "--db", db]) == 0
    out = capsys.readouterr().out
    motion = next(line for line in out.splitlines() if line.startswith("motion "))
    assert "filters" in motion and "1 by >= 0.005" in motion
    duration = next(ln for ln in out.splitlines() if ln.startswith("duration_s")).split()
    assert duration[1:4] == ["split", "4", "1.5"] and duration[-3:] == ["by", ">=", "2"]

    with session_factory(open_catalog(db, create=False))() as session:
        static_id = session.scalars(select(Rejection.scene_id)
                                    .where(Rejection.reason == "static")).one()
    assert main(["curate", "explain", str(static_id), "--db", db]) == 0
    out = capsys.readouterr().out
    first, record = out.split("\n", 1)
    assert first.startswith(f"scene {static_id}: rejected at filters: static (motion = ")
    assert first.endswith("needs >= 0.005)")
    record = json.loads(record)
    assert record["metrics"]["motion"] < 0.005 and record["start_frame"] == 36
    assert main(["curate", "explain", "999", "--db", db]) == 2
    assert "no scene 999" in capsys.readouterr().err

    sheets = root / "sheets"
    assert main(["curate", "export", "--db", db, "-o", str(root / "s.jsonl"),
                 "--contact-sheet", str(sheets)]) == 0
    assert "1 kept, 3 rejected, 0 unreadable" in capsys.readouterr().out
    files = sorted(p.relative_to(sheets).parent.as_posix() for p in sheets.rglob("*.jpg"))
    assert files == ["kept", "rejected/dedup-duplicate", "rejected/filters-static",
                     "rejected/split-too_short"]
    from cineforge.data.curate.sheets import caption_line

    with session_factory(open_catalog(db, create=False))() as session:
        dup = session.scalars(select(Rejection).where(Rejection.reason == "duplicate")).one()
    assert caption_line(dup.scene_id, dup, 1) == (
        f"scene {dup.scene_id}: dedup duplicate of scene 1 (duplicate_distance "
        f"{dup.value:.4g}, needs > 14)")
    image = Image.open(next((sheets / "kept").glob("*.jpg")))
    assert image.height == 138 and image.width >= 4 * 120


def test_thresholds_file_and_duplicate_settings_from_the_cli(tmp_path, capsys):
    import yaml

    from cineforge.data.curate.filters import THRESHOLDS

    settings = yaml.safe_load(THRESHOLDS.read_text())
    settings["motion"]["min_motion"] = 0.9  # every real or rendered scene moves less
    custom = tmp_path / "strict.yaml"
    custom.write_text(yaml.safe_dump(settings))
    write(tmp_path / "a.mp4", clip(44))
    db = str(tmp_path / "c.db")
    assert main(["curate", "ingest", str(tmp_path / "a.mp4"), "--db", db]) == 0
    assert main(["curate", "run", "--db", db, "--thresholds", str(custom)]) == 0
    assert "rejected at filters  static         1" in capsys.readouterr().out

    del settings["text"]
    custom.write_text(yaml.safe_dump(settings))
    assert main(["curate", "run", "--db", db, "--thresholds", str(custom)]) == 2
    assert "bad or missing filter settings" in capsys.readouterr().err
    assert main(["curate", "run", "--db", db, "--duplicate-distance", "16"]) == 2
    assert "duplicate_distance must be in 0..15" in capsys.readouterr().err
