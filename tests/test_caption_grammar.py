"""Shapes-world caption grammar: opt-in varied wordings, held-out wordings for evaluation only,
and captions of the default wording exactly as before."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re

import numpy as np
import pytest

from cineforge.data import shapes_grammar as grammar
from cineforge.data.shapes import (
    ShapesWorld,
    ShapesWorldConfig,
    heldin_prompts,
    heldout_prompts,
    parse_caption,
    recaption,
)
from cineforge.errors import CineforgeError

# sha256 of the captions below, recorded from the shapes world before the grammar existed
TEMPLATE_CAPTIONS_SHA256 = "ae0cc03d071b69520e0bcb3e7e83c9ab3ceedfa95bce6fdfd4b6720ac7bdaec0"


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption))


def _truth(spec) -> dict[str, str]:
    return {"colour": spec.main.colour, "shape": spec.main.shape, "motion": spec.main.motion}


def _varied_specs(seeds=range(4), items=500):
    for seed in seeds:
        world = ShapesWorld(ShapesWorldConfig(seed=seed, wording="varied",
                                              two_object_fraction=0.5, image_fraction=0.3))
        yield from (world.spec(i) for i in range(items))


def _heldout_wording_specs(seeds=range(8)):
    for seed in seeds:
        yield from heldin_prompts(seed=seed, wording="heldout")
        yield from heldout_prompts(seed=seed, wording="heldout")
        yield from heldin_prompts(20, seed=seed, frames=1, wording="heldout")


def test_template_captions_are_byte_identical_to_before():
    configs = [ShapesWorldConfig(seed=s, two_object_fraction=0.5, image_fraction=0.3)
               for s in range(6)]
    configs.append(ShapesWorldConfig(seed=3, layout="centred", height=32, width=48, frames=5))
    captions = [ShapesWorld(c).spec(i).caption for c in configs for i in range(300)]
    for seed in range(3):
        captions += [s.caption for s in heldout_prompts(seed=seed)]
        captions += [s.caption for s in heldin_prompts(seed=seed)]
        captions += [s.caption for s in heldin_prompts(20, seed=seed, frames=1)]
    captions += [recaption(heldout_prompts()[0], seed=i, motion="left") for i in range(20)]
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()
    assert (len(captions), digest) == (2546, TEMPLATE_CAPTIONS_SHA256)
    explicit = ShapesWorld(ShapesWorldConfig(seed=1, wording="template"))
    assert [explicit.spec(i) for i in range(50)] == [ShapesWorld(ShapesWorldConfig(seed=1)).spec(i)
                                                     for i in range(50)]


def test_varied_wording_rewords_the_same_clips_with_synonyms():
    template = ShapesWorld(ShapesWorldConfig(seed=2, two_object_fraction=0.5))
    varied = ShapesWorld(ShapesWorldConfig(seed=2, two_object_fraction=0.5, wording="varied"))
    said = collections.defaultdict(set)
    for i in range(600):
        a, b = template.spec(i), varied.spec(i)
        assert dataclasses.replace(b, caption=a.caption) == a  # only the caption differs
        words = _words(b.caption)
        for value, (held_in, _) in (*grammar.COLOUR_WORDS.items(), *grammar.SHAPE_WORDS.items()):
            if value in (b.main.colour, b.main.shape):
                said[value] |= words & set(held_in)
        if b.frames > 1:
            present, participle = grammar.MOTION_PHRASES[b.main.motion][:2]
            said[b.main.motion] |= {p for p in (*present, *participle) if p in b.caption}
    assert all(len(said[c]) >= 2 for c in grammar.COLOUR_WORDS), said
    assert all(len(said[s]) >= 2 for s in grammar.SHAPE_WORDS), said
    assert all(len(said[m]) >= 4 for m in grammar.MOTION_PHRASES), said
    assert {"ball", "box", "block", "disc"} <= said["circle"] | said["square"]
    assert {"rises", "goes up", "floats up"} <= said["up"]
    assert {"falls", "drops"} <= said["down"] and "slides off to the left" in said["left"]
    captions = [varied.spec(i).caption for i in range(600)]
    assert any(re.search(r" that (rises|falls|moves|goes|drifts)", c) for c in captions)
    assert any(c.startswith(("a video of", "a clip of")) for c in captions)
    assert len(set(captions)) == len(captions)


def test_heldout_wordings_only_in_the_heldout_wording_prompts():
    assert {"scarlet", "orb", "cube", "climbs", "descends", "glides", "is", "keeps",
            "see"} <= grammar.HELDOUT_WORDS
    for spec in _varied_specs(range(8)):
        assert not _words(spec.caption) & grammar.HELDOUT_WORDS, spec.caption
    used = set()
    for spec in _heldout_wording_specs():
        words = _words(spec.caption)
        assert words & grammar.HELDOUT_WORDS, spec.caption  # every one has a held-out wording
        used |= words & grammar.HELDOUT_WORDS
    assert used == grammar.HELDOUT_WORDS  # and each held-out word and template is asked
    reworded = heldin_prompts(seed=3, wording="heldout")
    assert [dataclasses.replace(s, caption="") for s in reworded] == [
        dataclasses.replace(s, caption="") for s in heldin_prompts(seed=3)]


def test_parse_caption_reads_every_grammar_caption():
    specs = [*_varied_specs(range(3), 700), *_heldout_wording_specs(range(4))]
    wrong = [(s.caption, parse_caption(s.caption), _truth(s)) for s in specs
             if parse_caption(s.caption) != _truth(s)]
    assert not wrong, wrong[:5]
    assert parse_caption("a red square that rises")["motion"] == "up"
    assert parse_caption("blue triangle heading right") == {
        "colour": "blue", "shape": "triangle", "motion": "right"}
    assert parse_caption("a crimson ball drops and the cobalt box rises") == {
        "colour": "red", "shape": "circle", "motion": "down"}


def test_wording_knob_is_opt_in_and_refuses_heldout_for_training():
    from cineforge.train.config import DataConfig
    from cineforge.train.data import shapes_world
    from cineforge.train.run import _LATER_KNOBS, _recorded_fields

    def _world_source(world):
        return _recorded_fields(world, _LATER_KNOBS)

    assert DataConfig().wording == "template" and ShapesWorldConfig().wording == "template"
    world = shapes_world(DataConfig(wording="varied"), "train_videos")
    assert world.config.wording == "varied"
    assert "wording" not in _world_source(shapes_world(DataConfig(), "cache").config)
    assert _world_source(shapes_world(DataConfig(wording="varied"), "cache").config)[
        "wording"] == "varied"  # a cache of varied captions is not one of template captions
    with pytest.raises(CineforgeError, match="evaluation prompts only"):
        ShapesWorldConfig(wording="heldout")
    with pytest.raises(CineforgeError, match="data.wording"):
        DataConfig(wording="fancy")
    with pytest.raises(CineforgeError, match="wording"):
        heldin_prompts(wording="fancy")
    rng = np.random.default_rng(0)
    assert grammar.phrase(rng, heldout_prompts()[0].objects, heldout_prompts()[0].background,
                          False, heldout=True)


def test_eval_shapes_prints_three_splits(capsys):
    from cineforge.cli.eval import SPLITS, prompt_specs
    from cineforge.cli.main import main
    from cineforge.families.registry import get_preset

    preset = get_preset("demo")
    held_in = prompt_specs("held-in", 70, preset)
    assert [s.caption for s in held_in] == [
        s.caption for seed in (0, 1) for s in heldin_prompts(seed=seed)][:70]
    reworded = prompt_specs("held-out-wording", 70, preset)
    assert [s.main for s in reworded] == [s.main for s in held_in]
    assert all(_words(s.caption) & grammar.HELDOUT_WORDS for s in reworded)
    code = main(["eval", "shapes", "--preset", "demo", "-n", "1", "--no-baseline",
                 "--steps", "2"])  # one prompt per split: the DiT and VAE dominate the time
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert code == 0 and [r[1] for r in rows] == list(SPLITS)
    assert SPLITS == ("held-in", "held-out", "held-out-wording")
    assert all(r[2] == "1" for r in rows)
