"""Recipes: the demo's chain of stages (configs/demo), a tiny recipe run end to end, and the
``init`` section that names an earlier run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cineforge.cli.main import main
from cineforge.data.latents import build_latent_cache
from cineforge.errors import CineforgeError
from cineforge.models.text_encoders import TextStates
from cineforge.train.checkpoint import list_checkpoints
from cineforge.train.config import InitSpec, load_config
from cineforge.train.data import shapes_world
from cineforge.train.export import save_weights
from cineforge.train.loop import Trainer
from cineforge.train.models import build_model, load_vae
from cineforge.train.recipe import load_recipe, run_recipe, stage_configs
from cineforge.train.run import build_task
from cineforge.weights.files import write_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "demo" / "recipe.yaml"

# The shipped chain: stage -> (the weights it starts from, where the recipe stops it).
DEMO_CHAIN = {
    "vae": (None, 2000), "p2": (None, 2000), "p2s3": ("ema", None), "p2s3b": ("ema", None),
    "t": ("ema", 1000), "k": ("raw", None), "w": ("raw", None), "s": ("ema", None),
    "v": ("raw", None), "s2": ("raw", None), "v2": ("raw", None), "o": ("ema", None),
    "l": ("ema", None), "l2": ("ema", None), "l3": ("ema", None), "p3": ("ema", None),
    "p4": ("ema", None), "flash": (None, None), "i2v": (None, None),
}


def test_demo_recipe_stages_load_and_each_starts_from_the_one_before():
    stages = stage_configs(load_recipe(DEMO))  # loads every stage and checks the links
    assert [s.name for s, _ in stages] == list(DEMO_CHAIN)
    assert {p.stem for p in DEMO.parent.glob("*.yaml")} == {*DEMO_CHAIN, "recipe"}
    (_, vae), (_, p2) = stages[:2]
    assert vae.task == "vae" and p2.task == "dit" and not vae.init and not p2.init
    (_, p4), (_, flash), (_, i2v) = stages[-3:]
    assert flash.task == "distill" and not flash.init
    assert flash.distill.teacher == f"{p4.out}/export" and flash.cache == p4.cache
    assert i2v.task == "dit" and i2v.flow.first_frame > 0 and i2v.cache == p4.cache
    assert i2v.init == InitSpec(file=f"{p4.out}/export/dit.safetensors")
    for (before, previous), (stage, config) in zip(stages[1:-3], stages[2:-2], strict=True):
        weights, _ = DEMO_CHAIN[stage.name]
        assert config.init == InitSpec(run=previous.out, step=before.until or previous.steps,
                                       weights=weights), stage.name
    for stage, config in stages:
        assert stage.until == DEMO_CHAIN[stage.name][1], stage.name
        assert config.out == f"runs/demo/{stage.name}"
        assert config.task == "vae" or config.cache.vae == f"{vae.out}/export"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A two-stage recipe over configs/tiny_dit.yaml: stage a stops at step 2 of 4, stage b
    starts from a's raw weights there. The latents come from a random VAE of
    configs/tiny_vae.yaml's model and random caption states (no text model)."""
    folder = tmp_path_factory.mktemp("tiny")
    vae = build_model(load_config(CONFIGS / "tiny_vae.yaml").model, "vae")
    save_weights(vae, folder / "vae.safetensors")
    write_model_config(vae.config, folder / "vae.json")
    dit = load_config(CONFIGS / "tiny_dit.yaml")

    def encode_text(prompts: list[str]) -> TextStates:
        return TextStates(torch.randn(len(prompts), 32, 384),
                          torch.ones(len(prompts), 32, dtype=torch.bool))

    build_latent_cache(folder / "latents", shapes_world(dit.data, "cache"), dit.cache.items,
                       encode_video=load_vae(dit.model, folder).encode, encode_text=encode_text,
                       meta={"latent_channels": 16, "text_dim": 384, "text_len": 32},
                       shard_size=dit.cache.shard_size)
    (folder / "a.yaml").write_text(
        f"base: {CONFIGS / 'tiny_dit.yaml'}\nout: runs/tiny/a\n"
        f"cache: {{vae: {folder}, dir: {folder / 'latents'}, build: false}}\n")
    (folder / "b.yaml").write_text(
        "base: a.yaml\nout: runs/tiny/b\ninit: {run: runs/tiny/a, step: 2, weights: raw}\n")
    (folder / "b4.yaml").write_text(
        "base: b.yaml\ninit: {run: runs/tiny/a, step: 4, weights: raw}\n")
    (folder / "recipe.yaml").write_text(
        "root: runs/tiny\nstages:\n  - {config: a.yaml, until: 2}\n  - {config: b.yaml}\n")
    return folder


