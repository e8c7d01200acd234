"""NABLA backend: pure mask builders against brute-force oracles, sparse paths against dense."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError
from cineforge.models import nabla as nabla_module
from cineforge.models.attention import get_attention_backend
from cineforge.models.nabla import (
    NablaAttention,
    NablaGrid,
    expand_block_map,
    nabla_block_map,
    nabla_reference,
    sta_block_map,
    tile_order,
    tile_order_inverse,
)


def _qkv(B=1, H=2, L=512, D=16, q_scale=3.0):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, L, D, generator=g) * q_scale  # peaky block scores: a sparse map
    k = torch.randn(B, H, L, D, generator=g) * q_scale
    v = torch.randn(B, H, L, D, generator=g)
    return q, k, v


def test_tile_order_groups_tiles_and_round_trips():
    T, H, W = 2, 8, 16
    perm = tile_order(T, H, W)
    raster = torch.arange(T * H * W).reshape(T, H, W)
    t, h, w = (c.reshape(-1)[perm] for c in torch.meshgrid(
        torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij"))
    for blk in range(len(perm) // 64):  # each 64-token block is one 8x8 patch of one frame
        s = slice(64 * blk, 64 * blk + 64)
        assert t[s].unique().numel() == 1 and (h[s] // 8).unique().numel() == 1
        assert (w[s] // 8).unique().numel() == 1
    # tiles in raster order: frame 0 left tile, frame 0 right tile, frame 1 ...
    assert w[64] == 8 and t[128] == 1
    x = torch.randn(1, T * H * W, 3)
    assert torch.equal(x[:, perm][:, tile_order_inverse(T, H, W)], x)
    assert torch.equal(raster.reshape(-1)[perm][tile_order_inverse(T, H, W)], raster.reshape(-1))
    with pytest.raises(CineforgeError, match="divisible by the tile"):
        tile_order(2, 12, 16)


def _brute_block_map(q, k, p, block=64):
    """Per (batch, head, query block): block means, softmax scores, sort descending and keep
    through the first block where the cumulative mass reaches p. Plain loops, float64."""
    B, nh, L, d = q.shape
    n = L // block
    out = torch.zeros(B, nh, n, n, dtype=torch.bool)
    for b in range(B):
        for h in range(nh):
            kbar = [k[b, h, j * block:(j + 1) * block].double().mean(0) for j in range(n)]
            for i in range(n):
                qbar = q[b, h, i * block:(i + 1) * block].double().mean(0)
                logits = [float(qbar @ kb) / math.sqrt(d) for kb in kbar]
                m = max(logits)
                e = [math.exp(x - m) for x in logits]
                probs = [x / sum(e) for x in e]
                mass = 0.0
                for j in sorted(range(n), key=lambda j: -probs[j]):
                    out[b, h, i, j] = True
                    mass += probs[j]
                    if mass >= p:
                        break
    return out


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
def test_block_map_equals_brute_force(p):
    q, k, _ = _qkv(B=2, H=2, L=640)
    got = nabla_block_map(q, k, p)
    assert got.shape == (2, 2, 10, 10) and got.dtype == torch.bool
    assert torch.equal(got, _brute_block_map(q, k, p))
    assert 0.0 < got.float().mean() < 1.0  # neither empty nor dense: the test can fail
    assert nabla_block_map(q, k, 1.0).all()


@pytest.mark.parametrize("grid,window", [((3, 4, 5), (3, 3, 1)), ((2, 3, 3), (1, 5, 3)),
                                         ((4, 2, 2), (11, 3, 3))])
def test_sta_map_equals_brute_force(grid, window):
    T, H, W = grid
    got = sta_block_map(T, H, W, window)
    coords = [(t, h, w) for t in range(T) for h in range(H) for w in range(W)]
    want = torch.tensor([[all(abs(a - b) <= win // 2
                               for a, b, win in zip(ci, cj, window, strict=True))
                          for cj in coords] for ci in coords])
    assert torch.equal(got, want)


def _brute_sta_token_mask(grid, window, tile=(1, 8, 8)):
    """Token mask (tokens in tile order) of the sliding-tile rule, from first principles: a
    token's tile is its (frame, row, column) divided by the tile's sides; a query tile may
    attend a key tile when they are at most window // 2 tiles apart along t, h and w."""
    T, H, W = grid
    raster = tile_order(T, H, W, tile)  # raster index of each tile-ordered token
    coords = torch.stack([raster // (H * W), raster // W % H, raster % W], dim=-1)
    coords = coords // torch.tensor(tile)  # each token's tile (t, h, w)
    tiles = coords.unique(dim=0).tolist()
    near = torch.tensor([[all(abs(a - b) <= size // 2
                              for a, b, size in zip(ti, tj, window, strict=True))
                          for tj in tiles] for ti in tiles])
    tiles = torch.tensor(tiles)
    index = (coords[:, None] == tiles[None]).all(dim=-1).int().argmax(dim=-1)
    return near[index][:, index]


@pytest.mark.parametrize(
    ("grid", "window"),
    [
        ((8, 8, 32), None),  # the release's wT 11, wH 3, wW 3: tiles 8 x 1 x 4
        ((3, 16, 32), (1, 3, 5)),  # tiles 3 x 2 x 4; reversed it would be (5, 3, 1)
        ((2, 24, 16), (1, 1, 3)),  # tiles 2 x 3 x 2: h must not take w's window
    ],
)
def test_sta_window_axes_against_brute_force(grid, window):
    """An asymmetric window keeps its (t, h, w) order, from NablaAttention's settings to the
    attention it runs; None is the registered "nabla" backend, the release's window."""
    release = get_attention_backend("nabla")
    assert release.sta_window == (11, 3, 3)  # (wT, wH, wW) of the release's configs
    window = release.sta_window if window is None else window
    cfg = NablaAttention(p=0.01, sta_window=window)  # NABLA keeps one block per query block
    q, k, v = _qkv(H=1, L=math.prod(grid), D=8)
    want_blocks = _brute_block_map(q, k, cfg.p)  # the top key block of each query block
    assert want_blocks.sum(-1).eq(1).all()
    want = _brute_sta_token_mask(grid, window) | expand_block_map(want_blocks)
    assert 0.1 < want.float().mean() < 0.7  # sparse: the window leaves tiles out
    for swapped in set(itertools.permutations(window)) - {window}:  # the test can fail
        assert not torch.equal(want, _brute_sta_token_mask(grid, swapped)
                               | expand_block_map(want_blocks)), swapped
    assert torch.equal(expand_block_map(cfg.block_map(q, k, NablaGrid(*grid))), want)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]  # the masked-SDPA path
    torch.testing.assert_close(cfg(*leaves, mask=NablaGrid(*grid)),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=want),
                               atol=1e-5, rtol=0)


