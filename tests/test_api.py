"""The Python API: load_pipeline -> pipe(prompt, **fields) -> Video; the CLI gives the same
bytes; preset defaults filled in one place; weights found in a hub cache built here."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

import cineforge
from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families.family import save_components
from cineforge.families.registry import get_preset
from cineforge.io.video import read_image, read_video
from oracles import perturb

PROMPT = "a green triangle moves to the left"


@pytest.fixture(scope="module")
def demo():
    return cineforge.load_pipeline("demo", device="cpu")


def test_demo_video_saves_as_mp4_gif_png_and_webm(demo, tmp_path):
    video = demo(PROMPT, frames=9, steps=3, seed=1)
    assert isinstance(video, cineforge.Video) and video.fps == 8
    frames = video.frames
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == torch.uint8
    assert np.array_equal(video.numpy(), frames.numpy()) and frames.float().std() > 1
    (mp4,) = video.save(tmp_path / "v.mp4")
    decoded, fps = read_video(mp4)
    assert decoded.shape == (9, 64, 64, 3) and fps == 8
    assert np.abs(decoded.astype(int) - frames.numpy().astype(int)).mean() < 3  # H.264, crf 18
    (gif,) = video.save(tmp_path / "v.gif")
    assert read_video(gif)[0].shape == (9, 64, 64, 3)
    (webm,) = video.save(tmp_path / "v.webm", fps=4)
    assert read_video(webm)[1] == 4
    pngs = video.save(tmp_path / "v.png")
    assert [p.name for p in pngs] == [f"v_{i:04d}.png" for i in range(9)]
    assert np.array_equal(read_image(pngs[4]), frames[4].numpy())  # lossless


def test_cli_and_api_give_byte_identical_files(demo, tmp_path):
    api = demo(PROMPT, steps=4, seed=2, guidance=5.0).save(tmp_path / "api.mp4")[0]
    assert main(["generate", PROMPT, "--steps", "4", "--seed", "2", "--guidance", "5",
                 "--out", str(tmp_path / "cli.mp4")]) == 0
    assert (tmp_path / "cli.mp4").read_bytes() == api.read_bytes()
    other = demo(PROMPT, steps=4, seed=3, guidance=5.0).save(tmp_path / "other.mp4")[0]
    assert other.read_bytes() != api.read_bytes()


def test_preset_request_fills_defaults_in_one_place():
    preset = get_preset("demo")
    r = preset.request("x")
    s = preset.sampler
    assert (r.width, r.height, r.frames, r.steps, r.guidance, r.shift, r.solver) == (
        64, 64, 17, s.steps, s.guidance, s.shift, s.solver)
    assert r.frame_noise_share == s.frame_noise_share and r.seed == 0 and r.strength == 1
    r = preset.request("x", steps=7, guidance=None, width=32)
    assert (r.steps, r.guidance, r.width, r.height) == (7, s.guidance, 32, 64)
    with pytest.raises(CineforgeError, match="unknown request field 'step'; valid: .*steps"):
        preset.request("x", step=3)


def test_library_errors_name_fields_and_the_cli_names_flags(demo, capsys):
    with pytest.raises(CineforgeError) as error:
        demo(PROMPT, steps=0)
    assert str(error.value) == "steps must be at least 1, got 0"
    with pytest.raises(CineforgeError, match=r"^frame_noise_share must be in \[0, 1\)"):
        demo(PROMPT, frame_noise_share=1.0)
    with pytest.raises(CineforgeError, match="^frames 10 is not of the form 4k"):
        demo(PROMPT, frames=10)
    assert main(["generate", PROMPT, "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cineforge: error: --steps must be at least 1, got 0")
    assert main(["generate", PROMPT, "--frame-noise", "2"]) == 2
    assert "error: --frame-noise must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(CineforgeError, match="unknown offload mode 'disk'"):
        cineforge.load_pipeline("demo", offload="disk")
    with pytest.raises(CineforgeError, match="unknown dtype 'fp8'"):
        cineforge.load_pipeline("demo", dtype="fp8")


# ----------------------------------------------------------------------------- hub cache


def _cache_snapshot(hub, repo_id: str):
    """An empty snapshot of ``repo_id`` in the Hugging Face cache layout under ``hub``."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    storage = hub / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


def test_weights_resolve_from_the_hub_cache_offline(offline_hub):
    """A preset with a hub repository and no ``weights``: its snapshot in the local cache is
    loaded (no download), and generation runs from it."""
    tiny = get_preset("wan2.1-t2v-tiny")
    preset = dataclasses.replace(tiny, name="tiny-from-hub", hub_repo="example/tiny-wan",
                                 diffusers_repo="example/tiny-wan-diffusers")
    torch.manual_seed(0)
    dit = perturb(preset.family.build("dit", preset.dit), seed=3)
    vae = perturb(preset.family.build("vae", preset.vae), seed=4, scale=0.02)
    save_components(_cache_snapshot(offline_hub, "example/tiny-wan-diffusers"), dit=dit, vae=vae)
    pipe = cineforge.load_pipeline(preset, device="cpu")
    loaded = pipe.runner.dit.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in dit.state_dict().items())
    assert pipe(PROMPT, steps=2).frames.shape == (9, 64, 64, 3)


def test_absent_from_the_offline_hub_cache_is_one_line_naming_the_repo(offline_hub, capsys):
    with pytest.raises(CineforgeError) as error:
        cineforge.load_pipeline("wan2.1-t2v-1.3b", device="cpu")
    message = str(error.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B" in message and "hf download" in message
    assert "weights=DIR" in message and "\n" not in message
    assert main(["generate", PROMPT, "--preset", "wan2.1-t2v-1.3b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--weights=DIR" in err and "Wan-AI/Wan2.1-T2V-1.3B" in err and "\n" not in err


@pytest.mark.parametrize("name", ["demo-tiny", "wan2.1-t2v-tiny"])
def test_tiny_presets_generate_from_their_own_weights(name, tmp_path):
    """A toy preset's DiT and VAE fit each other: random weights saved in the cineforge
    layout load and generate at the preset's defaults."""
    preset = get_preset(name)
    torch.manual_seed(0)
    dit, vae = (preset.family.build(part, getattr(preset, part)) for part in ("dit", "vae"))
    save_components(tmp_path, dit=perturb(dit, seed=1), vae=vae)
    video = cineforge.load_pipeline(name, tmp_path, device="cpu")(PROMPT, steps=1)
    assert video.frames.shape == (preset.frames, preset.height, preset.width, 3)
