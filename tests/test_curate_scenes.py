"""Probing, scene splitting (long scenes, borders, brightness), scene reads and transcoding."""

import av
import cv2
import numpy as np
import pytest

from cineforge.data.curate.ingest import find_videos, probe
from cineforge.data.curate.scenes import (
    SceneCut,
    SplitConfig,
    iter_scene,
    needs_transcode,
    read_scene,
    split_scenes,
    transcode_scene,
)
from cineforge.errors import CineforgeError
from curate_corpus import clip, letterbox, write

pytest.importorskip("scenedetect")


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """6 s at 12 fps: two 3 s clips with a hard cut at frame 36."""
    path = tmp_path_factory.mktemp("v") / "two.mp4"
    return write(path, np.concatenate([clip(1), clip(2)]))


def test_probe_reads_stream_facts(two_clips):
    p = probe(two_clips)
    assert (p.width, p.height, p.fps, p.frames, p.codec) == (64, 64, 12.0, 72, "h264")
    assert abs(p.duration_s - 6.0) < 0.1 and p.bitrate > 0


def test_probe_rejects_non_video_with_reason(tmp_path):
    from cineforge.data.curate.ingest import ProbeError

    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ProbeError, match="^unreadable: "):
        probe(text)
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            c.mux(packet)
    with pytest.raises(ProbeError, match="^no_video: "):
        probe(audio)


def test_find_videos_walks_folders(tmp_path, two_clips):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.MP4").write_bytes(two_clips.read_bytes())
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in find_videos([tmp_path])] == ["a.MP4"]
    with pytest.raises(CineforgeError, match="does not exist"):
        find_videos([tmp_path / "missing"])


def test_long_scenes_are_cut_into_equal_pieces(two_clips):
    fps, scenes = split_scenes(two_clips, SplitConfig(min_scene_s=0.5, max_scene_s=1.4))
    # each 36-frame scene (3 s) -> 3 pieces of 12 frames (1 s <= 1.4 s)
    assert fps == 12.0
    assert [(s.start_frame, s.end_frame) for s in scenes] == [
        (0, 12), (12, 24), (24, 36), (36, 48), (48, 60), (60, 72)]
    assert all(s.reject_reason is None for s in scenes)
    _, scenes = split_scenes(two_clips, SplitConfig(min_scene_s=3.5))
    assert [s.reject_reason for s in scenes] == ["too_short", "too_short"]


def test_brightness_limits_and_borders(tmp_path):
    frames = letterbox(clip(3), bar=10)
    _, (scene,) = split_scenes(write(tmp_path / "box.mp4", frames), SplitConfig())
    assert scene.crop == (0, 10, 64, 44)
    inner = frames[:, 10:-10].astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    assert abs(scene.brightness - inner.mean()) < 3.0  # bars excluded from the mean
    bright = np.full((30, 64, 64, 3), 245, np.uint8)
    bright[:, 20:40, 20:40] = 200
    _, (scene,) = split_scenes(write(tmp_path / "white.mp4", bright), SplitConfig())
    assert scene.reject_reason == "too_bright"


def test_read_scene_seeks_to_exact_frames(two_clips):
    indices = [i for i, _ in iter_scene(two_clips, 40, 60, (0, 0, 64, 64), step=5)]
    assert indices == [40, 45, 50, 55]
    whole = read_scene(two_clips, 0, 72, (0, 0, 64, 64))
    part = read_scene(two_clips, 40, 60, (8, 4, 32, 16), step=5)
    assert part.shape == (4, 16, 32, 3)
    np.testing.assert_array_equal(part, whole[40:60:5, 4:20, 8:40])
    with pytest.raises(CineforgeError, match="missing"):
        read_scene(two_clips, 100, 110, (0, 0, 64, 64))


def test_transcode_scales_down_size_and_frame_rate(tmp_path):
    src = write(tmp_path / "fast.mp4", clip(4, frames=48), fps=24)
    config = SplitConfig(max_height=32, max_fps=12)
    assert needs_transcode(64, 64, 24.0, config) and not needs_transcode(64, 64, 12, SplitConfig())
    scene = SceneCut(0, 8, 40, (0, 8, 64, 48), 128.0)
    out = transcode_scene(src, scene, 24.0, tmp_path / "out.mp4", config)
    p = probe(out)
    assert (p.width, p.height, p.fps, p.frames) == (42, 32, 12.0, 16)
    # output frame k is source frame 8 + 2k, cropped and scaled
    ours = read_scene(out, 0, 16, (0, 0, 42, 32)).astype(np.float32)
    want = read_scene(src, 8, 40, (0, 8, 64, 48), step=2)
    want = np.stack([cv2.resize(f, (42, 32), interpolation=cv2.INTER_AREA) for f in want])
    assert np.abs(ours - want).mean() < 8.0


def test_split_stage_transcodes_scenes_over_the_limits(tmp_path):
    from sqlalchemy import select

    from cineforge.data.curate.catalog import Scene, open_catalog, session_factory
    from cineforge.data.curate.ingest import ingest
    from cineforge.data.curate.runner import WorkOptions, run
    from cineforge.data.curate.stages import CurateConfig, scene_frames

    (tmp_path / "v").mkdir()
    write(tmp_path / "v" / "fast.mp4", np.concatenate([clip(6, 72), clip(7, 72)]), fps=24)
    db = str(tmp_path / "c.db")
    engine = open_catalog(db)
    ingest(engine, [tmp_path / "v"])
    config = CurateConfig(split=SplitConfig(max_fps=12.0), transcode_dir=str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    run(db, config, WorkOptions(stages=("split", "dedup", "filters")))
    with session_factory(engine)() as s:
        scenes = list(s.scalars(select(Scene).order_by(Scene.index)))
    assert [(sc.start_frame, sc.end_frame, sc.status) for sc in scenes] == [
        (0, 72, "active"), (72, 144, "active")]
    for sc in scenes:
        p = probe(sc.clip_path)
        assert (p.fps, p.frames, p.width) == (12.0, 36, 64)
        assert scene_frames(engine, sc.id).shape == (36, 64, 64, 3)  # read from the clip


def test_a_failing_task_is_recorded_not_fatal(tmp_path):
    from cineforge.data.curate.catalog import Source, open_catalog, session_factory, summary
    from cineforge.data.curate.ingest import ingest
    from cineforge.data.curate.runner import WorkOptions, work
    from cineforge.data.curate.stages import CurateConfig

    (tmp_path / "v").mkdir()
    gone = write(tmp_path / "v" / "gone.mp4", clip(8))
    write(tmp_path / "v" / "kept.mp4", clip(9))
    db = str(tmp_path / "c.db")
    engine = open_catalog(db)
    ingest(engine, [tmp_path / "v"])
    gone.unlink()  # vanished between ingest and split
    counts = work(db, CurateConfig(), WorkOptions(stages=("split",)))
    assert counts == {"done": 1, "failed": 1, "lost": 0}
    with session_factory(engine)() as s:
        (source,) = [x for x in s.query(Source) if x.path.endswith("gone.mp4")]
        status = summary(s)
    assert source.status == "rejected" and source.reason.startswith("split_failed: ")
    assert status.tasks["split"] == {"done": 1, "failed": 1}
    assert status.source_reasons == {"split_failed": 1}