def test_p1_without_sta_is_dense_and_plain_masks_pass_through():
    q, k, v = (x.requires_grad_() for x in _qkv())
    nabla = NablaAttention(p=1.0, sta_window=None)
    dense = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(nabla(q, k, v, mask=NablaGrid(2, 16, 16)), dense,
                               atol=1e-5, rtol=0)
    causal = torch.ones(512, 512, dtype=torch.bool).tril()
    assert torch.equal(nabla(q, k, v, mask=causal),
                       F.scaled_dot_product_attention(q, k, v, attn_mask=causal))


def test_union_with_sta_and_registry():
    q, k, _ = _qkv(L=1024)  # grid 4 x 16 x 16 tokens = 4 x 2 x 2 tiles
    cfg = NablaAttention(p=0.3, sta_window=(1, 3, 1))
    got = cfg.block_map(q, k, NablaGrid(4, 16, 16))
    want = nabla_block_map(q, k, 0.3) | sta_block_map(4, 2, 2, (1, 3, 1))
    assert torch.equal(got, want)
    assert isinstance(get_attention_backend("nabla"), NablaAttention)
    with pytest.raises(CineforgeError, match="grid"):
        cfg.block_map(q, k, NablaGrid(2, 16, 16))
    with pytest.raises(CineforgeError, match="divisible"):
        cfg.block_map(q[:, :, :768], k[:, :, :768], NablaGrid(4, 12, 16))
    for bad in ({"p": 0.0}, {"p": 1.5}, {"sta_window": (2, 3, 3)}, {"tile": (1, 4, 4)}):
        with pytest.raises(ValueError):
            NablaAttention(**bad)


def test_training_path_gradients_equal_reference_autograd():
    q, k, v = _qkv()
    cfg = NablaAttention(p=0.5, sta_window=(1, 1, 1))
    grid = NablaGrid(2, 16, 16)
    bmap = _brute_block_map(q, k, 0.5) | sta_block_map(2, 2, 2, (1, 1, 1))
    assert not bmap.all()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    dense_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    w = torch.randn(q.shape)
    (cfg(*leaves, mask=grid) * w).sum().backward()
    (nabla_reference(*ref_leaves, bmap) * w).sum().backward()
    (F.scaled_dot_product_attention(*dense_leaves) * w).sum().backward()
    for a, b, c in zip(leaves, ref_leaves, dense_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0)
        assert (a.grad - c.grad).abs().max() > 1e-2  # sparse backward differs from dense


def test_no_grad_cpu_calls_dispatch_to_flex(monkeypatch):
    calls = []

    def spy(q, k, v, block_map, block):
        calls.append(block_map)
        return nabla_reference(q, k, v, block_map, block)

    monkeypatch.setattr(nabla_module, "flex_block_sparse", spy)
    q, k, v = _qkv()
    cfg, grid = NablaAttention(p=0.5), NablaGrid(2, 16, 16)
    with torch.no_grad():
        cfg(q, k, v, mask=grid)
    cfg(q, k, v, mask=grid)  # grad mode on but nothing requires grad: flex as well
    assert len(calls) == 2 and torch.equal(calls[0], cfg.block_map(q, k, grid))
    cfg(q.requires_grad_(), k, v, mask=grid)  # needs gradients on CPU: the SDPA path
    assert len(calls) == 2


def test_compiled_flex_is_really_sparse():
    """One compile (~20 s cold on CPU): compiled flex skips the blocks the map drops."""
    q, k, v = _qkv(L=1024)
    grid = NablaGrid(4, 16, 16)
    cfg = NablaAttention(p=0.5, sta_window=(1, 3, 1))
    bmap = cfg.block_map(q, k, grid)
    assert 0.2 < bmap.float().mean() < 0.8
    dense = F.scaled_dot_product_attention(q, k, v)
    sparse = nabla_module.flex_block_sparse(q, k, v, bmap, 64)
    with torch.no_grad():
        full = NablaAttention(p=1.0, sta_window=None)(q, k, v, mask=grid)
    torch.testing.assert_close(sparse, nabla_reference(q, k, v, bmap), atol=1e-5, rtol=0)
    assert (sparse - dense).abs().max() > 0.1
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=0)
    assert expand_block_map(bmap).shape == (1, 2, 1024, 1024)
