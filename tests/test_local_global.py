"""Local / global attention: against dense attention and a brute-force per-group reference,
item by item in packs, and as the backend of the Wan and Kandinsky 5 DiTs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.dit import K5_DIT_TINY, Kandinsky5DiT
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.models import attention as registry
from cineforge.models.attention import get_attention_backend, register_attention_backend
from cineforge.models.local_global import AttentionGroups, LocalGlobalAttention, group_members

HEADS, DIM = 2, 8


def _qkv(batch: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, length, DIM, generator=g) for _ in range(3)]


def _in_group(kind: str, grid, groups, group, t: int, h: int, w: int) -> bool:
    """Membership from coordinates alone: the definition, not the index arithmetic."""
    coords = (t, h, w)
    if kind == "local":
        return all(c // (n // g) == a for c, n, g, a in zip(coords, grid, groups, group,
                                                              strict=True))
    return all(c % g == a for c, g, a in zip(coords, groups, group, strict=True))


def brute_force(q, k, v, kind, grid, groups, text: int) -> torch.Tensor:
    """One item ``[visual (raster), text]``: for every group, gather its visual tokens and
    the text, run dense attention, write the visual outputs back; text from group 0."""
    T, H, W = grid
    out = torch.full_like(q, float("nan"))
    text_pos = list(range(T * H * W, T * H * W + text))
    for n, group in enumerate(itertools.product(*(range(g) for g in groups))):
        members = [t * H * W + h * W + w for t in range(T) for h in range(H) for w in range(W)
                   if _in_group(kind, grid, groups, group, t, h, w)]
        index = torch.tensor(members + text_pos)
        o = F.scaled_dot_product_attention(q[:, :, index], k[:, :, index], v[:, :, index])
        out[:, :, members] = o[:, :, : len(members)]
        if n == 0:
            out[:, :, text_pos] = o[:, :, len(members):]
    assert not out.isnan().any()
    return out


@pytest.mark.parametrize("kind", ["local", "global"])
def test_one_group_is_dense_attention(kind):
    grid, text = (3, 4, 6), 5
    q, k, v = _qkv(2, 72 + text)
    got = LocalGlobalAttention((1, 1, 1))(q, k, v, mask=AttentionGroups(kind, (grid,), (text,)))
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["local", "global"])
@pytest.mark.parametrize("groups", [(1, 2, 2), (2, 1, 2)])
def test_four_groups_equal_the_brute_force_reference(kind, groups):
    grid, text = (2, 4, 6), 3
    q, k, v = _qkv(2, 48 + text, seed=1)
    mask = AttentionGroups(kind, (grid,), (text,))
    got = LocalGlobalAttention(groups)(q, k, v, mask=mask)
    want = brute_force(q, k, v, kind, grid, groups, text)
    assert (got - want).abs().max() <= 1e-6
    assert (got - F.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-2  # not dense


def test_local_windows_and_global_strides():
    """1 x 2 x 2 groups of a 1 x 4 x 4 grid: quadrants (local), 2-strided lattices (global)."""
    local = group_members((1, 4, 4), (1, 2, 2), "local")
    glob = group_members((1, 4, 4), (1, 2, 2), "global")
    assert local[0].tolist() == [0, 1, 4, 5] and local[3].tolist() == [10, 11, 14, 15]
    assert glob[0].tolist() == [0, 2, 8, 10] and glob[1].tolist() == [1, 3, 9, 11]
    for members in (local, glob):  # each token in exactly one group
        assert sorted(members.flatten().tolist()) == list(range(16))


@pytest.mark.parametrize("kind", ["local", "global"])
def test_a_pack_is_grouped_item_by_item(kind):
    """Two items of different grids and text lengths in one sequence (groups of unequal
    length: the padded path) equal each item run alone."""
    backend = LocalGlobalAttention((1, 2, 2))
    items = [((2, 4, 4), 3), ((1, 2, 6), 5)]
    alone = []
    for n, (grid, text) in enumerate(items):
        q, k, v = _qkv(1, grid[0] * grid[1] * grid[2] + text, seed=10 + n)
        alone.append((q, k, v, backend(q, k, v, mask=AttentionGroups(kind, (grid,), (text,)))))
    q, k, v = (torch.cat([a[i] for a in alone], dim=2) for i in range(3))
    mask = AttentionGroups(kind, tuple(g for g, _ in items), tuple(m for _, m in items))
    got = backend(q, k, v, mask=mask)
    torch.testing.assert_close(got, torch.cat([a[3] for a in alone], dim=2), atol=1e-6, rtol=0)


def test_other_masks_are_plain_sdpa_and_bad_grids_are_refused():
    q, k, v = _qkv(1, 16)
    keep = torch.rand(16, 16, generator=torch.Generator().manual_seed(2)) > 0.3
    keep.fill_diagonal_(True)
    backend = get_attention_backend("local_global")
    assert backend.groups == (1, 2, 2)
    torch.testing.assert_close(backend(q, k, v, mask=keep),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=keep))
    with pytest.raises(CineforgeError, match="divisible by the groups"):
        backend(q, k, v, mask=AttentionGroups("local", ((1, 4, 3),), (4,)))
    with pytest.raises(CineforgeError, match="describes 20 tokens"):
        backend(q, k, v, mask=AttentionGroups("global", ((1, 4, 4),), (4,)))


@pytest.fixture
def recording():
    """A local/global backend registered under a test name that records each call's kind."""
    kinds: list[str] = []

    class Recording(LocalGlobalAttention):
        def __call__(self, q, k, v, mask=None):
            if isinstance(mask, AttentionGroups):
                kinds.append(mask.kind)
            return super().__call__(q, k, v, mask=mask)

    before = dict(registry._BACKENDS)
    register_attention_backend("test_local_global_recording", Recording((1, 2, 2)))
    yield kinds
    registry._BACKENDS.pop("test_local_global_recording")
    assert before == registry._BACKENDS


