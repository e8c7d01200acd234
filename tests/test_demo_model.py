"""The shipped demo model: its files, its preset, and README's main command, offline."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

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


def test_demo_files_are_fp16_under_40_mb_and_match_the_preset():
    files = {p.name: p for p in DEMO.iterdir()}
    assert {"dit.safetensors", "vae.safetensors", "dit.json", "vae.json"} <= set(files)
    assert sum(p.stat().st_size for p in files.values()) <= 40 * 2**20
    for name in ("dit.safetensors", "vae.safetensors"):
        with safe_open(files[name], "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert dtypes == {"F16"}, (name, dtypes)
    preset = get_preset("demo")
    assert read_model_config(DemoDiTConfig, files["dit.json"]) == preset.dit
    assert read_model_config(CompactVAEConfig, files["vae.json"]) == preset.vae
    assert preset.embedded == "demo" and preset.text.name == "minilm"


def test_last_demo_training_stage_builds_the_shipped_dit():
    """The last stage of the demo's recipe trained the shipped DiT."""
    from cineforge.train.recipe import load_recipe

    last = load_recipe(ROOT / "configs" / "demo" / "recipe.yaml").stages[-1]
    config, preset = load_config(last.config), get_preset("demo")
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
