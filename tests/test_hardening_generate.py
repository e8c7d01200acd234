"""Generation and its output file against careless or hostile input: nothing the user has is
destroyed, every check runs before the work (no weights are loaded for a request that is
refused), and every refusal is one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cineforge.api
import cineforge.cli.generate
import cineforge.io.video as video_io
from cineforge.api import Pipeline, Video, check_memory, resolve_device
from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families.family import Components, load_model, save_components
from cineforge.families.registry import get_preset
from cineforge.io.video import check_output_path, read_image, read_video, write_video
from cineforge.pipelines.common import VideoRequest, check_vae_tile
from cineforge.weights.files import read_model_config

TINY = "wan2.1-t2v-tiny"
GB = 10**9


def _frames(t: int, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if ``cineforge generate`` gets as far as loading weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded for a request that should have been refused")

    monkeypatch.setattr(cineforge.cli.generate, "load_pipeline", refuse)


def _generate(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["generate", "a red circle moves to the right", "--preset", TINY, *args])
    return code, capsys.readouterr().err.strip()


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("cineforge: error: ") and "\n" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# ----------------------------------------------------------------------------- 1. atomic


def _encode_then_fail(error: BaseException, seen: dict):
    """An ``_encode`` that muxes half of the packets, then fails as a full disk (or an
    interrupt) would, noting what the folder held at that moment."""

    def encode(container, stream, images):
        packets = [p for image in images for p in stream.encode(image)] + list(stream.encode())
        for i, packet in enumerate(packets):
            if i == len(packets) // 2:
                folder = Path(container.name).parent
                seen["files"] = {p.name: p.stat().st_size for p in folder.iterdir()}
                raise error
            container.mux(packet)

    return encode


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_a_full_disk_mid_file_leaves_the_old_video_intact(tmp_path, monkeypatch, suffix):
    out = tmp_path / f"clip{suffix}"
    write_video(out, _frames(5, seed=1), fps=8)
    old = out.read_bytes()
    seen: dict = {}
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(video_io, "_encode", _encode_then_fail(full, seen))
    with pytest.raises(CineforgeError) as error:
        write_video(out, _frames(9, seed=2), fps=8)
    message = str(error.value)
    assert "No space left on device" in message and "unchanged" in message
    assert "\n" not in message
    partial = [name for name in seen["files"] if name != out.name]
    assert len(partial) == 1  # it failed while writing the temporary file
    assert seen["files"][partial[0]] > 0 or suffix != ".mp4"  # (others still in the buffer)
    assert out.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    assert read_video(out)[0].shape[0] == 5


def test_an_interrupt_mid_encoding_leaves_the_old_video_intact(tmp_path, monkeypatch):
    out = tmp_path / "clip.mp4"
    write_video(out, _frames(17, seed=1), fps=8)
    old = out.read_bytes()
    monkeypatch.setattr(video_io, "_encode", _encode_then_fail(KeyboardInterrupt(), {}))
    with pytest.raises(KeyboardInterrupt):
        write_video(out, _frames(9, seed=2), fps=8)
    assert out.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_real_write_failure_in_ffmpeg_leaves_the_old_video_intact(tmp_path):
    """No mock: the kernel refuses FFmpeg's writes past 40 kB (RLIMIT_FSIZE, EFBIG)."""
    import resource

    out = tmp_path / "clip.mp4"
    write_video(out, _frames(2, seed=1), fps=8)
    old = out.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, limits[1]))
        with pytest.raises(CineforgeError, match="File too large.*unchanged"):
            write_video(out, _frames(17, 128, 128, seed=2), fps=8)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert out.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_failed_png_sequence_leaves_the_old_frames_intact(tmp_path, monkeypatch):
    old_paths = write_video(tmp_path / "seq.png", _frames(4, 16, 16, seed=1))
    old = [p.read_bytes() for p in old_paths]
    save = video_io._save_image
    calls = []

    def save_then_fail(path, image, target=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(path, image, target)

    monkeypatch.setattr(video_io, "_save_image", save_then_fail)
    with pytest.raises(CineforgeError, match="No space left on device"):
        write_video(tmp_path / "seq.png", _frames(6, 16, 16, seed=2))
    assert [p.read_bytes() for p in old_paths] == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in old_paths]


