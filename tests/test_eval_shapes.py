"""Shapes prompt-following evaluation: scoring and the ``cineforge eval shapes`` command."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cineforge.cli.main import main
from cineforge.data.shapes import heldout_prompts, render
from cineforge.errors import CineforgeError
from cineforge.eval.shapes import score_clips
from cineforge.models.wan_dit import WanDiT
from cineforge.models.wan_vae import WanVAE
from cineforge.weights.loader import save_components
from cineforge.weights.presets import get_preset
from oracles import perturb


def test_score_is_perfect_on_ground_truth_and_drops_on_mismatch():
    specs = heldout_prompts()[:12]
    clips = [render(s) for s in specs]
    perfect = score_clips(clips, specs)
    assert (perfect.n, perfect.colour, perfect.shape, perfect.motion) == (12, 1.0, 1.0, 1.0)
    shuffled = score_clips(clips, specs[1:] + specs[:1])  # every clip paired with another prompt
    assert shuffled.all_three < 0.5
    with pytest.raises(CineforgeError):
        score_clips([], [])


def test_eval_command_prints_model_and_baseline_rows(tmp_path, capsys):
    preset = get_preset("wan2.1-t2v-tiny")
    torch.manual_seed(0)
    save_components(tmp_path, dit=perturb(WanDiT(preset.dit), 3),
                    vae=perturb(WanVAE(preset.vae), 4, scale=0.02))
    code = main(["eval", "shapes", "--preset", preset.name, "--weights", str(tmp_path),
                 "-n", "2", "--steps", "1", "--batch", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    rows = [line.split() for line in out[1:]]
    assert [r[0] for r in rows] == ["wan2.1-t2v-tiny"] * 2 + ["random"] * 2
    assert all(r[-5] == "2" for r in rows)  # n per split
    assert all(0.0 <= float(c.rstrip("%")) <= 100.0 for r in rows for c in r[-4:])


def test_prompt_specs_cycle_seeds_for_more_prompts():
    from cineforge.cli.eval import prompt_specs

    preset = dataclasses.replace(get_preset("wan2.1-t2v-tiny"), frames=17)
    specs = prompt_specs("held-out", 70, preset)
    assert len(specs) == 70 and len({s.caption for s in specs}) > 61
