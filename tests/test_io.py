"""cineforge.io: video/image round trips through PyAV and Pillow, and the errors users see."""

import numpy as np
import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.io import (
    from_uint8_frames,
    read_image,
    read_video,
    to_uint8_frames,
    write_image,
    write_video,
)


def _smooth_frames(t: int = 16, h: int = 64, w: int = 64) -> np.ndarray:
    """A smooth moving colour gradient, uint8 T, H, W, 3."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    red = 128 + 40 * np.sin(xx / w * np.pi + tt * 0.2)
    green = 128 + 40 * np.cos(yy / h * np.pi)
    blue = 80 + (xx + yy) / 2 + tt
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def test_uint8_conversion_round_trip():
    video = torch.rand(3, 2, 4, 5) * 2 - 1
    frames = to_uint8_frames(video[None])
    assert frames.shape == (2, 4, 5, 3) and frames.dtype == np.uint8
    back = from_uint8_frames(frames)
    assert back.shape == video.shape
    assert (back - video).abs().max() <= 1 / 255 + 1e-6  # half a level of 2/255
    assert np.array_equal(to_uint8_frames(back), frames)
    edges = to_uint8_frames(torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 5))
    assert edges.ravel().tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(CineforgeError, match="video\\[i\\]"):
        to_uint8_frames(torch.zeros(2, 3, 1, 4, 4))


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_encoded_video_round_trip(tmp_path, suffix):
    frames = _smooth_frames()
    (path,) = write_video(tmp_path / "sub" / f"clip{suffix}", frames, fps=16)
    assert path == tmp_path / "sub" / f"clip{suffix}" and path.stat().st_size > 0
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(16)
    # measured 1.40 (mp4) / 1.38 (webm) levels, mostly yuv420p chroma subsampling (1.28 at crf 0)
    assert np.abs(decoded.astype(int) - frames).mean() < 2.0


def test_write_video_accepts_float_tensor(tmp_path):
    frames = _smooth_frames(t=5, h=32, w=48)
    video = from_uint8_frames(frames)[None]  # 1, C, T, H, W in [-1, 1]
    (path,) = write_video(tmp_path / "clip.mp4", video, fps=8, crf=0)
    decoded, fps = read_video(path)
    assert decoded.shape == (5, 32, 48, 3) and fps == pytest.approx(8)


def test_gif_round_trip_keeps_every_frame(tmp_path):
    frames = _smooth_frames(t=6, h=24, w=40)
    frames[3] = frames[2]  # a repeated frame must stay a frame
    (path,) = write_video(tmp_path / "clip.gif", frames, fps=10)
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape
    assert fps == pytest.approx(10, rel=0.05)
    assert np.abs(decoded.astype(int) - frames).mean() < 2.0  # 256-colour palette per frame
    assert b"NETSCAPE2.0" in path.read_bytes()  # the looping extension


def test_png_single_and_sequence(tmp_path):
    frames = _smooth_frames(t=3, h=8, w=6)
    (single,) = write_video(tmp_path / "one.png", frames[:1])
    assert single == tmp_path / "one.png"
    assert np.array_equal(read_image(single), frames[0])
    paths = write_video(tmp_path / "seq" / "out.png", frames)
    assert [p.name for p in paths] == ["out_0000.png", "out_0001.png", "out_0002.png"]
    assert not (tmp_path / "seq" / "out.png").exists()
    assert np.array_equal(np.stack([read_image(p) for p in paths]), frames)
    assert write_image(tmp_path / "img.png", torch.from_numpy(frames[1])).is_file()
    with pytest.raises(CineforgeError, match="H, W, 3"):
        write_image(tmp_path / "bad.png", frames)


def test_odd_size_and_unknown_extension_errors(tmp_path):
    with pytest.raises(CineforgeError, match="even width and height.*62x64"):
        write_video(tmp_path / "odd.mp4", _smooth_frames(t=2, h=64, w=63))
    with pytest.raises(CineforgeError, match="unknown extension '.avi'.*\\.mp4"):
        write_video(tmp_path / "clip.avi", _smooth_frames(t=2))
    with pytest.raises(CineforgeError, match="T, H, W, 3"):
        write_video(tmp_path / "clip.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(CineforgeError, match="T >= 1"):
        write_video(tmp_path / "clip.mp4", np.zeros((0, 8, 8, 3), np.uint8))


def test_missing_and_corrupt_files_raise(tmp_path):
    with pytest.raises(CineforgeError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 50)
    with pytest.raises(CineforgeError, match="corrupt"):
        read_video(corrupt)
    bad_image = tmp_path / "corrupt.png"
    bad_image.write_bytes(b"\x89PNG not really")
    with pytest.raises(CineforgeError, match="corrupt"):
        read_image(bad_image)
    with pytest.raises(CineforgeError, match="not found"):
        read_image(tmp_path / "missing.png")
