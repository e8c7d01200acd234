"""The CogVideoX DiT against diffusers' CogVideoXTransformer3DModel with the same weights
(fp32, tiny configs): 2B-style sine positions, 5B-style 3D RoPE (including the crop of a grid
of another aspect), 1.5-style temporal patches and the I2V model's learned positions; the
diffusers key map on full-size meta state dicts, strictly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox.dit import (
    COGVIDEOX1_5_5B,
    COGVIDEOX_2B,
    COGVIDEOX_5B,
    COGVIDEOX_DIT_TINY,
    CogVideoXDiT,
    CogVideoXDiTConfig,
    cogvideox_dit_flops,
    rope_positions,
)
from cineforge.families.cogvideox.dit_keys import COGVIDEOX_DIT_FROM_DIFFUSERS
from cineforge.weights.keymap import load_strict
from cogvideox_oracles import diffusers_transformer, rotary_embedding
from oracles import perturb

TINY = COGVIDEOX_DIT_TINY
ROPE = dataclasses.replace(TINY, positions="rope")
V1_5 = dataclasses.replace(TINY, positions="rope", patch_size=(2, 2, 2), sample_size=(5, 20, 20))
LEARNED = dataclasses.replace(ROPE, learned_positions=True)


def _pair(config: CogVideoXDiTConfig, seed: int = 1):
    """A perturbed diffusers transformer and our DiT loaded from it through the key map."""
    torch.manual_seed(seed)
    ref = perturb(diffusers_transformer(config), seed)
    if config.learned_positions:  # a buffer: perturb leaves it at its sine initialisation
        ref.patch_embed.pos_embedding.normal_(generator=torch.Generator().manual_seed(seed))
    with torch.device("meta"):
        ours = CogVideoXDiT(config)
    load_strict(ours, COGVIDEOX_DIT_FROM_DIFFUSERS.convert(ref.state_dict()))
    return ref, ours.eval()


def _compare(config: CogVideoXDiTConfig, latent_shape, text_len=None, seed=1) -> float:
    ref, ours = _pair(config, seed)
    g = torch.Generator().manual_seed(seed + 10)
    x = torch.randn(latent_shape, generator=g)
    text = torch.randn(latent_shape[0], text_len or config.text_len, config.text_dim, generator=g)
    t = torch.tensor([999.0, 321.0][: latent_shape[0]])
    with torch.no_grad():
        want = ref(x.permute(0, 2, 1, 3, 4), text, t, return_dict=False,
                   image_rotary_emb=rotary_embedding(ref, latent_shape))[0]
        got = ours(x, t, text)
    want = want.permute(0, 2, 1, 3, 4)
    assert got.shape == want.shape == latent_shape
    assert want.std() > 0.1  # no dead network
    return (got - want).abs().max().item()


@pytest.mark.parametrize(("name", "config", "shape", "text_len"), [
    ("2B sincos, training grid", TINY, (2, 16, 3, 8, 12), None),
    ("2B sincos, other grid", TINY, (1, 16, 2, 6, 10), None),
    ("5B rope, training grid", ROPE, (2, 16, 3, 8, 12), 5),
    ("5B rope, cropped grid", ROPE, (1, 16, 2, 10, 6), None),
    ("1.5 temporal patches", V1_5, (2, 16, 4, 6, 8), 7),
    ("5B-I2V learned positions", LEARNED, (1, 16, 3, 8, 12), None),
])
def test_dit_matches_diffusers(name, config, shape, text_len):
    err = _compare(config, shape, text_len)
    print(f"CogVideoX DiT {name}: max abs diff {err:.2e}")
    assert err <= 1e-4, f"{name}: max abs diff {err:.2e}"


def test_rope_crop_positions_stretch_over_the_training_grid():
    """1.0 fits a grid into its training grid (4 x 6 tokens here) by resize and centre crop;
    1.5 takes integer indices."""
    t, rows, cols = rope_positions(ROPE, (2, 4, 6))  # the training grid: indices
    assert t.tolist() == [0, 1] and rows.tolist() == [0, 1, 2, 3]
    assert cols.tolist() == list(range(6))
    _, rows, cols = rope_positions(ROPE, (1, 5, 3))  # tall: full height, centred columns
    assert rows.tolist() == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    # columns resized to 2 of 6, left edge 2: linspace(2, (2 + 2) * 2 / 3, 3), as the release
    assert cols.tolist() == pytest.approx([2.0, 7 / 3, 8 / 3])
    _, rows, _ = rope_positions(V1_5, (1, 3, 9))
    assert rows.tolist() == [0, 1, 2]


def test_grids_beyond_the_positions_are_errors():
    with torch.device("meta"):
        v15, learned = CogVideoXDiT(V1_5), CogVideoXDiT(LEARNED)
    text = torch.zeros(1, 16, 32, device="meta")
    with pytest.raises(CineforgeError, match="beyond"):  # 11 rows > 10 in training
        v15(torch.zeros(1, 16, 2, 22, 8, device="meta"), 1.0, text)
    with pytest.raises(CineforgeError, match="beyond"):  # learned: the training grid only
        learned(torch.zeros(1, 16, 3, 8, 10, device="meta"), 1.0, text)
    with pytest.raises(CineforgeError, match="whole patches"):
        v15(torch.zeros(1, 16, 3, 8, 8, device="meta"), 1.0, text)


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "config", "count"), [
    ("cogvideox-2b", COGVIDEOX_2B, 1_693_783_872),
    ("cogvideox-5b", COGVIDEOX_5B, 5_570_283_072),
    ("cogvideox1.5-5b", COGVIDEOX1_5_5B, 5_570_676_352),
])
def test_release_state_dicts_load_strictly(name, config, count):
    """diffusers' model of the release config (on the meta device): every key maps, every
    shape fits, nothing is missing; the parameter count is the release's."""
    with torch.device("meta"):
        ref = diffusers_transformer(config)
        ours = CogVideoXDiT(config)
    state = ref.state_dict()
    load_strict(ours, COGVIDEOX_DIT_FROM_DIFFUSERS.convert(state))
    print(f"{name}: {_param_count(ours):,} parameters")
    assert _param_count(ours) == _param_count(ref) == count
    with pytest.raises(CineforgeError, match="match no rule"):
        COGVIDEOX_DIT_FROM_DIFFUSERS.convert(state | {"ofs_embedding.linear_1.weight": None})


def test_release_configs_and_flops():
    assert (COGVIDEOX_2B.dim, COGVIDEOX_5B.dim, COGVIDEOX_5B.num_layers) == (1920, 3072, 42)
    assert COGVIDEOX1_5_5B.max_token_grid == (None, 150, 150)
    # 5B, 49 frames at 720x480 (13 x 60 x 90 latents) + 226 text tokens = 17,776 tokens:
    # 2 x 4.76e9 per-token weights (all but the 0.8e9 of adaLN) x 17,776 tokens (1.69e14)
    # + attention 42 x 4 x 17,776^2 x 3072 (1.63e14)
    flops = cogvideox_dit_flops(COGVIDEOX_5B, (1, 16, 13, 60, 90), 226)
    assert 3.25e14 < flops < 3.4e14
    with pytest.raises(ValueError, match="multiple of 16"):
        dataclasses.replace(ROPE, head_dim=8)
    with pytest.raises(ValueError, match="learned"):
        dataclasses.replace(TINY, learned_positions=True)