def _wan(attention: str) -> WanDiT:
    g = torch.Generator().manual_seed(3)
    config = dataclasses.replace(WAN_DIT_TINY, attention=attention, num_layers=4)
    model = WanDiT(config).init_weights(g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_wan_alternates_local_and_global_by_config(recording):
    """Blocks 0, 2 local, 1, 3 global; the grouped model differs from dense SDPA; packed
    items equal ``forward`` per item under the same grouping."""
    g = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    t = torch.tensor([0.6])
    grouped, dense = _wan("test_local_global_recording"), _wan("sdpa")
    with torch.no_grad():
        out = grouped(x, t, ctx)
        assert recording == ["local", "global", "local", "global"]
        assert (out - dense(x, t, ctx)).abs().max() > 1e-3
        x2, ctx2 = torch.randn(16, 1, 4, 8, generator=g), torch.randn(5, 32, generator=g)
        packed = grouped.forward_packed([x[0], x2], torch.tensor([0.6, 0.3]), [ctx[0], ctx2])
        alone = grouped(x2[None], torch.tensor([0.3]), ctx2[None])[0]
    torch.testing.assert_close(packed[0], out[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1], alone, atol=1e-5, rtol=0)


def test_kandinsky5_takes_local_global_by_config(recording):
    config = dataclasses.replace(K5_DIT_TINY, attention="test_local_global_recording")
    torch.manual_seed(5)
    model = Kandinsky5DiT(config).eval()
    for m in model.modules():  # the release zero-inits nothing here; make every path count
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.2)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 1, 8, 8, generator=g)
    text, pooled = torch.randn(1, 4, 32, generator=g), torch.randn(1, 16, generator=g)
    with torch.no_grad():
        grouped = model(x, 0.5, text, pooled)
        dense = Kandinsky5DiT(dataclasses.replace(config, attention="sdpa")).eval()
        dense.load_state_dict(model.state_dict())
        assert (grouped - dense(x, 0.5, text, pooled)).abs().max() > 1e-4
    assert recording == ["local", "global"]
