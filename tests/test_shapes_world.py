"""Shapes world: determinism, caption/attribute agreement, held-out split, rendering geometry."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from cineforge.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    FILL,
    HELDOUT_COLOUR_SHAPE,
    HELDOUT_SHAPE_MOTION,
    LAYOUTS,
    MOTIONS,
    SHAPES,
    TINY_SHAPES_WORLD,
    ShapesWorld,
    ShapesWorldConfig,
    combinations,
    heldin_prompts,
    heldout_prompts,
    is_heldout,
    object_track,
    parse_caption,
    render,
    sample_spec,
    shape_coverage,
    to_video_tensor,
)
from cineforge.errors import CineforgeError


def _specs(n, split="train", seed=0, **kw):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frames = 1 if i % 5 == 4 else 17
        out.append(sample_spec(rng, frames=frames, n_objects=1 + (i % 3 == 0), split=split, **kw))
    return out


def test_items_are_deterministic_in_seed_and_index():
    cfg = ShapesWorldConfig(image_fraction=0.3, two_object_fraction=0.5, seed=3)
    a, b = ShapesWorld(cfg), ShapesWorld(cfg)
    for i in (0, 7, 123_456):
        x, y = a[i], b[i]
        assert torch.equal(x["video"], y["video"]) and x["caption"] == y["caption"]
        assert x["spec"] == y["spec"]
    assert not torch.equal(a[0]["video"], a[1]["video"])
    other = ShapesWorld(dataclasses.replace(cfg, seed=4))
    assert a.spec(0) != other.spec(0)
    heldout = ShapesWorld(dataclasses.replace(cfg, split="heldout"))
    assert a.spec(0) != heldout.spec(0)
    it = a.iterate(start=41)  # resuming at a data position gives the same items
    assert next(it)["spec"] == a.spec(41) and next(it)["spec"] == a.spec(42)
    kinds = {a.spec(i).frames for i in range(40)}
    assert kinds == {1, 17}


def test_item_tensor_layout_and_range():
    world = ShapesWorld(ShapesWorldConfig(height=64, width=96, image_fraction=0.0))
    item = world[5]
    video = item["video"]
    assert video.shape == (3, 17, 64, 96) and video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    frames = render(item["spec"])
    assert frames.shape == (17, 64, 96, 3) and frames.dtype == np.uint8
    back = ((video + 1) * 127.5).round().permute(1, 2, 3, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(back, frames)
    assert to_video_tensor(frames[:1]).shape == (3, 1, 64, 96)
    tiny = ShapesWorld(TINY_SHAPES_WORLD)
    assert len(tiny) == 16 and len(list(tiny)) == 16
    assert {tuple(tiny[i]["video"].shape) for i in range(16)} == {(3, 5, 32, 32), (3, 1, 32, 32)}


def test_parse_caption_recovers_main_object_of_every_caption():
    specs = _specs(300) + _specs(60, split="heldout", seed=1)
    words_seen = set()
    for spec in specs:
        main, cap = spec.main, spec.caption
        assert parse_caption(cap) == {"colour": main.colour, "shape": main.shape,
                                      "motion": main.motion}, cap
        words = re.findall(r"[a-z]+", cap)
        words_seen.update(words)
        # independent keyword checks: the main object is named first, in full
        assert f"{main.colour} {main.shape}" in cap
        assert spec.background.name in cap
        assert ("gradient" in words) == (spec.background.gradient != "none")
        if main.size_word:
            assert f"{main.size_word} {main.colour} {main.shape}" in cap
        if len(spec.objects) == 2:
            second = spec.objects[1]
            assert cap.index(f"{main.colour} {main.shape}") < cap.index(
                f"{second.colour} {second.shape}")
        if spec.frames == 1:
            assert main.motion == "still" and not {"moves", "slides", "still"} & set(words)
        if main.motion in DIRECTIONS:
            wanted = set(main.motion.split("_"))
            directions = {"left", "right", "up", "down"}
            synonyms = {"leftward": "left", "rightward": "right", "upward": "up",
                        "downward": "down", "rises": "up", "rising": "up", "falls": "down",
                        "falling": "down", "sinks": "down", "sinking": "down", "top": "up",
                        "bottom": "down"}
            clause = re.split(r" (?:and|while) an? ", cap.split(f"{main.colour} {main.shape}")[1])
            said = {synonyms.get(w, w) for w in re.findall(r"[a-z]+", clause[0])} & directions
            assert said == wanted, cap
    assert {"slides", "drifts", "travels", "moves"} <= words_seen  # varied wording


def test_parse_caption_on_user_prompts():
    assert parse_caption("A small GREEN square moving up on a black background") == {
        "colour": "green", "shape": "square", "motion": "up"}
    assert parse_caption("on a dark blue background, a circle falls") == {
        "colour": None, "shape": "circle", "motion": "down"}
    assert parse_caption("a red circle moves right and a blue square moves down")["motion"] == (
        "right")
    assert parse_caption("a yellow triangle grows in front of a gray gradient")["motion"] == "grow"
    assert parse_caption("a cat")["shape"] is None


def test_heldout_combinations_never_in_train_and_cover_heldout():
    heldout = set(combinations("heldout"))
    assert len(heldout) == 61 and len(combinations("train")) == 336 - 61
    assert all(is_heldout(*t) for t in heldout)
    rng = np.random.default_rng(0)
    for i in range(3000):
        spec = sample_spec(rng, frames=1 if i % 4 == 0 else 17, n_objects=1 + i % 2)
        for obj in spec.objects:
            assert (obj.colour, obj.shape) not in HELDOUT_COLOUR_SHAPE
            assert (obj.shape, obj.motion) not in HELDOUT_SHAPE_MOTION
    seen = set()
    for i in range(1000):
        spec = sample_spec(rng, n_objects=1 + i % 2, split="heldout")
        main = spec.main
        assert is_heldout(main.colour, main.shape, main.motion)
        assert not any(is_heldout(o.colour, o.shape, o.motion) for o in spec.objects[1:])
        seen.add((main.colour, main.shape, main.motion))
    assert seen == heldout
    images = {(s.main.colour, s.main.shape) for s in
              (sample_spec(rng, frames=1, split="heldout") for _ in range(60))}
    assert images == HELDOUT_COLOUR_SHAPE


def test_prompt_lists():
    held = heldout_prompts()
    assert sorted((s.main.colour, s.main.shape, s.main.motion) for s in held) == sorted(
        combinations("heldout"))
    assert all(len(s.objects) == 1 and s.frames == 17 for s in held)
    inside = heldin_prompts(20, seed=1)
    triples = {(s.main.colour, s.main.shape, s.main.motion) for s in inside}
    assert len(triples) == 20 and not any(is_heldout(*t) for t in triples)
    assert [s.caption for s in heldin_prompts(20, seed=1)] == [s.caption for s in inside]
    assert len(heldin_prompts()) == len(held)
    images = heldout_prompts(frames=1)
    assert {(s.main.colour, s.main.shape) for s in images} == HELDOUT_COLOUR_SHAPE


@pytest.mark.parametrize("layout, scale", [*((layout, 1.0) for layout in LAYOUTS),
                                           *((layout, 1.25) for layout in LAYOUTS)])
def test_paths_stay_inside_and_move_visibly(layout, scale):
    rng = np.random.default_rng(2)
    for i in range(600):
        h, w = ((64, 64), (64, 96), (96, 64))[i % 3]
        combo = ("red", "square", MOTIONS[i % len(MOTIONS)])
        spec = sample_spec(rng, height=h, width=w, combo=combo, n_objects=1 + (i % 4 == 0),
                           layout=layout, object_scale=scale)
        if layout == "centred":  # the main path's midpoint (a bounce: its row) near the centre
            xs, ys, _ = object_track(spec.main, spec.frames, w)
            jitter = 0.08 * min(h, w) + 1e-9
            assert abs((ys[0] + ys[-1]) / 2 - h / 2) <= jitter
            if spec.main.motion != "bounce":
                assert abs((xs[0] + xs[-1]) / 2 - w / 2) <= jitter
            if spec.main.motion in ("left", "right", "up", "down"):
                assert np.hypot(xs[-1] - xs[0], ys[-1] - ys[0]) >= 0.4 * min(h, w) - 1e-9
        for obj in spec.objects:
            xs, ys, sizes = object_track(obj, spec.frames, w)
            r = sizes / 2
            assert np.all(xs - r >= 0.99) and np.all(xs + r <= w - 0.99)
            assert np.all(ys - r >= 0.99) and np.all(ys + r <= h - 0.99)
            unit = min(h, w) / 64 * scale
            assert np.all(sizes >= 9 * unit - 1e-9) and np.all(sizes <= 24 * unit + 1e-9)
            dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
            if obj.motion in DIRECTIONS:
                ux, uy = DIRECTIONS[obj.motion]
                assert np.sign(dx) == ux and np.sign(dy) == uy
                if ux and not uy:
                    assert 0.3 * w - 1e-9 <= abs(dx) <= 0.5 * w + 1e-9
                if ux and uy:
                    assert abs(abs(dx) - abs(dy)) < 1e-9 and abs(dx) >= 0.3 * min(h, w) - 1e-9
            elif obj.motion == "bounce":  # exactly one reversal, both legs >= 40 % of travel
                steps = np.sign(np.diff(xs))
                assert np.count_nonzero(np.diff(steps)) in (1, 2)  # 2: it touches the wall
                amplitude = max(min(xs.max() - xs[0], xs.max() - xs[-1]),
                                min(xs[0] - xs.min(), xs[-1] - xs.min()))
                assert amplitude >= 0.35 * (w - sizes[0] - 2)
            elif obj.motion in ("grow", "shrink"):
                ratio = sizes[-1] / sizes[0]
                assert (ratio > 1.5) if obj.motion == "grow" else (ratio < 1 / 1.5)
            else:
                assert dx == 0 and dy == 0 and sizes[0] == sizes[-1]
        if len(spec.objects) == 2:  # main object has >= 2x the mean area of the other
            areas = [FILL[o.shape] * np.mean(object_track(o, spec.frames, w)[2] ** 2)
                     for o in spec.objects]
            assert areas[0] >= 2 * areas[1] - 1e-9


@pytest.mark.parametrize("shape", SHAPES)
def test_anti_aliased_coverage_has_the_right_area(shape):
    for size in (12.0, 17.3, 24.0):
        _, _, alpha = shape_coverage(shape, 30.3, 31.7, size, 64, 64)
        np.testing.assert_allclose(alpha.sum(), FILL[shape] * size**2, rtol=0.04)
        assert ((alpha > 0) & (alpha < 1)).sum() >= size  # soft edges, not a hard mask


def test_render_pixels_match_spec():
    spec = sample_spec(np.random.default_rng(5), combo=("blue", "square", "still"))
    frames = render(spec)
    obj, bg = spec.main, spec.background
    y, x = int(obj.y), int(obj.x)
    assert np.all(frames[:, y, x] == np.array(COLOURS["blue"]))
    assert np.all(frames[:, 0, 0] == np.array(bg.rgb_start))
    assert bg.name in BACKGROUNDS
    assert np.array_equal(frames[0], frames[-1])
    moving = render(sample_spec(np.random.default_rng(5), combo=("red", "circle", "left")))
    assert not np.array_equal(moving[0], moving[-1])


def test_bad_configs_raise():
    with pytest.raises(CineforgeError, match="split"):
        ShapesWorldConfig(split="test")
    with pytest.raises(CineforgeError, match="32x32"):
        ShapesWorldConfig(height=16)
    with pytest.raises(CineforgeError, match="image_fraction"):
        ShapesWorldConfig(image_fraction=1.5)
    with pytest.raises(CineforgeError, match="layout 'middle'; use one of"):
        ShapesWorldConfig(layout="middle")
    with pytest.raises(CineforgeError, match="backgrounds must name some of"):
        ShapesWorldConfig(backgrounds=("grey",))
    with pytest.raises(CineforgeError, match="backgrounds must name some of"):
        ShapesWorldConfig(backgrounds=())
    with pytest.raises(CineforgeError, match="motions must name some of"):
        ShapesWorldConfig(motions=("sideways",))
    with pytest.raises(CineforgeError, match=r"object_scale must be in \[0.5, 1.25\], got 1.5"):
        ShapesWorldConfig(object_scale=1.5)
    with pytest.raises(CineforgeError, match="still"):
        sample_spec(np.random.default_rng(0), frames=1, combo=("red", "circle", "left"))
    with pytest.raises(CineforgeError, match=">= 0"):
        ShapesWorld().spec(-1)


def test_curriculum_subsets_limit_the_world_and_leave_the_rest_alone():
    """``backgrounds`` and ``motions`` (curriculum knobs) draw only the named values; listing
    all of them gives the default world item for item; images stay still."""
    base = ShapesWorldConfig(layout="centred", length=80)
    everything = dataclasses.replace(base, backgrounds=tuple(BACKGROUNDS), motions=MOTIONS)
    limited = dataclasses.replace(base, backgrounds=("gray", "beige"), motions=("left", "up"))
    specs = [ShapesWorld(c).spec(i) for c in (base, everything, limited) for i in range(80)]
    assert specs[:80] == specs[80:160]
    limited = specs[160:]
    assert {s.background.name for s in limited} == {"gray", "beige"}
    assert {s.background.gradient for s in limited} == {"none", "vertical", "horizontal"}
    assert {s.main.motion for s in limited if s.frames > 1} == {"left", "up"}
    assert {s.main.motion for s in limited if s.frames == 1} == {"still"}
    for spec in limited:
        assert parse_caption(spec.caption) == {"colour": spec.main.colour,
                                               "shape": spec.main.shape,
                                               "motion": spec.main.motion}
        assert spec.background.name in spec.caption


def test_object_scale_scales_every_object_and_its_size_words():
    """``object_scale`` multiplies the sizes drawn for an item (same draws, so exactly) and
    the sizes the size words name."""
    base = ShapesWorldConfig(layout="centred", length=200)
    big = ShapesWorld(dataclasses.replace(base, object_scale=1.25))
    for i in range(200):
        a, b = ShapesWorld(base).spec(i), big.spec(i)
        assert (a.main.shape, a.main.colour, a.main.motion) == (b.main.shape, b.main.colour,
                                                                b.main.motion)
        assert b.main.size_start == pytest.approx(1.25 * a.main.size_start)
        assert b.main.size_end == pytest.approx(1.25 * a.main.size_end)
        if b.main.size_word == "small":
            assert b.main.size_start <= 15 * 1.25 + 1e-9
        if b.main.size_word in ("large", "big") and len(b.objects) == 1:
            assert b.main.size_start >= 20 * 1.25 - 1e-9