# ----------------------------------------------------------------------------- 2. stale frames


def test_a_shorter_png_sequence_removes_the_stale_frames_of_a_longer_one(tmp_path):
    write_video(tmp_path / "seq.png", _frames(6, 8, 8, seed=1))
    others = ["seq_12.png", "seq_notes.png", "other_0004.png", "seq_0004.jpg"]
    for name in others:  # not frames of this sequence: kept
        (tmp_path / name).write_bytes(b"x")
    new = _frames(3, 8, 8, seed=2)
    paths = write_video(tmp_path / "seq.png", new)
    frames = sorted(p.name for p in tmp_path.iterdir() if p.name not in others)
    assert frames == [p.name for p in paths] == ["seq_0000.png", "seq_0001.png", "seq_0002.png"]
    assert np.array_equal(np.stack([read_image(p) for p in paths]), new)
    (single,) = write_video(tmp_path / "seq.png", new[:1])  # one frame: the named file only
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in others) == ["seq.png"]
    assert np.array_equal(read_image(single), new[0])


# ----------------------------------------------------------------------------- 3. non-finite


@pytest.mark.parametrize("field", ["guidance", "shift", "frame_noise_share", "strength"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_request_fields_are_refused(field, value):
    preset = get_preset(TINY)
    with pytest.raises(CineforgeError, match=f"^{field} must be a finite number"):
        preset.family.check_request(preset, preset.request("a cat", **{field: value}))


def test_guidance_nan_is_refused_before_loading(capsys, no_loading, tmp_path):
    out = tmp_path / "x.mp4"
    code, err = _generate(capsys, "--guidance", "nan", "--out", str(out))
    _one_line_error(code, err, "--guidance must be a finite number, got nan")
    assert not out.exists()


def _tiny_runner():
    preset = get_preset(TINY)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dit, vae = preset.family.build("dit", preset.dit), preset.family.build("vae", preset.vae)
    return preset, preset.family.make_pipeline(Components(dit.eval(), vae.eval(), None))


def test_non_finite_latents_stop_sampling_with_one_line():
    preset, runner = _tiny_runner()
    context = torch.zeros(1, preset.dit.text_len, preset.dit.text_dim)
    runner.conditions = lambda prompts, r: ({"context": context}, {"context": context})
    calls = []

    def diverge(module, args, output):  # the DiT overflows from its second call on
        calls.append(1)
        return output * float("nan") if len(calls) >= 2 else output

    runner.dit.register_forward_hook(diverge)
    r = preset.request("a cat", width=32, height=32, frames=5, steps=4)
    with pytest.raises(CineforgeError) as error:
        runner(r)
    assert str(error.value).startswith("sampling produced non-finite values at step 2 of 4;")
    assert "guidance" in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------- 4. memory


@pytest.fixture
def eight_gb(monkeypatch):
    """A device with 8 GB available, whatever this machine has."""
    monkeypatch.setattr(cineforge.api, "available_memory", lambda device: 8 * GB, raising=False)


@pytest.mark.parametrize("args", [["--size", "100000x100000"], ["--frames", "100001"]])
def test_a_request_too_big_for_the_device_is_refused_before_loading(
    capsys, no_loading, eight_gb, tmp_path, args
):
    code, err = _generate(capsys, *args, "--out", str(tmp_path / "x.mp4"))
    _one_line_error(code, err, "needs about", "on cpu (weights", "8.0 GB is available",
                    "smaller --size or fewer --frames")


def test_the_api_refuses_a_request_too_big_for_the_device(eight_gb):
    preset, runner = _tiny_runner()
    pipe = Pipeline(preset, runner)
    with pytest.raises(CineforgeError, match=r"^64x64 with 100001 frames needs about .* GB on "
                                             r"cpu .*, but 8.0 GB is available; use a smaller"):
        pipe("a cat", frames=100001)
    r = preset.request("a cat")  # the preset's own request fits
    assert check_memory(preset, r, device=torch.device("cpu"), dtype=torch.float32).total < GB
    big = get_preset("wan2.1-t2v-14b")  # weights alone: refused before looking for them
    with pytest.raises(CineforgeError, match=r"^the wan2.1-t2v-14b weights need about 57.\d GB "
                                             r"on cpu \(weights 57.\d GB\), but 8.0 GB"):
        cineforge.load_pipeline(big, weights=Path("absent"), device="cpu")
    with pytest.raises(CineforgeError, match="use a smaller size or fewer frames, or offload "
                                             "block, or dtype bf16$"):
        check_memory(big, big.request("a cat"), device=torch.device("cuda"), dtype=torch.float32)


def test_memory_estimate_scales_with_the_request_and_fits_known_setups():
    wan = get_preset("wan2.1-t2v-1.3b")
    r = wan.request("a cat")

    def estimate(preset, r, **kw):
        kw = {"dtype": torch.bfloat16, "device_type": "cuda"} | kw
        return preset.family.memory_estimate(preset, r, **kw)

    base = estimate(wan, r)
    longer = estimate(wan, VideoRequest(**{**r.__dict__, "frames": 4 * 80 + 1}))
    assert 3.5 < longer.denoise / base.denoise < 4.5 and longer.weights == base.weights
    no_cfg = estimate(wan, VideoRequest(**{**r.__dict__, "guidance": 1.0}))
    assert no_cfg.denoise * 2 == base.denoise  # guidance runs cond and uncond in one batch
    assert 2.5 * GB < base.weights < 3.5 * GB  # 1.42B bf16 parameters and a 127M fp32 VAE
    model, block = estimate(wan, r, offload="model"), estimate(wan, r, offload="block")
    assert block.weights < model.weights < base.weights
    tiled = estimate(wan, r, vae_tile=256)
    assert tiled.decode < base.decode
    # setups known to run must pass: 1.3B at 480p on a 24 GB card (model offload), 14B at
    # 720p with block offload on an 80 GB card
    assert model.total < 24 * GB
    big = get_preset("wan2.1-t2v-14b")
    assert estimate(big, big.request("a cat"), offload="block").total < 80 * GB


# ----------------------------------------------------------------------------- 5. early checks


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("x.avi", "unknown extension '.avi'; use one of .mp4, .webm, .gif, .png"),
        ("x.txt", "unknown extension '.txt'"),
        ("noext", "no extension"),
        (".", "is a folder; name a file in it"),
        ("afile/x.mp4", "afile is a file, not a folder"),
    ],
)
def test_an_unusable_out_is_refused_before_loading(capsys, no_loading, tmp_path, out, message):
    (tmp_path / "afile").write_text("")
    code, err = _generate(capsys, "--out", str(tmp_path / out))
    _one_line_error(code, err, message)


