"""The shipped demo model: its files, its preset, and README's main command, offline."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cineforge.eval.shapes import analyze_clip
from cineforge.families.demo.dit import DemoDiTConfig
from cineforge.families.demo.vae import CompactVAEConfig
from cineforge.families.family import ASSETS
from cineforge.families.registry import get_preset
from cineforge.io.video import read_video
from cineforge.train.config import load_config
from cineforge.train.models import model_config
from cineforge.weights.files import read_model_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ASSETS / "demo"


def readme_main_command() -> list[str]:
    """The `cineforge generate` part of README's first set-up command."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("    pip install") and "cineforge generate" in line:
            return shlex.split(line.split("&&", 1)[1])
    raise AssertionError("README.md has no `pip install ... && cineforge generate` line")


@pytest.mark.parametrize("name", ["demo", "demo-i2v"])
def test_demo_files_are_fp16_under_40_mb_and_match_the_preset(name):
    files = {p.name: p for p in (ASSETS / name).iterdir()}
    assert {"dit.safetensors", "vae.safetensors", "dit.json", "vae.json"} <= set(files)
    assert sum(p.stat().st_size for p in files.values()) <= 40 * 2**20
    for file in ("dit.safetensors", "vae.safetensors"):
        with safe_open(files[file], "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert dtypes == {"F16"}, (file, dtypes)
    preset = get_preset(name)
    assert read_model_config(DemoDiTConfig, files["dit.json"]) == preset.dit
    assert read_model_config(CompactVAEConfig, files["vae.json"]) == preset.vae
    assert preset.embedded == name and preset.text.name == "minilm"
    if name != "demo":  # trained from the demo: the same VAE, byte for byte
        assert files["vae.safetensors"].read_bytes() == (DEMO / "vae.safetensors").read_bytes()


def test_demo_training_stage_p4_builds_the_shipped_dit():
    """Stage p4 of the demo's recipe trained the shipped DiT."""
    from cineforge.train.recipe import load_recipe

    stages = load_recipe(ROOT / "configs" / "demo" / "recipe.yaml").stages
    p4 = next(stage for stage in stages if stage.name == "p4")
    config, preset = load_config(p4.config), get_preset("demo")
    assert model_config(config.model, "dit") == (preset.family, preset.dit)
    assert config.flow.frame_noise_share == preset.sampler.frame_noise_share


def test_readme_main_command_makes_the_prompted_video_offline(tmp_path):
    args = readme_main_command()
    assert args[:2] == ["cineforge", "generate"] and "--preset" not in args  # the default
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "cineforge.cli.main", *args[1:]], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / args[args.index("--out") + 1]
    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 64, 3) and fps == 8
    found = analyze_clip(frames)  # "a red circle moves to the right"
    # The shipped model follows colour and motion (`cineforge eval shapes -n 200`: 100 % and
    # 82 % held-in) and shape less reliably (78 %, chance 25 %): docs/demo-training.md. This
    # prompt at seed 0 comes out a squarish blob, so shape is not checked here.
    assert found.found and found.colour == "red" and found.motion == "right", found


def test_demo_generation_reproduces_per_seed():
    from cineforge.families.family import load_components
    from cineforge.pipelines.common import VideoRequest

    preset = get_preset("demo")
    pipe = preset.family.make_pipeline(load_components(preset, None))
    s = preset.sampler
    request = VideoRequest(prompt="a blue square moves up", width=64, height=64, frames=17,
                           steps=4, guidance=s.guidance, shift=s.shift, seed=3)
    a, b = pipe(request), pipe(request)
    assert torch.equal(a, b)
    c = pipe(dataclasses.replace(request, seed=4))
    assert (a - c).abs().mean() > 1e-3


def test_demo_i2v_keeps_the_given_first_frame_and_moves_it_as_asked():
    """demo-i2v, embedded weights, the preset's sampler: given a shapes-world clip's first
    frame and its caption, frame 0 of the output matches the image (PSNR >= 30 dB: the VAE's
    reconstruction) and the analyzer reads the caption's colour, shape and motion."""
    from cineforge.api import load_pipeline
    from cineforge.cli.eval import first_frame_psnr
    from cineforge.data.shapes import heldin_prompts, render

    spec = next(s for s in heldin_prompts(12, layout="centred")
                if (s.main.shape, s.main.motion) == ("circle", "left"))  # a purple one
    pipe = load_pipeline("demo-i2v", device="cpu")
    video = pipe(spec.caption, image=torch.from_numpy(render(spec)[0]), seed=0)
    frames = video.numpy()
    assert first_frame_psnr(frames, spec) >= 30
    got = analyze_clip(frames)
    assert (got.colour, got.shape, got.motion) == (spec.main.colour, spec.main.shape, "left")