def test_tiny_recipe_runs_end_to_end_each_stage_from_the_asked_weights(
        tiny, tmp_path, monkeypatch, capsys):
    started = []  # (run folder, its weights right after init)
    initialise = Trainer.initialise

    def spy(self, init):
        initialise(self, init)
        started.append((self.run_dir, {k: v.clone() for k, v in self.model.state_dict().items()}))

    monkeypatch.setattr(Trainer, "initialise", spy)
    out = tmp_path / "out"
    assert main(["train", "recipe", str(tiny / "recipe.yaml"), "--out-root", str(out),
                 "--until", "a", "--no-progress"]) == 0
    assert capsys.readouterr().out.split() == ["a:", str(out / "a" / "export")]
    assert not (out / "b").exists()
    assert [step for step, _ in list_checkpoints(out / "a" / "checkpoints")] == [2]  # until

    done = list(run_recipe(tiny / "recipe.yaml", out_root=out, progress=False))
    assert done == [("a", out / "a" / "export"), ("b", out / "b" / "export")]
    assert (out / "b" / "export" / "dit.safetensors").is_file()
    assert [step for step, _ in list_checkpoints(out / "b" / "checkpoints")] == [2, 4]
    a2 = torch.load(out / "a" / "checkpoints" / "step-00000002.pt", weights_only=True)
    assert [run for run, _ in started] == [out / "b"]
    weights = started[0][1]
    for name, x in a2["model"].items():
        assert torch.equal(weights[name], x), name
    assert any(not torch.equal(a2["ema"]["model"][k], x) for k, x in a2["model"].items())

    saved = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert list(run_recipe(tiny / "recipe.yaml", out_root=out, progress=False)) == done
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == saved  # nothing trained
    assert len(started) == 1


def test_init_reads_a_runs_checkpoint_and_names_what_is_wrong(tiny, tmp_path):
    (stage, a), (_, b) = stage_configs(load_recipe(tiny / "recipe.yaml"), tmp_path)
    run_dir = Path(a.out)
    a_trainer = Trainer(a, build_task(a), run_dir)
    for _ in a_trainer.steps():  # to its end: checkpoints at steps 2 and 4
        pass
    trainer = Trainer(b, build_task(b), b.out)
    trainer.initialise(InitSpec(run=str(run_dir)))  # the newest checkpoint's EMA weights
    for name, x in a_trainer.ema.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], x), name

    with pytest.raises(CineforgeError, match=r"init.run \S+nowhere is not a folder"):
        trainer.initialise(InitSpec(run=str(tmp_path / "nowhere")))
    with pytest.raises(CineforgeError, match=r"no checkpoint at step 3 \(it has steps 2, 4\)"):
        trainer.initialise(InitSpec(run=str(run_dir), step=3))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CineforgeError, match="has no checkpoints; train that run first"):
        trainer.initialise(InitSpec(run=str(tmp_path / "empty")))
    with pytest.raises(CineforgeError, match="init.weights must be 'ema' or 'raw', got 'best'"):
        load_config(tiny / "b.yaml", ["init.weights=best"])
    with pytest.raises(CineforgeError, match="init names both a run and a file"):
        load_config(tiny / "b.yaml", ["init.file=w.safetensors"])
    assert load_config(tiny / "a.yaml", ["init=w.safetensors"]).init == InitSpec(
        file="w.safetensors")  # a plain path is a file


@pytest.mark.parametrize(("stages", "message"), [
    ("[{config: b.yaml}, {config: a.yaml, until: 2}]",
     r"stage b: init.run runs/tiny/a is no earlier stage's run folder \(none\)"),
    ("[{config: a.yaml, until: 1}, {config: b.yaml}]", "until 1 is not a checkpoint step"),
    ("[{config: a.yaml, until: 2}, {config: b4.yaml}]",
     "stage b4: init.step 4 is past step 2, where the recipe stops runs/tiny/a"),
    ("[{config: a.yaml}, {config: b.yaml}, {config: a.yaml}]", "stage 'a' appears twice"),
    ("[{config: a.yaml, until: 2}, {config: b.yaml, step: 3}]", "stage 2 must be {config"),
])
def test_recipe_mistakes_are_refused_before_training(tiny, stages, message):
    path = tiny / "bad.yaml"
    path.write_text(f"root: runs/tiny\nstages: {stages}\n")
    with pytest.raises(CineforgeError, match=message):
        stage_configs(load_recipe(path))


def test_recipe_until_names_a_stage(tiny, tmp_path, capsys):
    with pytest.raises(CineforgeError, match="until 'c' is no stage of .*; its stages: a, b"):
        next(run_recipe(tiny / "recipe.yaml", out_root=tmp_path, until="c"))
    assert main(["train", "recipe", str(tiny / "recipe.yaml"), "--until", "c"]) == 2
    assert "--until 'c' is no stage of" in capsys.readouterr().err


def test_stages_start_from_earlier_exports_only(tmp_path):
    """A distillation's teacher and an ``init.file`` under the root must lie in an earlier
    stage's export (both move with ``--out-root``)."""
    moved = stage_configs(load_recipe(DEMO), out_root=tmp_path / "elsewhere")
    by_name = {stage.name: config for stage, config in moved}
    assert by_name["flash"].distill.teacher == str(tmp_path / "elsewhere" / "p4" / "export")
    assert by_name["i2v"].init.file == str(tmp_path / "elsewhere" / "p4" / "export"
                                           / "dit.safetensors")
    (tmp_path / "d.yaml").write_text("task: distill\nout: runs/x/d\n"
                                     "distill: {teacher: runs/x/p/export}\n")
    (tmp_path / "f.yaml").write_text(f"base: {CONFIGS / 'tiny_dit.yaml'}\nout: runs/x/f\n"
                                     "init: runs/x/p/export/dit.safetensors\n")
    for stage, what in (("d", "distill.teacher"), ("f", "init.file")):
        (tmp_path / "r.yaml").write_text(f"root: runs/x\nstages:\n  - {{config: {stage}.yaml}}\n")
        with pytest.raises(CineforgeError, match=f"stage {stage}: {what} runs/x/p/export.* is "
                                                 "in no earlier stage's export"):
            stage_configs(load_recipe(tmp_path / "r.yaml"))
