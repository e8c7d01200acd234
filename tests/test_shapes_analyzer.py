"""Shapes analyzer: accuracy on ground-truth clips, clean and degraded, and its pieces.

Measured when written (300 single-object clips, half train / half held-out combinations,
64x64x17): colour, shape and motion 100 % clean and 100 % with a [1 2 1] blur plus Gaussian
noise sigma 10; also 100 % on 300 two-object clips and at 64x96 / 96x64, and on 237 clips of
the 'centred' layout's world. With a Gaussian blur
sigma 2, noise sigma 20 and a 15 % colour cast: colour 100 %, motion 100 %, shape 96 %.
"""

import numpy as np
import pytest

from cineforge.data.shapes import LAYOUTS, MOTIONS, SHAPES, render, sample_spec
from cineforge.errors import CineforgeError
from cineforge.eval.shapes import _components, analyze_clip, prompt_agreement


def _blur_noise(frames, rng, sigma=10.0):
    """[1 2 1] x [1 2 1] blur, then Gaussian noise: a mildly imperfect generated clip."""
    x = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4
    x = (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]) / 4
    return np.clip(np.rint(x + rng.normal(0.0, sigma, x.shape)), 0, 255).astype(np.uint8)


def _accuracy(specs, degrade=None, seed=0):
    rng = np.random.default_rng(seed)
    hits = {"colour": 0, "shape": 0, "motion": 0}
    for spec in specs:
        frames = render(spec)
        got = analyze_clip(frames if degrade is None else degrade(frames, rng))
        for key in hits:
            hits[key] += getattr(got, key) == getattr(spec.main, key)
    return {key: n / len(specs) for key, n in hits.items()}


def _single_object_specs(n, seed, **kw):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split=("train", "heldout")[i % 2], **kw) for i in range(n)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("degrade", [None, _blur_noise], ids=["clean", "blur+noise10"])
def test_accuracy_on_single_object_clips(degrade, layout):
    acc = _accuracy(_single_object_specs(150, seed=11, layout=layout), degrade)
    assert acc["colour"] >= 0.98 and acc["motion"] >= 0.98 and acc["shape"] >= 0.95, acc


def test_accuracy_on_two_object_clips_and_other_sizes():
    rng = np.random.default_rng(12)
    specs = [sample_spec(rng, n_objects=2) for _ in range(40)]
    specs += [sample_spec(rng, height=h, width=w) for h, w in [(64, 96), (96, 64)] * 15]
    acc = _accuracy(specs, _blur_noise)
    assert min(acc.values()) >= 0.95, acc


def test_every_motion_and_shape_is_recognised():
    rng = np.random.default_rng(13)
    for i, motion in enumerate(MOTIONS):
        for shape in SHAPES:
            colour = ("red", "blue", "yellow", "green")[i % 4]
            spec = sample_spec(rng, combo=(colour, shape, motion))
            got = analyze_clip(render(spec))
            assert (got.colour, got.shape, got.motion) == (colour, shape, motion), spec.caption
            assert got.found and got.frames_found == 17
            assert min(got.colour_confidence, got.shape_confidence) > 0.0


def test_images_and_empty_clips():
    spec = sample_spec(np.random.default_rng(14), frames=1, combo=("purple", "diamond", "still"))
    frame = render(spec)[0]
    got = analyze_clip(frame)
    assert (got.colour, got.shape, got.motion) == ("purple", "diamond", "still")
    blank = np.full((5, 64, 64, 3), 40, np.uint8)
    assert analyze_clip(blank).found is False and analyze_clip(blank).motion == "none"
    with pytest.raises(CineforgeError, match="uint8"):
        analyze_clip(blank.astype(np.float32))


def test_measurements_are_in_pixels():
    spec = sample_spec(np.random.default_rng(15), combo=("orange", "square", "right"))
    got = analyze_clip(render(spec))
    true_dx = spec.main.vx * (spec.frames - 1)
    assert abs(got.displacement[0] - true_dx) < 0.5 and abs(got.displacement[1]) < 0.5
    assert abs(got.area_ratio - 1.0) < 0.05
    grow = sample_spec(np.random.default_rng(15), combo=("orange", "circle", "grow"))
    ratio = (grow.main.size_end / grow.main.size_start) ** 2
    assert abs(np.log(analyze_clip(render(grow)).area_ratio / ratio)) < 0.15


def test_prompt_agreement():
    spec = sample_spec(np.random.default_rng(16), combo=("cyan", "triangle", "up_left"))
    frames = render(spec)
    assert prompt_agreement(frames, spec.caption) == {"colour": True, "shape": True,
                                                      "motion": True}
    wrong = prompt_agreement(frames, "a red triangle moves down on a black background")
    assert wrong == {"colour": False, "shape": True, "motion": False}
    assert prompt_agreement(frames, "a circle")["colour"] is None


def test_components_match_flood_fill():
    rng = np.random.default_rng(17)
    mask = rng.random((3, 12, 14)) < 0.45
    labels = _components(mask)
    assert np.all((labels >= 0) == mask)
    for t in range(3):  # flood fill reference (4-neighbours, within a frame)
        seen = np.full(mask[t].shape, -1)
        for start in zip(*np.nonzero(mask[t]), strict=True):
            if seen[start] >= 0:
                continue
            stack = [start]
            seen[start] = start[0] * 100 + start[1]
            while stack:
                y, x = stack.pop()
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < 12 and 0 <= nx < 14 and mask[t, ny, nx] and seen[ny, nx] < 0:
                        seen[ny, nx] = seen[start]
                        stack.append((ny, nx))
        ours, ref = labels[t][mask[t]], seen[mask[t]]
        assert np.array_equal(ours[:, None] == ours[None], ref[:, None] == ref[None])


def test_motion_skips_frames_whose_object_has_no_coverage():
    """A frame whose mask is set but whose soft coverage sums to 0 has no centroid: it is
    left out (it used to give a 0/0 NaN centroid and a RuntimeWarning)."""
    from cineforge.eval.shapes import _motion

    mask = np.zeros((5, 24, 24), bool)
    a = np.zeros((5, 24, 24), np.float32)
    for t in range(5):  # a 4x4 block moving right by 3 px a frame
        mask[t, 10:14, 2 + 3 * t : 6 + 3 * t] = True
        a[t, 10:14, 2 + 3 * t : 6 + 3 * t] = 1.0
    a[2] = 0.0
    with np.errstate(all="raise"):
        motion, _, (dx, dy), _, _ = _motion(mask, a)
    assert motion == "right"
    assert dx == pytest.approx(12.0) and dy == pytest.approx(0.0)
