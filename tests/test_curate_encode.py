"""The encode stage: captioned scenes -> latent shards by bucket, committed once, published
after the commit (a lost claim publishes nothing; a death after the commit is rolled
forward)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from cineforge.data.curate import encode
from cineforge.data.curate.catalog import (
    Scene,
    Shard,
    Source,
    Task,
    open_catalog,
    session_factory,
)
from cineforge.data.curate.claims import claim
from cineforge.data.curate.encode import EncodeConfig, bucket_clip
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, _encode_batch, run
from cineforge.data.curate.scenes import read_scene
from cineforge.data.curate.shards import ShardDataset
from cineforge.data.curate.stages import CurateConfig, StageContext
from cineforge.data.latents import EMPTY
from cineforge.errors import CineforgeError
from curate_corpus import PoolEncoder, clip, write

pytest.importorskip("scenedetect")


@pytest.fixture
def catalog(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write(videos / "a.mp4", np.concatenate([clip(41), clip(42)]))  # 2 scenes, 64x64
    letterboxed = np.pad(clip(43), ((0, 0), (16, 16), (0, 0), (0, 0)))  # 64 wide, 96 high
    write(videos / "b.mp4", letterboxed)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"source": str(videos / n), "caption": f"clip {n}"})
                                + "\n" for n in ("a.mp4", "b.mp4")))
    db = str(tmp_path / "c.db")
    ingest(open_catalog(db), [videos])
    config = CurateConfig(captioner=f"manual:{captions}", encode=EncodeConfig(
        encoder="curate_corpus:make_encoder", shard_dir=str(tmp_path / "shards"), frames=9,
        fps=6.0))
    run(db, config, WorkOptions(stages=("split", "dedup", "filters", "caption")))
    return db, config


def test_scenes_encoded_into_bucketed_shards(catalog):
    db, config = catalog
    run(db, config, WorkOptions(stages=("encode",), batch=2))
    engine = open_catalog(db)
    data = ShardDataset(config.encode.shard_dir)
    with session_factory(engine)() as s:
        scenes = list(s.scalars(select(Scene).order_by(Scene.id)))
        shards = list(s.scalars(select(Shard).order_by(Shard.id)))
        states = s.execute(select(Task.state, func.count()).where(Task.stage == "encode")
                           .group_by(Task.state)).all()
    assert [tuple(r) for r in states] == [("done", 3)]
    assert len(data) == 3 and data.meta == PoolEncoder.meta
    assert sorted(data.key(i) for i in range(3)) == [s.id for s in scenes]
    # two claim batches -> two shards; all three scenes land in the 64x64 bucket (b is
    # letterboxed: its bars are cropped before bucketing), 9 frames at 6 fps
    assert [(sh.bucket, sh.count) for sh in shards] == [("bucket-64x64-f9", 2),
                                                       ("bucket-64x64-f9", 1)]
    assert {s.shard_id for s in scenes} == {sh.id for sh in shards}
    i = next(i for i in range(3) if data.key(i) == scenes[1].id)
    with session_factory(engine)() as s:
        path = s.get(Source, scenes[1].source_id).path
    frames = read_scene(path, 36, 54, (0, 0, 64, 64), step=2)  # 12 fps -> 6 fps, 9 frames
    want = PoolEncoder().encode_video(bucket_clip(frames, 64, 64, 9)[None])[0]
    assert torch.equal(data[i].latent, want.half().float())
    assert data.caption(i) == "clip a.mp4" and data[i].text.shape == (2, 8)
    assert not any((data.folder / encode.STAGING).iterdir())  # staging emptied


def test_lost_claim_publishes_nothing(catalog):
    db, config = catalog
    engine = open_catalog(db)
    sessions = session_factory(engine)
    stale = claim(sessions, ["encode"], "slow", 3, lease_s=0.0)  # expired at once
    assert claim(sessions, ["encode"], "other", 3, lease_s=60)  # taken over
    counts = _encode_batch(StageContext(engine, config), sessions, stale)
    assert counts == {"done": 0, "failed": 0, "lost": 3}
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(Shard)).scalar_one() == 0
    written = Path(config.encode.shard_dir).rglob("*.safetensors")
    assert [p.name for p in written] == [EMPTY]  # the folder's empty-prompt states, no shard


def test_death_between_commit_and_publish_is_rolled_forward(catalog, monkeypatch):
    db, config = catalog
    monkeypatch.setattr(encode, "publish", lambda *a: None)  # the worker dies right here
    run(db, config, WorkOptions(stages=("encode",), batch=3))
    monkeypatch.undo()
    assert len(ShardDataset(config.encode.shard_dir)) == 0  # committed, not yet visible
    run(db, config, WorkOptions(stages=("encode",)))  # any later encode run publishes it
    assert len(ShardDataset(config.encode.shard_dir)) == 3


def test_preset_encoder_uses_the_presets_vae_and_text_encoder(tmp_path):
    from cineforge.families.family import load_model, save_components
    from cineforge.families.registry import get_preset

    preset = get_preset("wan2.1-t2v-tiny")
    dit, vae = (preset.family.build(part, getattr(preset, part)) for part in ("dit", "vae"))
    save_components(tmp_path / "w", dit=dit, vae=vae)
    enc = encode.load_encoder(EncodeConfig(encoder="preset:wan2.1-t2v-tiny",
                                           shard_dir=str(tmp_path / "s"),
                                           weights=str(tmp_path / "w")))
    assert enc.meta == {"encoder": "preset:wan2.1-t2v-tiny", "latent_channels": 16,
                        "text_dim": 384}
    video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = load_model(preset, tmp_path / "w", "vae")
    torch.testing.assert_close(enc.encode_video(video), reference.encode(video))
    texts = enc.encode_text(["a red circle moves left", "x"])
    assert [t.shape[1] for t in texts] == [384, 384] and texts[0].shape[0] > texts[1].shape[0]
    with pytest.raises(CineforgeError, match="preset:NAME"):
        encode.load_encoder(EncodeConfig(encoder="nocolon", shard_dir="s"))