def test_a_read_only_out_folder_is_refused_before_loading(capsys, no_loading, tmp_path,
                                                          monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anyway: let the folder say it is read-only
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != folder and access(p, mode))
    try:
        code, err = _generate(capsys, "--out", str(folder / "new" / "x.mp4"))
        _one_line_error(code, err, f"the folder {folder} is not writable")
        with pytest.raises(CineforgeError, match="not writable"):
            Video(torch.zeros(3, 1, 16, 16), fps=8).save(folder / "x.png")
    finally:
        folder.chmod(0o755)
    assert check_output_path(tmp_path / "new" / "deeper" / "x.MP4").name == "x.MP4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "-5"], "--fps must be a number of frames per second > 0, got -5"),
        (["--fps", "0"], "--fps must be a number of frames per second > 0, got 0"),
        (["--vae-tile", "0"], "--vae-tile 0 is not a usable tile size"),
        (["--vae-tile", "-8"], "--vae-tile -8 is not a usable tile size"),
        (["--vae-tile", "3"], "use a multiple of the VAE's 8 pixels, at least 16, e.g. 16"),
        (["--vae-tile", "100"], "e.g. 96"),
    ],
)
def test_bad_fps_and_vae_tile_are_refused_before_loading(capsys, no_loading, tmp_path, args,
                                                         message):
    code, err = _generate(capsys, *args, "--out", str(tmp_path / "x.mp4"))
    _one_line_error(code, err, message)


