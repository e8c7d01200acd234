"""Kandinsky 5.0 DiT: parity with diffusers, official/diffusers key maps, text mask, errors."""

from __future__ import annotations

import dataclasses
import math
import types

import diffusers.models.attention_dispatch as diffusers_dispatch
import diffusers.models.transformers.transformer_kandinsky as diffusers_k5
import pytest
import torch
import torch.nn.functional as F
from diffusers import Kandinsky5T2VPipeline, Kandinsky5Transformer3DModel
from torch.nn.attention import flex_attention as flex
from torch.utils.flop_counter import FlopCounterMode

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.dit import (
    K5_DIT_IMAGE_LITE,
    K5_DIT_TINY,
    K5_DIT_VIDEO_LITE,
    K5_DIT_VIDEO_PRO,
    Kandinsky5DiT,
    Kandinsky5DiTConfig,
    kandinsky5_dit_flops,
)
from cineforge.families.kandinsky5.dit_keys import K5_DIT_FROM_DIFFUSERS, K5_DIT_FROM_OFFICIAL
from cineforge.weights.keymap import check_state_dict, load_strict

PARITY_TOL = 1e-4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _TorchWithoutBF16:
    """diffusers' Kandinsky 5 rotary code casts q and k to bfloat16 even in an fp32 model
    (``.to(torch.bfloat16)`` in ``Kandinsky5AttnProcessor``); seen through this proxy, its
    module's ``torch.bfloat16`` is float32, so the oracle runs in fp32 throughout."""

    bfloat16 = torch.float32

    def __getattr__(self, name: str):
        return getattr(torch, name)


@pytest.fixture
def fp32_oracle(monkeypatch):
    monkeypatch.setattr(diffusers_k5, "torch", _TorchWithoutBF16())


