"""Shapes prompt-following evaluation: scoring and the ``cineforge eval shapes`` command."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from cineforge.cli.main import main
from cineforge.data.shapes import heldout_prompts, render
from cineforge.errors import CineforgeError
from cineforge.eval.shapes import score_clips
from cineforge.families.family import load_components, save_components
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WanDiT
from cineforge.families.wan.vae import WanVAE
from oracles import perturb


def test_score_is_perfect_on_ground_truth_and_drops_on_mismatch():
    specs = heldout_prompts()[:12]
    clips = [render(s) for s in specs]
    perfect = score_clips(clips, specs)
    assert (perfect.n, perfect.colour, perfect.shape, perfect.motion) == (12, 1.0, 1.0, 1.0)
    assert all(not counts for counts in perfect.mistakes.values())
    others = specs[1:] + specs[:1]
    shuffled = score_clips(clips, others)  # every clip paired with another prompt
    assert shuffled.all_three < 0.5
    for attribute in ("colour", "shape", "motion"):  # ground truth reads as what it shows
        want = Counter((getattr(o.main, attribute), getattr(s.main, attribute))
                       for o, s in zip(others, specs, strict=True)
                       if getattr(o.main, attribute) != getattr(s.main, attribute))
        assert shuffled.mistakes[attribute] == want
        assert sum(want.values()) == round((1 - getattr(shuffled, attribute)) * 12)
    with pytest.raises(CineforgeError):
        score_clips([], [])


def test_eval_command_prints_model_and_baseline_rows(tmp_path, capsys):
    preset = get_preset("wan2.1-t2v-tiny")
    torch.manual_seed(0)
    save_components(tmp_path, dit=perturb(WanDiT(preset.dit), 3),
                    vae=perturb(WanVAE(preset.vae), 4, scale=0.02))
    code = main(["eval", "shapes", "--preset", preset.name, "--weights", str(tmp_path),
                 "-n", "2", "--steps", "1", "--batch", "2", "--mistakes"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    head = out.index("most frequent mistakes (asked -> read: clips)")
    # a near-random model gets things wrong: each mistake line names a model, split, attribute
    mistakes = [line.split() for line in out[head + 1:]]
    assert mistakes and all(m[0] in ("wan2.1-t2v-tiny", "random") for m in mistakes)
    assert all("->" in m for m in mistakes)
    out = out[:head]
    rows = [line.split() for line in out[1:]]
    assert [r[0] for r in rows] == ["wan2.1-t2v-tiny"] * 3 + ["random"] * 3
    assert all(r[-5] == "2" for r in rows)  # n per split
    assert all(0.0 <= float(c.rstrip("%")) <= 100.0 for r in rows for c in r[-4:])


def test_prompt_specs_cycle_seeds_for_more_prompts():
    from cineforge.cli.eval import prompt_specs

    preset = dataclasses.replace(get_preset("wan2.1-t2v-tiny"), frames=17)
    specs = prompt_specs("held-out", 70, preset)
    assert len(specs) == 70 and len({s.caption for s in specs}) > 61


def test_swapped_captions_change_only_the_swapped_words():
    from cineforge.data.shapes import parse_caption
    from cineforge.eval.text_use import swapped_captions

    specs = heldout_prompts()[:16]
    captions = swapped_captions(specs)
    for i, spec in enumerate(specs):
        true = parse_caption(captions["true"][i])
        assert (true["colour"], true["shape"], true["motion"]) == (
            spec.main.colour, spec.main.shape, spec.main.motion)
        for attribute in ("colour", "shape", "motion"):
            got = parse_caption(captions[attribute][i])
            assert got[attribute] != true[attribute], captions[attribute][i]
            assert all(got[k] == true[k] for k in ("colour", "shape", "motion") if k != attribute)
            assert len(captions[attribute][i].split()) - len(captions["true"][i].split()) in (
                -3, -2, -1, 0, 1, 2, 3)  # the same template, other words


def test_text_use_is_zero_for_a_text_blind_model_and_large_for_the_demo():
    """The shipped demo relies on colour words (swapping them raises its loss by far more than
    10 % at t = 0.9); a DiT that ignores its context shows exactly 0 % for every attribute."""
    from cineforge.eval.text_use import text_use

    preset = get_preset("demo")
    specs = heldout_prompts()[:4]
    pipe = preset.family.make_pipeline(load_components(preset, None))
    used = text_use(pipe, specs, times=(0.9,))
    assert used.n == 4 and used.loss[0] > 0
    assert used.increase["colour"][0] > 0.1
    # the motion row is a loss-weighted mean of its rows by asked motion; on clips that all
    # ask for one motion the two are the same number
    assert sorted(used.motion_increase) == sorted({s.main.motion for s in specs})
    rows = [v[0] for v in used.motion_increase.values()]
    assert min(rows) - 1e-9 <= used.increase["motion"][0] <= max(rows) + 1e-9
    one = [s for s in heldout_prompts(seed=1) if s.main.motion == specs[0].main.motion][:2]
    alone = text_use(pipe, one, times=(0.9,))
    assert alone.motion_increase == {one[0].main.motion: alone.increase["motion"]}

    class Blind(torch.nn.Module):
        def __init__(self, dit):
            super().__init__()
            self.dit, self.config = dit, dit.config

        def forward(self, x, t, context):
            return self.dit(x, t, torch.zeros_like(context))

    pipe.dit = Blind(pipe.dit)
    blind = text_use(pipe, specs, times=(0.5, 0.9))
    assert all(v == 0.0 for values in blind.increase.values() for v in values)
    assert all(v == 0.0 for values in blind.motion_increase.values() for v in values)
    with pytest.raises(CineforgeError, match="at least one"):
        text_use(pipe, [])


def test_eval_text_use_command_prints_a_row_per_attribute(capsys):
    code = main(["eval", "text-use", "-n", "2", "--batch", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].startswith("flow-loss increase")
    assert [line.split()[0] for line in out[1:6]] == ["t", "loss", "colour", "shape", "motion"]
    assert out[6:] and all(line.startswith("  ") for line in out[6:])  # motion, by asked motion


def test_eval_from_ground_truth_at_low_strength_keeps_colour_and_motion(capsys):
    """--strength: each clip starts from its prompt's own ground-truth clip; the demo model
    noised there at sigma 0.17 (shift 3, 1 of 16 steps) and denoised keeps what the clip shows."""
    code = main(["eval", "shapes", "-n", "4", "--steps", "16", "--strength", "0.0625",
                 "--layout", "centred", "--batch", "4", "--no-baseline"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert code == 0 and [r[1] for r in rows] == ["held-in", "held-out", "held-out-wording"]
    for r in rows:
        colour, motion = (float(c.rstrip("%")) for c in (r[3], r[5]))
        assert (colour, motion) == (100.0, 100.0), r


def test_eval_first_frame_starts_from_the_ground_truth_frame_and_reports_its_psnr(tmp_path,
                                                                                 capsys):
    """--first-frame on an image-to-video preset: each clip's frame 0 is the VAE's
    reconstruction of its spec's first frame, so the PSNR column equals that reconstruction's
    PSNR computed here; a text-to-video preset refuses the flag."""
    import numpy as np

    from cineforge.api import load_pipeline
    from cineforge.cli.eval import first_frame_psnr, prompt_specs
    from cineforge.data.shapes import render
    from cineforge.families.demo.dit import DemoDiT
    from cineforge.io.video import to_uint8_frames

    preset = get_preset("demo-i2v-tiny")
    torch.manual_seed(0)
    save_components(tmp_path, dit=perturb(DemoDiT(preset.dit), 3),
                    vae=perturb(preset.family.build("vae", preset.vae), 4, scale=0.02))
    code = main(["eval", "shapes", "--preset", preset.name, "--weights", str(tmp_path),
                 "-n", "2", "--steps", "1", "--first-frame", "--layout", "centred",
                 "--no-baseline"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and "frame-0 PSNR" in out[0]
    printed = {r.split()[1]: float(r.split()[-2]) for r in out[1:]}

    pipe = load_pipeline(preset.name, tmp_path, device="cpu").runner
    for split in ("held-in", "held-out"):
        values = []
        for spec in prompt_specs(split, 2, preset, "centred"):
            frame = torch.from_numpy(render(spec)[:1].transpose(3, 0, 1, 2).copy())[None]
            with torch.no_grad():
                recon = pipe.decode(pipe.encode_video(frame.float() / 127.5 - 1))
            values.append(first_frame_psnr(to_uint8_frames(recon[0]), spec))
        assert printed[split] == pytest.approx(float(np.mean(values)), abs=0.006), split

    assert main(["eval", "shapes", "--preset", "demo-tiny", "--weights", str(tmp_path),
                 "-n", "1", "--first-frame"]) == 2
    assert "--first-frame needs an image-to-video preset" in capsys.readouterr().err


class _Resample(torch.nn.Module):
    """A stand-in VAE: identity, or a 3x3 box blur of every frame ("decode")."""

    def __init__(self, blur: bool) -> None:
        super().__init__()
        self.blur = blur
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if not self.blur:
            return z
        frames = z.transpose(1, 2).flatten(0, 1)
        blurred = torch.nn.functional.avg_pool2d(frames, 3, 1, 1, count_include_pad=False)
        return blurred.unflatten(0, z.shape[:1] + z.shape[2:3]).transpose(1, 2)


def test_reconstruction_score_reads_truth_and_reconstruction_apart():
    import math

    import numpy as np

    from cineforge.eval.reconstruction import gradient_energy, reconstruction_score

    specs = heldout_prompts(layout="centred")[:6]
    same = reconstruction_score(_Resample(blur=False), specs, batch=4)
    assert same.truth == same.reconstruction and same.truth.all_three == 1.0
    assert same.psnr == math.inf and same.edge_energy == pytest.approx(1.0)
    blurred = reconstruction_score(_Resample(blur=True), specs, batch=4)
    assert blurred.truth == same.truth and 20 < blurred.psnr < 45
    assert 0.05 < blurred.edge_energy < 0.7  # blur spreads each edge: less squared gradient
    step = np.zeros((1, 4, 4, 3), np.uint8)
    step[:, :, 2:] = 10  # one vertical edge of height 10 in every row and channel
    assert gradient_energy(step) == 4 * 3 * 100


def test_eval_vae_command_prints_truth_and_reconstruction_rows(capsys):
    code = main(["eval", "vae", "-n", "4", "--layout", "centred", "--batch", "4"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert code == 0
    assert [r[:3] for r in rows] == [["ground-truth", "held-in", "4"],
                                     ["reconstructed", "held-in", "4"],
                                     ["ground-truth", "held-out", "4"],
                                     ["reconstructed", "held-out", "4"]]
    truth, recon = rows[0], rows[1]
    assert truth[3:] == ["100.0%"] * 4 and recon[3] == "100.0%"  # the demo VAE keeps colour
    assert 20 < float(recon[-3]) < 45 and 0 < float(recon[-1]) < 2


def test_eval_prompts_take_the_object_scale_the_model_trained_at(capsys):
    from cineforge.cli.eval import prompt_specs

    preset = get_preset("demo")
    base = prompt_specs("held-in", 8, preset, "centred")
    large = prompt_specs("held-in", 8, preset, "centred", object_scale=1.25)
    assert [s.caption for s in large] == [s.caption for s in base]
    for a, b in zip(base, large, strict=True):
        assert b.main.size_start == pytest.approx(1.25 * a.main.size_start)
    assert main(["eval", "vae", "-n", "1", "--object-scale", "2"]) != 0
    assert "--object-scale must be in [0.5, 1.25], got 2" in capsys.readouterr().err


class _WordEncoder:
    """A fake text encoder: whitespace tokens; a token's state is its word's vector (its
    value's direction for the words in ``meaning``, else none) plus fresh noise per
    occurrence, as context moves a real encoder's states."""

    def __init__(self, meaning: dict[str, int], dim: int = 32, seed: int = 0):
        self.meaning, self.dim = meaning, dim
        self.gen = torch.Generator().manual_seed(seed)
        self.table: dict[str, torch.Tensor] = {}
        self.tokenizer = self._tokenize

    def _vector(self, word: str) -> torch.Tensor:
        if word not in self.table:
            v = torch.zeros(self.dim)
            if word in self.meaning:
                v[self.meaning[word]] += 3.0
            self.table[word] = v
        return self.table[word]

    def _tokenize(self, text: str, add_special_tokens: bool = True) -> dict:
        words = text.replace(",", " ,").split()
        return {"input_ids": ([0] if add_special_tokens else []) + [hash(w) for w in words],
                "words": words}

    def encode(self, sentences):
        from cineforge.models.text_encoders import TextStates

        rows = [torch.stack([torch.zeros(self.dim)] + [
            self._vector(w) + 0.5 * torch.randn(self.dim, generator=self.gen)
            for w in self._tokenize(s)["words"]]) for s in sentences]
        length = max(len(r) for r in rows)
        states = torch.stack([torch.cat([r, torch.zeros(length - len(r), self.dim)])
                              for r in rows])
        mask = torch.stack([torch.arange(length) < len(r) for r in rows])
        return TextStates(states=states, mask=mask)


def test_wording_probe_reads_held_out_words_only_where_the_encoder_carries_them():
    """An encoder that puts every word of a value (held out or not) on that value's direction
    gives 100 % on the held-out words; one whose held-out words are noise stays near chance;
    an unknown attribute is refused."""
    from cineforge.eval.wording import lexicons, wording_probe

    def meaning(heldout: bool) -> dict[str, int]:
        out = {}
        for attribute in ("colour", "shape"):
            for label, (held_in, held_out) in enumerate(lexicons()[attribute].values()):
                for word in held_in + (held_out if heldout else ()):
                    out[word] = label + (8 if attribute == "shape" else 0)
        return out

    knows = {r.attribute: r for r in wording_probe(_WordEncoder(meaning(True)),
                                                    ("colour", "shape"))}
    assert knows["colour"].heldout_accuracy == 1.0 and knows["shape"].heldout_accuracy == 1.0
    assert knows["colour"].heldin_accuracy == 1.0 and knows["colour"].values == 7
    assert (knows["colour"].heldin_words, knows["colour"].heldout_words) == (14, 7)
    blind = {r.attribute: r for r in wording_probe(_WordEncoder(meaning(False)),
                                                   ("colour", "shape"))}
    assert blind["colour"].heldin_accuracy == 1.0
    assert blind["colour"].heldout_accuracy < 0.5 and blind["shape"].heldout_accuracy < 0.6
    with pytest.raises(CineforgeError, match="unknown attributes"):
        wording_probe(_WordEncoder({}), ("size",))


def test_eval_wording_command_prints_a_row_per_attribute(capsys):
    assert main(["eval", "wording"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["colour", "shape", "motion"]
    held_in, held_out = ({r[0]: float(r[i].rstrip("%")) for r in rows} for i in (3, 4))
    assert held_in["colour"] == held_in["shape"] == 100.0  # the held-in words separate
    # MiniLM places "scarlet", "jade", "sapphire"... near no colour (chance: 14.3 %)
    assert held_out["colour"] < 50 and held_out["shape"] > 25
