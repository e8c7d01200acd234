"""Offloading placements: same output as resident, blocks streamed one window at a time."""

from __future__ import annotations

import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.weights.offload import BlockOffload, BlockStreamer, ModelOffload, make_placement
from oracles import perturb


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([0.4]),
            torch.randn(1, 8, WAN_DIT_TINY.text_dim, generator=g))


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_block_offload_matches_resident_and_bounds_resident_blocks(prefetch, monkeypatch):
    model = perturb(WanDiT(WAN_DIT_TINY), seed=0)
    x, t, ctx = _inputs()
    with torch.no_grad():
        expected = model(x, t, ctx)
    seen = []
    original_enter = BlockStreamer.__enter__

    def spy(self):
        seen.append(self)
        return original_enter(self)

    monkeypatch.setattr(BlockStreamer, "__enter__", spy)
    placement = BlockOffload("cpu", prefetch=prefetch)
    with placement.use(model) as m, torch.no_grad():
        got = m(x, t, ctx)
        got_again = m(x, t, ctx)  # hooks stay valid across calls (one per denoising step)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_again, expected, rtol=0, atol=0)
    (streamer,) = seen
    assert streamer.max_resident == min(1 + prefetch, WAN_DIT_TINY.num_layers)
    assert not streamer.loaded  # everything released after the forward
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)


def test_model_offload_returns_model_to_cpu():
    model = WanDiT(WAN_DIT_TINY)
    with ModelOffload("cpu").use(model) as m:
        assert m is model
    assert next(model.parameters()).device.type == "cpu"


def test_unknown_offload_mode_and_bad_prefetch():
    with pytest.raises(CineforgeError, match="unknown offload mode"):
        make_placement("disk", "cpu")
    with pytest.raises(CineforgeError, match="prefetch"):
        BlockOffload("cpu", prefetch=-1)
