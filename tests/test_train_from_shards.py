"""Curation feeds training: a tiny corpus curated end to end (ingest, split, dedup, filters,
captions, encode) into latent shards, and the tiny DiT trained from them with
``data.source: shards``."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cineforge.cli.main import main
from cineforge.data.curate.catalog import open_catalog
from cineforge.data.curate.encode import EncodeConfig
from cineforge.data.curate.ingest import ingest
from cineforge.data.curate.runner import WorkOptions, run
from cineforge.data.curate.shards import ShardDataset, ShardWriter
from cineforge.data.curate.stages import CurateConfig
from cineforge.data.latents import EMPTY
from cineforge.errors import CineforgeError
from cineforge.families.registry import get_preset
from cineforge.train.config import load_config
from cineforge.train.dit_task import DiTTask
from cineforge.train.export import save_weights
from cineforge.train.run import build_task
from cineforge.weights.files import write_model_config
from curate_corpus import FPS, clip, write
from train_runs import run_until

pytest.importorskip("scenedetect")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCENES = {"a.mp4": (41, 42, 43), "b.mp4": (44, 45)}  # file -> the clips joined by hard cuts


def _word(word: str) -> torch.Tensor:
    return torch.randn(384, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))


class TinyDiTEncoder:
    """A stand-in for a preset's VAE and text encoder at the tiny DiT's sizes: every 4th frame,
    8x8 average pooling, a fixed random 3 -> 16 channel projection; a caption's states are a
    fixed random 384-d vector per word, between a start and an end token."""

    meta = {"encoder": "tiny-dit-projection", "latent_channels": 16, "text_dim": 384}

    def __init__(self) -> None:
        self.mix = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool3d(video[:, :, ::4], (1, 8, 8))
        return torch.einsum("oc,bcthw->bothw", self.mix, pooled)

    def encode_text(self, captions: list[str]) -> list[torch.Tensor]:
        return [torch.stack([_word(w) for w in ["<s>", *c.split(), "</s>"]]) for c in captions]


def make_encoder() -> TinyDiTEncoder:
    return TinyDiTEncoder()


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, set[str]]:
    """The shard folder of a 5-scene corpus curated end to end (32x32, 9 frames per item),
    and the curated captions."""
    root = tmp_path_factory.mktemp("curated")
    videos = root / "videos"
    videos.mkdir()
    rows = []
    for name, seeds in SCENES.items():
        write(videos / name, np.concatenate([clip(s) for s in seeds]))
        seconds = 36 / FPS  # each clip is 36 frames
        rows += [{"source": str(videos / name), "start": k * seconds, "end": (k + 1) * seconds,
                  "caption": f"curated scene {seed} of {name}"} for k, seed in enumerate(seeds)]
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = str(root / "catalog.db")
    ingest(open_catalog(db), [videos])
    config = CurateConfig(captioner=f"manual:{captions}", encode=EncodeConfig(
        encoder=f"{__name__}:make_encoder", shard_dir=str(root / "shards"), pixels=32 * 32,
        frames=9, fps=6.0))
    run(db, config, WorkOptions(stages=("split", "dedup", "filters", "caption", "encode")))
    assert len(ShardDataset(root / "shards")) == 5
    return root / "shards", {r["caption"] for r in rows}


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """An 'exported' tiny Wan VAE (16 latent channels, random weights): the run's cache.vae,
    copied into its export."""
    folder = tmp_path_factory.mktemp("vae")
    preset = get_preset("wan2.1-t2v-tiny")
    vae = preset.family.build("vae", preset.vae)
    save_weights(vae, folder / "vae.safetensors")
    write_model_config(vae.config, folder / "vae.json")
    return folder


def shard_args(shards: Path, vae: Path, *more: str) -> list[str]:
    return ["data.source=shards", f"data.shards={shards}", f"cache.vae={vae}", *more]


def shard_config(out: Path, shards: Path, vae: Path, *more: str):
    return load_config(CONFIGS / "tiny_dit.yaml", [f"out={out}", *shard_args(shards, vae, *more)])


def test_cli_trains_the_dit_from_a_curated_export(curated, vae_dir, tmp_path, monkeypatch):
    shards, captions = curated
    drawn: list[str] = []
    next_batch = DiTTask.next_batch

    def recording(self, generator):
        batch = next_batch(self, generator)
        drawn.extend(item.caption for items in batch for item in items)
        return batch

    monkeypatch.setattr(DiTTask, "next_batch", recording)
    out = tmp_path / "run"
    # the encode stage stored the empty prompt's states: caption dropout (tiny_dit.yaml's) works
    assert (shards / EMPTY).is_file()
    torch.testing.assert_close(ShardDataset(shards).empty_text(),
                               TinyDiTEncoder().encode_text([""])[0].half().float())
    sets = [a for s in shard_args(shards, vae_dir) for a in ("--set", s)]
    assert main(["train", "dit", "--config", str(CONFIGS / "tiny_dit.yaml"), *sets,
                 "--out", str(out), "--no-progress"]) == 0

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert all(math.isfinite(r["val_video_loss"]) for r in records if r["kind"] == "val")
    data = ShardDataset(shards)
    held = data.caption(0)  # cache.val_videos: 1 -> the first clip is held aside
    assert len(drawn) == 4 * 2 and set(drawn) <= captions - {held}  # 4 steps of 2 clips

    config = load_config(out / "config.yaml")
    assert (config.data.source, config.data.shards) == ("shards", str(shards))
    initial = build_task(config).model.state_dict()
    trained = load_file(out / "export" / "dit.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k].half()) for k in initial)
    assert (out / "export" / "vae.json").is_file()


def test_resume_from_shards_is_exact_with_caption_dropout(curated, vae_dir, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(curated[0], shards)
    empty = TinyDiTEncoder().encode_text([""])[0]
    ShardWriter(shards, meta=TinyDiTEncoder.meta, empty_text=empty)  # adds empty.safetensors
    config = lambda out: shard_config(out, shards, vae_dir, "flow.caption_dropout=0.5")  # noqa: E731
    straight = run_until(config(tmp_path / "a"))
    assert torch.equal(straight.task.empty[:2], empty.half().float())
    assert run_until(config(tmp_path / "b"), stop=3).step == 3  # newest checkpoint: step 2
    resumed = run_until(config(tmp_path / "b"))
    assert straight.step == resumed.step == 4
    for name, x in straight.model.state_dict().items():
        assert torch.equal(x, resumed.model.state_dict()[name]), name
    for name, x in straight.ema.model.state_dict().items():
        assert torch.equal(x, resumed.ema.model.state_dict()[name]), f"ema {name}"
    assert straight.task.data_state() == resumed.task.data_state()
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def _textless(folder: Path) -> Path:
    with ShardWriter(folder, meta=TinyDiTEncoder.meta) as writer:
        for k in range(3):
            writer.add(torch.zeros(16, 3, 4, 4), f"clip {k}")
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "data.shards folder .*nowhere not found"),
        ("not_shards", "no latent shards in .*meta.json missing"),
        ("channels", "have 16 channels but the DiT takes 8; set model.overrides"),
        ("text_dim", "text states in .* are 384-d but the DiT's text_dim is 64"),
        ("text_len", "up to 7 text tokens, more than the DiT's text_len 4"),
        ("no_empty", "no empty-prompt states for flow.caption_dropout; set flow.caption_dropout"),
        ("no_text", "have no text states"),
        ("no_vae", "cache.vae is not set"),
    ],
)
def test_shard_source_errors(case, message, curated, vae_dir, tmp_path):
    shards, more = curated[0], {
        "channels": ["model.overrides.in_channels=8", "model.overrides.out_channels=8"],
        "text_dim": ["model.overrides.text_dim=64"],
        "text_len": ["model.overrides.text_len=4"],
        "no_empty": ["flow.caption_dropout=0.1"],
        "no_vae": ["cache.vae=''"],
    }.get(case, [])
    if case == "missing":
        shards = tmp_path / "nowhere"
    elif case == "not_shards":
        shards = tmp_path
    elif case == "no_text":
        shards = _textless(tmp_path / "textless")
    elif case == "no_empty":
        shards = tmp_path / "no_empty"
        shutil.copytree(curated[0], shards)
        (shards / EMPTY).unlink()
    with pytest.raises(CineforgeError, match=message):
        build_task(shard_config(tmp_path / "run", shards, vae_dir, "flow.caption_dropout=0",
                                *more))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.source=shards"], "data.source: shards needs data.shards: DIR"),
        (["data.shards=curated"], "data.shards is set but data.source is 'shapes'"),
        (["data.source=latents"], "data.source must be 'shapes' or 'shards'"),
        (["task=vae", "data.source=shards", "data.shards=x"], "a VAE trains on pixels"),
    ],
)
def test_data_section_is_checked(overrides, message):
    with pytest.raises(CineforgeError, match=message):
        load_config(CONFIGS / "tiny_dit.yaml", overrides)


def test_vae_of_other_latent_channels_is_refused(curated, tmp_path):
    other = dataclasses.replace(get_preset("wan2.1-t2v-tiny").vae, z_dim=4,
                                latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    write_model_config(other, tmp_path / "vae.json")
    with pytest.raises(CineforgeError, match="16-channel latents but the VAE in cache.vae has 4"):
        build_task(shard_config(tmp_path / "run", curated[0], tmp_path, "flow.caption_dropout=0"))


def test_train_cache_refuses_a_shard_source(curated, vae_dir, capsys):
    sets = [a for s in shard_args(curated[0], vae_dir) for a in ("--set", s)]
    assert main(["train", "cache", "--config", str(CONFIGS / "tiny_dit.yaml"), *sets]) == 2
    err = capsys.readouterr().err
    assert "encoded already" in err and err.count("\n") == 1
