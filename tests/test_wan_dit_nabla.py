"""Wan DiT with NABLA sparse self-attention: tile layout, sparsity placement, gradients.

CPU calls with gradients enabled (the default here: parameters require grad) take NABLA's
masked-SDPA path, so nothing is compiled."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.models import attention as registry
from cineforge.models.attention import attention_backends, register_attention_backend
from cineforge.models.nabla import (
    NablaAttention,
    NablaGrid,
    nabla_block_map,
    nabla_reference,
    sta_block_map,
)
from cineforge.models.sparse_layout import self_attention_layout

TEXT_LEN = 6


@pytest.fixture
def register():
    """``register(fn) -> name``: a uniquely named backend, removed again after the test."""
    before = dict(registry._BACKENDS)
    names = []

    def _register(fn) -> str:
        name = f"test_wan_dit_nabla_{len(names)}"
        assert name not in attention_backends()
        register_attention_backend(name, fn)
        names.append(name)
        return name

    yield _register
    for name in names:
        registry._BACKENDS.pop(name)
    assert before == registry._BACKENDS


def _model(attention: str = "sdpa") -> WanDiT:
    """The tiny config with every parameter perturbed (seeded: same weights for any backend)."""
    g = torch.Generator().manual_seed(3)
    model = WanDiT(dataclasses.replace(WAN_DIT_TINY, attention=attention)).init_weights(g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _inputs(shape, seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x, torch.rand(shape[0], generator=g), torch.randn(shape[0], TEXT_LEN, 32, generator=g)


def _token_grid(shape):
    return shape[2], shape[3] // 2, shape[4] // 2  # patch (1, 2, 2)


@pytest.mark.parametrize(
    ("shape", "tile", "reorders"),
    [((1, 16, 2, 16, 16), (1, 8, 8), False),  # token grids 2x8x8 and 3x16x8: one tile per row,
     ((2, 16, 3, 32, 16), (1, 8, 8), False),  # so tile order is raster order
     ((1, 16, 2, 32, 32), (1, 8, 8), True), ((2, 16, 3, 16, 32), (1, 8, 8), True),
     ((1, 16, 2, 16, 16), (2, 4, 8), True)],
)
def test_full_nabla_equals_dense(register, shape, tile, reorders):
    """P = 1 with a window covering every tile keeps every block: equal to SDPA, which checks
    the tile reordering of tokens and RoPE and the restore before the head."""
    nabla = NablaAttention(p=1.0, sta_window=(7, 7, 7), tile=tile)
    order = self_attention_layout(nabla, _token_grid(shape), torch.device("cpu")).order
    assert reorders == (not torch.equal(order, torch.arange(len(order))))
    name = register(nabla)
    x, t, context = _inputs(shape)
    expected = _model()(x, t, context)
    got = _model(name)(x, t, context)
    assert (got - expected).abs().max() <= 1e-5
    assert expected.abs().max() > 0.5  # the comparison is not between zeros


def _raster_reference(grid, nabla: NablaAttention, maps: list):
    """A dense backend (the model stays in raster order) that computes NABLA from scratch:
    tile ids from raster coordinates, tokens grouped by a stable sort of them, the block map
    from ``nabla_block_map`` | ``sta_block_map``, attention by ``nabla_reference``."""
    T, H, W = grid
    (tt, th, tw), n = nabla.tile, T * H * W
    t, h, w = (c.reshape(-1) for c in torch.meshgrid(
        torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij"))
    tiles = (T // tt, H // th, W // tw)
    tile_id = ((t // tt) * tiles[1] + h // th) * tiles[2] + w // tw
    perm = torch.argsort(tile_id, stable=True)
    inverse = torch.argsort(perm)

    def backend(q, k, v, mask=None):
        if mask is not None or q.shape[2] != n or k.shape[2] != n:  # cross-attention: dense
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        q, k, v = (a[:, :, perm] for a in (q, k, v))
        bmap = nabla_block_map(q, k, nabla.p, nabla.block_size)
        bmap = bmap | sta_block_map(*tiles, nabla.sta_window)
        maps.append(bmap)
        return nabla_reference(q, k, v, bmap, nabla.block_size)[:, :, inverse]

    return backend


def test_sparse_nabla_equals_brute_force_and_differs_from_dense(register):
    shape = (1, 16, 3, 32, 32)  # token grid 3 x 16 x 16: 12 tiles of 8 x 8
    nabla = NablaAttention(p=0.3, sta_window=(1, 1, 1))
    maps = []
    sparse_name = register(nabla)
    reference_name = register(_raster_reference(_token_grid(shape), nabla, maps))
    x, t, context = _inputs(shape)
    got = _model(sparse_name)(x, t, context)
    expected = _model(reference_name)(x, t, context)
    dense = _model()(x, t, context)

    kept = torch.stack([m.float().mean() for m in maps])
    assert len(maps) == 2 and kept.max() < 0.6 and kept.min() > 0  # sparse, never empty
    assert (got - expected).abs().max() <= 1e-5
    assert (got - dense).abs().max() > 0.05 * dense.abs().max()


def test_gradients_flow_and_equal_dense_when_full(register):
    shape = (1, 16, 2, 32, 16)  # token grid 2 x 16 x 8: 4 tiles, not in raster order
    full = register(NablaAttention(p=1.0, sta_window=(3, 3, 3)))
    sparse = register(NablaAttention(p=0.3, sta_window=(1, 1, 1)))
    x, t, context = _inputs(shape)

    def grads(name):
        model = _model(name)
        xg = x.clone().requires_grad_(True)
        model(xg, t, context).square().mean().backward()
        return [xg.grad] + [p.grad for p in model.parameters()]

    dense, got = grads("sdpa"), grads(full)
    for g_dense, g_got in zip(dense, got, strict=True):
        torch.testing.assert_close(g_got, g_dense, atol=1e-5, rtol=1e-4)
    sparse_grads = grads(sparse)
    assert all(g is not None and torch.isfinite(g).all() for g in sparse_grads)
    assert sparse_grads[0].abs().max() > 0
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(sparse_grads, dense, strict=True))


def test_grid_reaches_self_attention_only(register, monkeypatch):
    self_calls, cross_calls = [], []

    class Spy(NablaAttention):
        def __call__(self, q, k, v, mask=None):
            self_calls.append((mask, q.shape[2], k.shape[2]))
            return super().__call__(q, k, v, mask)

    def counting_sdpa(q, k, v, mask=None):
        cross_calls.append((mask, q.shape[2], k.shape[2]))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    monkeypatch.setitem(registry._BACKENDS, "sdpa", counting_sdpa)  # restored by monkeypatch
    model = _model(register(Spy()))
    assert all(b.cross_attn.attention is counting_sdpa for b in model.blocks)
    assert all(isinstance(b.self_attn.attention, Spy) for b in model.blocks)
    x, t, context = _inputs((1, 16, 2, 16, 16))
    model(x, t, context)
    assert self_calls == [(NablaGrid(2, 8, 8), 128, 128)] * 2
    assert cross_calls == [(None, 128, TEXT_LEN)] * 2


def test_dense_backends_keep_raster_layout():
    layout = self_attention_layout(registry.get_attention_backend("sdpa"), (2, 8, 8), "cpu")
    tokens = torch.randn(1, 128, 4)
    assert layout.mask is None and layout.to_attention(tokens) is tokens
    assert layout.to_raster(tokens) is tokens


def test_nabla_errors_name_the_fix(register):
    model = _model(register(NablaAttention()))
    x, t, context = _inputs((1, 16, 2, 16, 12))  # token grid 2 x 8 x 6: not a multiple of 8x8
    with pytest.raises(CineforgeError, match="divisible by the tile"):
        model(x, t, context)
    x, t, context = _inputs((1, 16, 2, 16, 16))
    with pytest.raises(CineforgeError, match="flow.packing: false"):
        model.forward_packed([x[0]], t, [context[0]])