def _diffusers_tiny(visual_cond: bool = False, **attention) -> Kandinsky5Transformer3DModel:
    """The tiny oracle, every parameter perturbed (its modulation layers start at zero);
    ``attention``: its ``attention_*`` settings (they hold no weights)."""
    with torch.random.fork_rng():  # diffusers initialises from the global RNG
        torch.manual_seed(0)
        ref = Kandinsky5Transformer3DModel(
            in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=16,
            patch_size=(1, 2, 2), model_dim=64, ff_dim=128, num_text_blocks=1,
            num_visual_blocks=2, axes_dims=(8, 12, 12), visual_cond=visual_cond, **attention,
        ).eval()
    g = _gen(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ref


def _ours_from(state_dict: dict, keymap, config: Kandinsky5DiTConfig) -> Kandinsky5DiT:
    with torch.device("meta"):
        model = Kandinsky5DiT(config)
    return load_strict(model, keymap.convert(state_dict)).eval()


def _reference(ref, x, t, text, pooled, visual_in=None, rope_scale=(1.0, 1.0, 1.0),
               sparse_params=None):
    """diffusers' forward with what its pipeline passes: channels-last input, timestep
    t * 1000, RoPE positions 0..n-1 per axis of the patch grid and 0..L-1 for the text."""
    _, _, frames, height, width = x.shape
    visual_in = x if visual_in is None else visual_in
    out = ref(
        visual_in.permute(0, 2, 3, 4, 1), text, t * 1000, pooled,
        visual_rope_pos=[torch.arange(frames), torch.arange(height // 2), torch.arange(width // 2)],
        text_rope_pos=torch.arange(text.shape[1]), scale_factor=rope_scale,
        sparse_params=sparse_params, return_dict=False,
    )
    return out.permute(0, 4, 1, 2, 3)


def _inputs(shape, text_len, seed=2):
    g = _gen(seed)
    x = torch.randn(shape, generator=g)
    text = torch.randn(shape[0], text_len, 32, generator=g)
    return x, text, torch.randn(shape[0], 16, generator=g)


@pytest.mark.parametrize(
    ("shape", "times", "text_len", "rope_scale"),
    [
        ((1, 16, 5, 16, 16), [0.37], 8, (1.0, 1.0, 1.0)),
        ((2, 16, 3, 8, 12), [0.9, 0.05], 6, (1.0, 2.0, 2.0)),
    ],
)
def test_parity_with_diffusers(fp32_oracle, shape, times, text_len, rope_scale):
    ref = _diffusers_tiny()
    ours = _ours_from(ref.state_dict(), K5_DIT_FROM_DIFFUSERS, K5_DIT_TINY)
    x, text, pooled = _inputs(shape, text_len)
    t = torch.tensor(times)
    with torch.no_grad():
        expected = _reference(ref, x, t, text, pooled, rope_scale=rope_scale)
        got = ours(x, t, text, pooled, rope_scale=rope_scale)
    assert got.shape == expected.shape == shape
    assert expected.abs().max() > 1.0  # a real signal, not a near-zero output
    assert (got - expected).abs().max().item() <= PARITY_TOL


def test_diffusers_bf16_rotary_cast_is_the_remaining_difference():
    """Without the proxy, the oracle's bf16 q/k cast shows as ~1e-3 at these weights."""
    ref = _diffusers_tiny()
    ours = _ours_from(ref.state_dict(), K5_DIT_FROM_DIFFUSERS, K5_DIT_TINY)
    x, text, pooled = _inputs((1, 16, 3, 8, 8), 8)
    t = torch.tensor([0.5])
    with torch.no_grad():
        diff = (ours(x, t, text, pooled) - _reference(ref, x, t, text, pooled)).abs().max()
    assert PARITY_TOL < diff.item() < 2e-2


def test_parity_with_diffusers_visual_cond(fp32_oracle):
    ref = _diffusers_tiny(visual_cond=True)
    config = dataclasses.replace(K5_DIT_TINY, visual_cond=True)
    ours = _ours_from(ref.state_dict(), K5_DIT_FROM_DIFFUSERS, config)
    x, text, pooled = _inputs((2, 16, 3, 8, 12), 5)
    cond = torch.randn(2, 16, 3, 8, 12, generator=_gen(7))
    mask = torch.zeros(2, 1, 3, 8, 12)
    mask[:, :, 0] = 1.0  # the I2V layout: condition on frame 0
    t = torch.tensor([0.6, 0.2])
    with torch.no_grad():
        expected = _reference(ref, x, t, text, pooled, torch.cat([x, cond, mask], dim=1))
        got = ours(x, t, text, pooled, torch.cat([cond, mask], dim=1))
        zeros = _reference(ref, x, t, text, pooled, torch.cat([x, 0 * cond, 0 * mask], dim=1))
        got_none = ours(x, t, text, pooled)
    assert got.shape == (2, 16, 3, 8, 12)
    assert (got - expected).abs().max().item() <= PARITY_TOL
    assert (got_none - zeros).abs().max().item() <= PARITY_TOL
    assert (expected - zeros).abs().max() > 0.1  # the condition channels matter


def test_text_mask_equals_unpadded_text():
    """A right-padded batch with text_mask equals each prompt alone without padding (the
    release drops padded tokens)."""
    model = Kandinsky5DiT(K5_DIT_TINY).eval()
    x, text, pooled = _inputs((2, 16, 2, 4, 6), 7, seed=3)
    lengths = [7, 4]
    text_mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    padded = text * text_mask[..., None]
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        batch = model(x, t, padded, pooled, text_mask=text_mask)
        alone = [model(x[i:i + 1], t[i], text[i:i + 1, :n], pooled[i:i + 1])
                 for i, n in enumerate(lengths)]
        unmasked = model(x, t, padded, pooled)
    for i in range(2):
        torch.testing.assert_close(batch[i:i + 1], alone[i], atol=1e-5, rtol=1e-5)
    assert (unmasked[1] - batch[1]).abs().max() > 1e-3  # padding does take part otherwise


def _official_shapes(c: Kandinsky5DiTConfig) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a release checkpoint, written out from the release's module
    tree (kandinsky/models/dit.py: DiffusionTransformer3D, TransformerEncoderBlock,
    TransformerDecoderBlock; nn.py: TimeEmbeddings, TextEmbeddings, VisualEmbeddings,
    Modulation, MultiheadSelfAttentionEnc/Dec, MultiheadCrossAttention, FeedForward,
    OutLayer), not from ours."""
    d, head = c.model_dim, sum(c.axes_dims)
    in_dim = (2 * c.in_channels + 1 if c.visual_cond else c.in_channels) * math.prod(c.patch_size)

    def linear(name: str, n_in: int, n_out: int, bias: bool = True) -> dict:
        return {f"{name}.weight": (n_out, n_in)} | ({f"{name}.bias": (n_out,)} if bias else {})

    def attention(name: str) -> dict:
        shapes = {}
        for proj in ("to_query", "to_key", "to_value", "out_layer"):
            shapes |= linear(f"{name}.{proj}", d, d)
        return shapes | {f"{name}.query_norm.weight": (head,), f"{name}.key_norm.weight": (head,)}

    def feed_forward(name: str) -> dict:
        return linear(f"{name}.in_layer", d, c.ff_dim, False) | linear(
            f"{name}.out_layer", c.ff_dim, d, False)

    shapes = (
        linear("time_embeddings.in_layer", d, c.time_dim)
        | linear("time_embeddings.out_layer", c.time_dim, c.time_dim)
        | linear("text_embeddings.in_layer", c.text_dim, d)
        | {"text_embeddings.norm.weight": (d,), "text_embeddings.norm.bias": (d,)}
        | linear("pooled_text_embeddings.in_layer", c.pooled_dim, c.time_dim)
        | {"pooled_text_embeddings.norm.weight": (c.time_dim,),
           "pooled_text_embeddings.norm.bias": (c.time_dim,)}
        | linear("visual_embeddings.in_layer", in_dim, d)
    )
    for i in range(c.num_text_blocks):
        b = f"text_transformer_blocks.{i}"
        shapes |= linear(f"{b}.text_modulation.out_layer", c.time_dim, 6 * d)
        shapes |= attention(f"{b}.self_attention") | feed_forward(f"{b}.feed_forward")
    for i in range(c.num_visual_blocks):
        b = f"visual_transformer_blocks.{i}"
        shapes |= linear(f"{b}.visual_modulation.out_layer", c.time_dim, 9 * d)
        shapes |= attention(f"{b}.self_attention") | attention(f"{b}.cross_attention")
        shapes |= feed_forward(f"{b}.feed_forward")
    shapes |= linear("out_layer.modulation.out_layer", c.time_dim, 2 * d)
    shapes |= linear("out_layer.out_layer", d, c.out_channels * math.prod(c.patch_size))
    return shapes


@pytest.mark.parametrize(
    ("config", "n_params"),
    [
        (K5_DIT_VIDEO_LITE, 2_007_702_848),  # "Video Lite, 2B"
        (K5_DIT_VIDEO_PRO, 19_311_325_248),  # "Video Pro, 19B"
        (K5_DIT_IMAGE_LITE, 6_022_080_576),  # "Image Lite, 6B"
    ],
)
def test_official_map_fits_release_layout(config, n_params):
    shapes = _official_shapes(config)
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        model = Kandinsky5DiT(config)
    check_state_dict(model, K5_DIT_FROM_OFFICIAL.convert(official))
    assert sum(math.prod(s) for s in shapes.values()) == n_params


def test_official_configs():
    lite, pro, image = K5_DIT_VIDEO_LITE, K5_DIT_VIDEO_PRO, K5_DIT_IMAGE_LITE
    assert (lite.model_dim, lite.ff_dim, lite.time_dim) == (1792, 7168, 512)
    assert (pro.model_dim, pro.ff_dim, pro.time_dim) == (4096, 16384, 1024)
    assert (image.model_dim, image.ff_dim, image.time_dim) == (2560, 10240, 512)
    assert [(c.num_text_blocks, c.num_visual_blocks) for c in (lite, pro, image)] == [
        (2, 32), (4, 60), (2, 50)]
    assert [c.axes_dims for c in (lite, pro, image)] == [(16, 24, 24)] + [(32, 48, 48)] * 2
    assert [c.num_heads for c in (lite, pro, image)] == [28, 32, 20]
    assert [c.visual_cond for c in (lite, pro, image)] == [True, True, False]
    assert [c.rope_scale for c in (lite, pro, image)] == [(1.0, 2.0, 2.0)] * 2 + [(1.0,) * 3]
    for c in (lite, pro, image):
        assert (c.in_channels, c.out_channels, c.text_dim, c.pooled_dim) == (16, 16, 3584, 768)
        assert (c.patch_size, c.timestep_scale, c.eps) == ((1, 2, 2), 1000.0, 1e-5)


def test_official_map_equals_diffusers_map_on_tiny_weights():
    official = {k: torch.randn(s, generator=_gen(4))
                for k, s in _official_shapes(K5_DIT_TINY).items()}
    assert set(official) == set(_diffusers_tiny().state_dict())  # the same names upstream
    a = _ours_from(official, K5_DIT_FROM_OFFICIAL, K5_DIT_TINY)
    b = _ours_from(official, K5_DIT_FROM_DIFFUSERS, K5_DIT_TINY)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("keymap", [K5_DIT_FROM_OFFICIAL, K5_DIT_FROM_DIFFUSERS])
@pytest.mark.parametrize(
    "key",
    [
        "text_transformer_blocks.0.cross_attention.to_query.weight",  # text blocks have none
        "visual_transformer_blocks.0.text_modulation.out_layer.weight",
        "visual_transformer_blocks.0.feed_forward.in_layer.bias",  # FFN has no biases
        "visual_rope_embeddings.args_0",  # non-persistent upstream, never in a file
        "visual_transformer_blocks.0.self_attention.to_query.lora_A.weight",
    ],
)
def test_maps_reject_unknown_keys(keymap, key):
    with pytest.raises(CineforgeError, match="match no rule"):
        keymap.convert({"out_layer.out_layer.bias": torch.zeros(1), key: torch.zeros(1)})


def test_prefixed_keys_official_map_only():
    sd = {"model.diffusion_model.visual_transformer_blocks.3.cross_attention.key_norm.weight":
          torch.zeros(2), "out_layer.out_layer.bias": torch.zeros(2)}
    assert set(K5_DIT_FROM_OFFICIAL.convert(sd)) == {
        "visual_transformer_blocks.3.cross_attention.key_norm.weight", "out_layer.out_layer.bias"}
    with pytest.raises(CineforgeError, match="match no rule"):
        K5_DIT_FROM_DIFFUSERS.convert(sd)


def test_strict_load_rejects_missing_key():
    sd = K5_DIT_FROM_DIFFUSERS.convert(_diffusers_tiny().state_dict())
    del sd["visual_transformer_blocks.1.visual_modulation.out_layer.bias"]
    with torch.device("meta"):
        model = Kandinsky5DiT(K5_DIT_TINY)
    with pytest.raises(CineforgeError, match="missing"):
        load_strict(model, sd)


def test_model_contract():
    model = Kandinsky5DiT(K5_DIT_TINY)
    blocks = getattr(model, Kandinsky5DiT.offload_blocks)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 2
    assert list(model.buffers()) == []  # nothing that a meta build would leave behind


def test_visual_self_attention_uses_configured_backend(monkeypatch):
    from cineforge.models import attention as registry

    calls = []

    def counting(q, k, v, mask=None):
        calls.append(tuple(q.shape))
        return registry.sdpa_attention(q, k, v, mask)

    monkeypatch.setitem(registry._BACKENDS, "test_k5_counting", counting)
    model = Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, attention="test_k5_counting"))
    x, text, pooled = _inputs((1, 16, 2, 4, 6), 5)
    with torch.no_grad():
        model(x, 0.5, text, pooled)
    assert calls == [(1, 2, 12, 32)] * 2  # visual self-attention only, B, H, L, D


def test_bad_inputs_and_configs_raise():
    model = Kandinsky5DiT(K5_DIT_TINY)
    x, text, pooled = _inputs((1, 16, 1, 4, 4), 3)
    with pytest.raises(CineforgeError, match="divisible by the patch"):
        model(torch.randn(1, 16, 1, 5, 4), 0.5, text, pooled)
    with pytest.raises(CineforgeError, match="text states"):
        model(x, 0.5, torch.randn(1, 3, 31), pooled)
    with pytest.raises(CineforgeError, match="pooled text vector"):
        model(x, 0.5, text, torch.randn(1, 15))
    with pytest.raises(CineforgeError, match="no visual condition"):
        model(x, 0.5, text, pooled, torch.zeros(1, 17, 1, 4, 4))
    cond_model = Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, visual_cond=True))
    with pytest.raises(CineforgeError, match="condition latent, then mask"):
        cond_model(x, 0.5, text, pooled, torch.zeros(1, 16, 1, 4, 4))
    with pytest.raises(CineforgeError, match="text_mask"):
        model(x, 0.5, text, pooled, text_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by the head size"):
        dataclasses.replace(K5_DIT_TINY, model_dim=48)
    with pytest.raises(ValueError, match="axes_dims"):
        dataclasses.replace(K5_DIT_TINY, axes_dims=(8, 12, 11))
    with pytest.raises(CineforgeError, match="unknown attention backend"):
        Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, attention="nope"))


def test_nabla_backend_gets_tile_ordered_tokens_and_grid(monkeypatch):
    """On a 2x16x16 token grid the STA window (11, 3, 3) spans every 8x8 tile, so NABLA is
    dense there: the output must equal SDPA's, which checks the tile reordering of tokens and
    RoPE and its inverse. CPU calls with gradients take NABLA's masked-SDPA path (no compile)."""
    from cineforge.models import attention as registry
    from cineforge.models.nabla import NablaAttention, NablaGrid

    grids = []

    class Spy(NablaAttention):
        def __call__(self, q, k, v, mask=None):
            grids.append(mask)
            return super().__call__(q, k, v, mask)

    monkeypatch.setitem(registry._BACKENDS, "test_k5_nabla", Spy())
    dense = Kandinsky5DiT(K5_DIT_TINY).eval()
    sparse = Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, attention="test_k5_nabla")).eval()
    sparse.load_state_dict(dense.state_dict())
    x, text, pooled = _inputs((1, 16, 2, 32, 32), 4, seed=8)
    x.requires_grad_(True)
    got = sparse(x, 0.4, text, pooled)
    expected = dense(x, 0.4, text, pooled)
    assert grids == [NablaGrid(2, 16, 16)] * 2  # visual self-attention only
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_nabla_matches_diffusers_nabla_where_sparse(fp32_oracle, monkeypatch):
    """Our NABLA DiT against diffusers' NABLA path, both block-sparse through compiled flex
    attention (eager flex ignores the block lists: it would be dense), on a grid where NABLA
    differs from dense. diffusers' settings go through its T2V pipeline's get_sparse_params
    (P, wT, wH, wW of the transformer config; STA map in tiles of 8 x 8 patches). An
    asymmetric window (wT 1, wH 1, wW 3) on 2 x 2 x 3 tiles catches swapped axes; the latent
    varies from tile to tile, as video does, so the block scores pick blocks by content."""
    from cineforge.models import attention as registry
    from cineforge.models import nabla as nabla_module
    from cineforge.models.nabla import NablaAttention

    p, window = 0.7, (1, 1, 3)
    ref = _diffusers_tiny(attention_type="nabla", attention_P=p, attention_wT=window[0],
                          attention_wH=window[1], attention_wW=window[2])
    ref.set_attention_backend("flex")  # diffusers' NABLA needs it
    compiled = torch.compile(flex.flex_attention)
    theirs = []

    def diffusers_flex(query, key, value, block_mask=None, **kwargs):
        if block_mask is None:  # text and cross-attention: dense, which SDPA computes
            return F.scaled_dot_product_attention(query, key, value, scale=kwargs["scale"])
        theirs.append(block_mask.to_dense())
        # diffusers passes one index tensor as both the partial and the full block list,
        # which inductor's CPU code cannot compile: the full list goes in as a copy
        block_mask = flex.BlockMask.from_kv_blocks(
            block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks,
            block_mask.full_kv_indices.clone(), BLOCK_SIZE=block_mask.BLOCK_SIZE, mask_mod=None)
        return compiled(query, key, value, block_mask=block_mask, **kwargs)

    monkeypatch.setattr(diffusers_dispatch, "flex_attention", types.SimpleNamespace(
        flex_attention=diffusers_flex, BlockMask=flex.BlockMask,
        create_block_mask=flex.create_block_mask))
    ours_maps = []
    flex_block_sparse = nabla_module.flex_block_sparse

    def ours_flex(q, k, v, block_map, block):
        ours_maps.append(block_map.expand(*q.shape[:2], -1, -1))
        return flex_block_sparse(q, k, v, block_map, block)

    monkeypatch.setattr(nabla_module, "flex_block_sparse", ours_flex)
    monkeypatch.setitem(registry._BACKENDS, "test_k5_nabla", NablaAttention(p, window))
    sparse = _ours_from(ref.state_dict(), K5_DIT_FROM_DIFFUSERS,
                        dataclasses.replace(K5_DIT_TINY, attention="test_k5_nabla"))
    dense = _ours_from(ref.state_dict(), K5_DIT_FROM_DIFFUSERS, K5_DIT_TINY)

    x, text, pooled = _inputs((1, 16, 2, 32, 48), 8, seed=11)
    tiles = torch.randn(1, 16, 2, 2, 3, generator=_gen(12))  # one value per 8 x 8 patch tile
    x = x + 2.0 * tiles.repeat_interleave(16, 3).repeat_interleave(16, 4)
    pipe = types.SimpleNamespace(transformer=ref,
                                 fast_sta_nabla=Kandinsky5T2VPipeline.fast_sta_nabla)
    sparse_params = Kandinsky5T2VPipeline.get_sparse_params(
        pipe, x.permute(0, 2, 3, 4, 1), torch.device("cpu"))
    t = torch.tensor([0.5])
    with torch.no_grad():
        expected = _reference(ref, x, t, text, pooled, sparse_params=sparse_params)
        got = sparse(x, t, text, pooled)
        full = dense(x, t, text, pooled)
    assert len(theirs) == len(ours_maps) == 2  # visual self-attention of each block
    for a, b in zip(ours_maps, theirs, strict=True):
        assert torch.equal(a, b.bool())
        assert 0.3 < a.float().mean() < 0.9  # neither dense nor empty
    assert expected.abs().max() > 1.0 and (got - full).abs().max() > 0.1
    assert (got - expected).abs().max().item() <= PARITY_TOL


def test_bf16_weights_and_autocast_stay_close_to_fp32():
    model = Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, visual_cond=True)).eval()
    x, text, pooled = _inputs((2, 16, 3, 8, 8), 6, seed=9)
    mask = torch.arange(6)[None] < torch.tensor([[6], [3]])
    with torch.no_grad():
        full = model(x, 0.3, text, pooled, text_mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, torch.tensor([0.3, 0.3]), text, pooled, text_mask=mask)
        half = model.to(torch.bfloat16)(x, 0.3, text, pooled, text_mask=mask)
    assert mixed.dtype == half.dtype == torch.float32  # velocity comes back in x's dtype
    assert full.abs().max() > 1.0
    assert (mixed - full).abs().max() < 0.1 and (half - full).abs().max() < 0.1


def _math_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_flops_estimate_matches_counted_flops(monkeypatch):
    from cineforge.models import attention as registry

    monkeypatch.setitem(registry._BACKENDS, "sdpa", _math_attention)  # counted matmuls
    config = dataclasses.replace(K5_DIT_TINY, visual_cond=True)
    model = Kandinsky5DiT(config).eval()
    x, text, pooled = _inputs((2, 16, 3, 8, 12), 8, seed=10)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([0.2, 0.7]), text, pooled)
    estimate = kandinsky5_dit_flops(config, tuple(x.shape), 8)
    assert abs(estimate - counter.get_total_flops()) / estimate < 0.01