def test_fps_zero_is_not_replaced_and_tiles_are_checked_by_the_library(tmp_path):
    video = Video(torch.zeros(3, 1, 16, 16), fps=8)
    with pytest.raises(CineforgeError, match="^fps must be a number of frames per second > 0"):
        video.save(tmp_path / "x.mp4", fps=0)
    assert not (tmp_path / "x.mp4").exists()
    assert read_video(video.save(tmp_path / "x.mp4", fps=4)[0])[1] == 4
    for tile in (0, -8, 3, 12, 2.5):
        with pytest.raises(CineforgeError, match="^vae_tile"):
            check_vae_tile(tile, 8)
    check_vae_tile(16, 8)
    check_vae_tile(None, 8)
    preset, runner = _tiny_runner()
    with pytest.raises(CineforgeError, match="^vae_tile 3 is not a usable tile size"):
        Pipeline(preset, runner)("a cat", vae_tile=3)


# ----------------------------------------------------------------------------- 6. one line


def test_a_seed_beyond_64_bits_is_refused(capsys, no_loading, tmp_path):
    preset = get_preset(TINY)
    with pytest.raises(CineforgeError, match="^seed 1180591620717411303424 does not fit"):
        preset.family.check_request(preset, preset.request("a cat", seed=2**70))
    preset.family.check_request(preset, preset.request("a cat", seed=2**64 - 1))
    code, err = _generate(capsys, "--seed", str(2**70), "--out", str(tmp_path / "x.mp4"))
    _one_line_error(code, err, "--seed 1180591620717411303424 does not fit in 64 bits")


@pytest.mark.parametrize("text", ['{"dim": 32,', "[1, 2]", "\xff\xfe garbage"])
def test_a_malformed_model_config_is_one_line(tmp_path, text):
    preset = get_preset(TINY)
    folder = tmp_path / "run"
    with torch.device("meta"):
        dit, vae = preset.family.build("dit", preset.dit), preset.family.build("vae", preset.vae)
    save_components(folder, dit=dit.to_empty(device="cpu"), vae=vae.to_empty(device="cpu"))
    (folder / "dit.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CineforgeError, match="dit.json .*export the run again"):
        read_model_config(type(preset.dit), folder / "dit.json")
    with pytest.raises(CineforgeError, match="dit.json"):
        load_model(preset, folder, "dit")
    (folder / "dit.json").write_text(json.dumps({"dim": "wide"}))
    with pytest.raises(CineforgeError, match="is not a valid WanDiTConfig"):
        load_model(preset, folder, "dit")


def test_devices_other_than_cpu_and_cuda_are_refused(capsys, no_loading, tmp_path):
    for name in ("meta", "xyz", "cpu:0:1"):
        with pytest.raises(CineforgeError, match="^unknown device"):
            resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
    code, err = _generate(capsys, "--device", "meta", "--out", str(tmp_path / "x.mp4"))
    _one_line_error(code, err, "unknown --device 'meta'; use auto, cpu, cuda or cuda:N")


def test_a_closed_stdout_pipe_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "cineforge.cli.main", "presets"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_a_text_file_is_not_a_video(tmp_path, capsys, no_loading):
    """FFmpeg's text demuxer reads any .txt as 'video' (ANSI art): refused in one line."""
    text = tmp_path / "readme.txt"
    text.write_text("this is a readme, not a video\n" * 20)
    with pytest.raises(CineforgeError, match="is a text file, not a video"):
        read_video(text)
    assert main(["generate", "a cat", "--video", str(text), "--out",
                 str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "is a text file, not a video" in err and err.count("\n") == 1


def test_the_demo_position_table_limit_is_checked_before_loading(capsys, no_loading, tmp_path):
    preset = get_preset("demo")
    preset.family.check_request(preset, preset.request("a cat"))  # 17 frames at 64x64 fit
    with pytest.raises(CineforgeError,
                       match="at most 17 frames at 64x64; asked for frames 21 at size 64x64"):
        preset.family.check_request(preset, preset.request("a cat", frames=21))
    assert main(["generate", "a cat", "--size", "128x64", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "covers at most 17 frames at 64x64; asked for --frames 17 at --size 128x64" in err
