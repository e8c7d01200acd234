"""Sequence packing: WanDiT.forward_packed equals per-item forward (values and gradients);
mask and RoPE bookkeeping; the token-budget packer."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.families.wan import dit as wan_dit
from cineforge.families.wan.dit import WAN_DIT_TINY, WanBlock, WanDiT
from cineforge.models.attention import sdpa_attention
from cineforge.models.packing import (
    block_diagonal_mask,
    packed_rope_cis,
    patch_tokens,
    segment_ids,
)
from cineforge.models.rope import rope_cis_3d, wan_rope_axis_dims
from cineforge.train.packing import TokenPacker, fill_ratio, pack_indices
from packed_items import (
    SHAPES,
    TOL,
    assert_packed_equals_per_item,
    gen,
    max_diff,
    packed_inputs,
    perturbed,
)


@functools.cache
def _model() -> WanDiT:
    return perturbed(WanDiT(WAN_DIT_TINY))


@pytest.mark.parametrize("pad", [True, False], ids=["padded_text", "trimmed_text"])
def test_forward_packed_equals_forward_per_item(pad):
    assert_packed_equals_per_item(_model(), pad)


def test_one_item_pack_and_scalar_time_equal_forward():
    model = _model()
    latents, _, contexts = packed_inputs()
    with torch.no_grad():
        (packed,) = model.forward_packed(latents[2:3], 0.4, contexts[2:3])  # no mask at all
        shared = model.forward_packed(latents, 0.4, contexts)  # one time for every item
        alone = model(latents[2][None], torch.tensor([0.4]), contexts[2][None])[0]
    assert (packed - alone).abs().max().item() <= TOL
    assert (shared[2] - alone).abs().max().item() <= TOL


def test_masks_and_per_item_times_matter(monkeypatch):
    """Without the masks, or with one time for all items, the pack differs from per-item
    runs: the equality above is not a coincidence of weak cross-item coupling."""
    model = _model()
    latents, t, contexts = packed_inputs()
    with torch.no_grad():
        packed = model.forward_packed(latents, t, contexts)
        one_time = model.forward_packed(latents, t[:1], contexts)
        monkeypatch.setattr(wan_dit, "block_diagonal_mask", lambda *args: None)
        unmasked = model.forward_packed(latents, t, contexts)
    assert max_diff(packed, one_time) > 1e-2
    assert max_diff(packed, unmasked) > 1e-2


def test_forward_packed_gradients_equal_sum_of_per_item_gradients():
    model = _model()
    latents, t, contexts = packed_inputs()
    g = gen(3)
    # A random linear loss per item, averaged over all elements as the trainer's MSE is (so
    # gradients are O(1e-2) and the bound measures the packing, not fp32 rounding of sums).
    total = sum(torch.Size(s).numel() for s in SHAPES)
    weights = [torch.randn(s, generator=g) / total for s in SHAPES]

    def grads(packed: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        xs = [x.clone().requires_grad_() for x in latents]
        if packed:
            outs = model.forward_packed(xs, t, contexts)
            sum((o * w).sum() for o, w in zip(outs, weights, strict=True)).backward()
        else:
            for i, (x, c, w) in enumerate(zip(xs, contexts, weights, strict=True)):
                (model(x[None], t[i : i + 1], c[None])[0] * w).sum().backward()
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        out.update({f"latent{i}": x.grad for i, x in enumerate(xs)})
        return out

    packed, alone = grads(True), grads(False)
    assert packed.keys() == alone.keys()
    assert all(alone[k].abs().max() > 0 for k in alone)  # every parameter gets a gradient
    diffs = {k: (packed[k] - alone[k]).abs().max().item() for k in packed}
    assert max(diffs.values()) <= TOL, max(diffs.items(), key=lambda kv: kv[1])


def test_block_accepts_per_token_and_per_sample_modulation():
    block = WanBlock(WAN_DIT_TINY, sdpa_attention)
    g = gen(4)
    x, e0 = torch.randn(2, 12, 32, generator=g), torch.randn(2, 1, 6, 32, generator=g)
    context = torch.randn(2, 7, 32, generator=g)
    cis = rope_cis_3d((1, 3, 4), wan_rope_axis_dims(16))
    with torch.no_grad():
        per_sample = block(x, e0, context, cis)
        per_token = block(x, e0.expand(2, 12, 6, 32), context, cis)
    torch.testing.assert_close(per_token, per_sample, rtol=0, atol=1e-6)


def test_block_diagonal_masks():
    assert segment_ids([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]
    mask = block_diagonal_mask([2, 1], [1, 3])
    assert mask.shape == (1, 1, 3, 4)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]]
    assert block_diagonal_mask([5], [7]) is None  # one item: full attention
    with pytest.raises(ValueError, match="non-empty"):
        block_diagonal_mask([2, 0], [1, 1])
    with pytest.raises(ValueError, match="segments"):
        block_diagonal_mask([2, 1], [3])


def test_packed_rope_restarts_per_item():
    dims = wan_rope_axis_dims(16)
    grids = [(1, 4, 4), (5, 4, 4), (1, 4, 4)]
    cis = packed_rope_cis(grids, dims, 10000.0)
    expected = torch.cat([rope_cis_3d(g, dims) for g in grids])
    assert cis.shape == (16 + 80 + 16, 8)
    assert torch.equal(cis, expected)
    assert torch.equal(cis[:16], cis[96:])


def test_forward_packed_bad_inputs_raise():
    model = _model()
    latents, t, contexts = packed_inputs()
    with pytest.raises(CineforgeError, match="needs 4 contexts"):
        model.forward_packed(latents, t, contexts[:3])
    with pytest.raises(CineforgeError, match="one time per item"):
        model.forward_packed(latents, t[:2], contexts)
    with pytest.raises(CineforgeError, match="without a batch"):
        model.forward_packed([x[None] for x in latents], t, contexts)
    with pytest.raises(CineforgeError, match="M >= 1"):
        model.forward_packed(latents, t, contexts[:3] + [torch.zeros(0, 32)])
    with pytest.raises(CineforgeError, match="divisible by the patch"):
        model.forward_packed([torch.randn(16, 1, 5, 4)], t[:1], contexts[:1])
    with pytest.raises(CineforgeError, match="at least one item"):
        model.forward_packed([], t, [])


# ---------------------------------------------------------------------------- the packer


def _stream_counts(n: int, seed: int = 0) -> list[int]:
    g = gen(seed)
    return [(16, 80)[int(b)] for b in torch.rand(n, generator=g) < 0.5]


@pytest.mark.parametrize("lookahead", [0, 3, 64])
def test_pack_indices_respects_budget_and_keeps_every_item_once(lookahead):
    counts = _stream_counts(300)
    packs = pack_indices(counts, 256, lookahead=lookahead)
    assert sorted(itertools.chain(*packs)) == list(range(300))
    assert all(sum(counts[i] for i in p) <= 256 for p in packs)
    assert all(p == sorted(p) for p in packs)  # stream order inside a pack
    assert packs == pack_indices(counts, 256, lookahead=lookahead)  # deterministic


def test_pack_indices_lookahead_zero_is_in_order_greedy_and_lookahead_fills():
    counts = [80, 80, 80, 80, 16, 16, 80]
    assert pack_indices(counts, 256, lookahead=0) == [[0, 1, 2], [3, 4, 5, 6]]
    # a 96-token hole is filled by later items that fit; the first pack opens with item 0
    assert pack_indices([80, 200, 16, 80, 16], 256, lookahead=2) == [[0, 2, 3, 4], [1]]
    counts = _stream_counts(1000, seed=1)
    greedy = fill_ratio(pack_indices(counts, 256, lookahead=0), counts, 256)
    windowed = fill_ratio(pack_indices(counts, 256, lookahead=16), counts, 256)
    assert greedy < 0.93 and windowed > 0.99


def test_no_item_waits_more_than_lookahead_plus_one_packs():
    counts = [200] + [16, 240] * 50
    packs = pack_indices(counts, 256, lookahead=4)
    where = {i: n for n, p in enumerate(packs) for i in p}
    # item i is drawn by pack ~i/2; it must be packed within lookahead + 1 packs of that
    assert all(where[i] <= i + 5 for i in range(len(counts)))


def test_token_packer_resumes_exactly_from_its_state():
    counts = _stream_counts(500, seed=2)

    def source_from(position: list[int]):
        def draw() -> int:
            position[0] += 1
            return position[0] - 1
        return draw

    pos = [0]
    full = TokenPacker(source_from(pos), counts.__getitem__, 256, lookahead=8)
    expected = [full.next_pack() for _ in range(40)]

    pos = [0]
    first = TokenPacker(source_from(pos), counts.__getitem__, 256, lookahead=8)
    got = [first.next_pack() for _ in range(17)]
    saved_pos, saved_state = pos[0], first.state_dict()
    pos2 = [saved_pos]
    resumed = TokenPacker(source_from(pos2), counts.__getitem__, 256, lookahead=8)
    resumed.load_state_dict(saved_state)
    got += [resumed.next_pack() for _ in range(23)]
    assert got == expected
    assert len(saved_state["window"]) <= 9


def test_packer_errors_name_the_fix():
    with pytest.raises(CineforgeError, match=r"raise the budget .* at least 300"):
        pack_indices([16, 300], 256)
    with pytest.raises(CineforgeError, match="budget must be >= 1"):
        pack_indices([16], 0)
    with pytest.raises(CineforgeError, match="lookahead"):
        pack_indices([16], 16, lookahead=-1)
    assert patch_tokens((16, 5, 8, 8), (1, 2, 2)) == 80
    assert fill_ratio([[0, 1]], [16, 80], 128) == 0.75 and fill_ratio([], [], 8) == 0.0
