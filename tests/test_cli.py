"""``cineforge generate`` / ``presets`` end to end on the tiny preset (random weights)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cineforge.cli.main import main
from cineforge.families.family import save_components
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WanDiT
from cineforge.families.wan.vae import WanVAE
from cineforge.io.video import read_video
from oracles import perturb

TINY = "wan2.1-t2v-tiny"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    preset = get_preset(TINY)
    torch.manual_seed(0)
    dit = perturb(WanDiT(preset.dit), seed=3)
    vae = perturb(WanVAE(preset.vae), seed=4, scale=0.02)
    return save_components(tmp_path_factory.mktemp("tiny"), dit=dit, vae=vae)


def _generate(weights, out, *extra):
    return main(["generate", "a red circle moves to the right", "--preset", TINY,
                 "--weights", str(weights), "--out", str(out), "--steps", "2", *extra])


def test_generate_writes_decodable_mp4_and_seed_reproduces(weights, tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    assert _generate(weights, a, "--size", "96x64", "--frames", "9", "--seed", "5") == 0
    assert _generate(weights, b, "--size", "96x64", "--frames", "9", "--seed", "5") == 0
    assert _generate(weights, c, "--size", "96x64", "--frames", "9", "--seed", "6") == 0
    frames_a, fps = read_video(a)
    frames_b, _ = read_video(b)
    frames_c, _ = read_video(c)
    assert frames_a.shape == (9, 64, 96, 3) and fps == 16
    assert np.array_equal(frames_a, frames_b)
    assert np.abs(frames_a.astype(int) - frames_c.astype(int)).mean() > 0.5
    assert frames_a.std() > 1.0  # a real picture, not a constant frame
    d = tmp_path / "d.mp4"  # same seed, noise partly shared by the frames: another video
    assert _generate(weights, d, "--size", "96x64", "--frames", "9", "--seed", "5",
                     "--frame-noise", "0.5") == 0
    assert np.abs(read_video(d)[0].astype(int) - frames_a.astype(int)).mean() > 0.5


def test_generate_image_and_gif(weights, tmp_path):
    assert _generate(weights, tmp_path / "img.png", "--frames", "1") == 0
    assert (tmp_path / "img.png").is_file()
    assert _generate(weights, tmp_path / "v.gif", "--frames", "5") == 0
    assert read_video(tmp_path / "v.gif")[0].shape[0] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a cat", "--size", "100x64"], "multiple of 16"),
        (["a cat", "--frames", "10"], "4k+1"),
        (["a cat", "--preset", "nope"], "unknown preset"),
        (["   "], "prompt is empty"),
        (["a cat", "--frame-noise", "1.0"], "--frame-noise must be in [0, 1)"),
        (["a cat", "--strength", "0.5"], "--strength needs --video"),
        (["a cat", "--video", "missing.mp4"], "video file not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(weights, tmp_path, capsys, args, message):
    code = main(["generate", *args, "--weights", str(weights), "--out", str(tmp_path / "x.mp4")]
                + ([] if "--preset" in args else ["--preset", TINY]))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_missing_weights_name_path_and_hub(tmp_path, capsys):
    code = main(["generate", "a cat", "--preset", "wan2.1-t2v-1.3b",
                 "--weights", str(tmp_path / "absent")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(tmp_path / "absent") in err and "Wan-AI/Wan2.1-T2V-1.3B" in err
    code = main(["generate", "a cat", "--preset", "wan2.1-t2v-1.3b", "--weights", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Wan2.1_VAE.pth" in err and "\n" not in err


def test_console_script_presets_and_help():
    out = subprocess.run([sys.executable, "-m", "cineforge.cli.main", "presets"],
                         capture_output=True, text=True, check=True).stdout
    assert "wan2.1-t2v-14b" in out and "1280x720" in out and "Wan-AI/Wan2.1-T2V-14B" in out
    help_ = subprocess.run([sys.executable, "-m", "cineforge.cli.main", "generate", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "--offload" in help_ and "--negative" in help_



def test_generate_video_to_video_keeps_the_init_video_at_low_strength(tmp_path, capsys):
    """The demo model from a rendered clip, noised for the last 4 of 20 steps: the output
    still shows the clip's object and motion, changed only a little; bad sizes are refused."""
    from cineforge.data.shapes import render, sample_spec
    from cineforge.eval.shapes import analyze_clip
    from cineforge.io.video import write_video

    spec = sample_spec(np.random.default_rng(3), combo=("blue", "square", "left"),
                       layout="centred")
    clip = render(spec)
    src, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(src, clip, fps=8)
    source = read_video(src)[0]
    assert main(["generate", spec.caption, "--video", str(src), "--strength", "0.2",
                 "--out", str(out)]) == 0
    frames = read_video(out)[0]
    assert frames.shape == source.shape == (17, 64, 64, 3)
    seen = analyze_clip(frames)
    assert (seen.colour, seen.motion) == ("blue", "left")
    change = np.abs(frames.astype(int) - source.astype(int)).mean()
    assert 0.2 < change < 20, change  # denoised, not copied, not replaced

    capsys.readouterr()
    code = main(["generate", "a cat", "--video", str(src), "--size", "48x48",
                 "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--video" in err and "64x64, the output 48x48" in err
    assert "\n" not in err
    short = tmp_path / "short.mp4"  # 11 frames: the longest usable prefix has 4k+1 = 9
    write_video(short, clip[:11], fps=8)
    code = main(["generate", "a cat", "--video", str(short), "--frames", "13",
                 "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has 11 frames, fewer than --frames 13; pass --frames 9" in err
    # a preset without video-to-video says so before it looks for (absent) weights
    code = main(["generate", "a cat", "--preset", "kandinsky5-t2v-lite", "--video", str(src),
                 "--weights", str(tmp_path / "absent"), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no video-to-video; drop --video" in err and "\n" not in err
