"""Wan 2.1 DiT: parity with diffusers, official/diffusers key maps, RoPE, FLOPs, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from torch.utils.flop_counter import FlopCounterMode

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import (
    WAN_DIT_1_3B,
    WAN_DIT_14B,
    WAN_DIT_TINY,
    WanDiT,
    WanDiTConfig,
    pad_context,
    wan_dit_flops,
)
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.models.attention import register_attention_backend
from cineforge.models.rope import apply_rope, rope_cis_3d, wan_rope_axis_dims
from cineforge.weights.keymap import check_state_dict, load_strict

PARITY_TOL = 1e-4


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _diffusers_tiny() -> WanTransformer3DModel:
    """The tiny oracle, with every parameter perturbed so no norm is the identity."""
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    g = _gen(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ref


def _ours_from(state_dict: dict, keymap, config: WanDiTConfig = WAN_DIT_TINY) -> WanDiT:
    with torch.device("meta"):
        model = WanDiT(config)
    return load_strict(model, keymap.convert(state_dict)).eval()


@pytest.mark.parametrize(
    ("shape", "times", "text_len"),
    [((1, 16, 5, 16, 16), [0.37], 8), ((2, 16, 3, 16, 24), [0.9, 0.05], 16)],
)
def test_parity_with_diffusers(shape, times, text_len):
    ref = _diffusers_tiny()
    ours = _ours_from(ref.state_dict(), WAN_DIT_FROM_DIFFUSERS)
    g = _gen(2)
    x = torch.randn(shape, generator=g)
    context = pad_context(torch.randn(shape[0], 8, 32, generator=g), text_len)
    t = torch.tensor(times)
    with torch.no_grad():
        expected = ref(x, t * 1000, context, return_dict=False)[0]
        got = ours(x, t, context)
    assert got.shape == expected.shape == shape
    assert expected.abs().max() > 1.0  # a real signal, not a near-zero output
    assert (got - expected).abs().max().item() <= PARITY_TOL


def _official_t2v_shapes(c: WanDiTConfig) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a Wan 2.1 T2V release file, written out from the official
    module tree (wan/modules/model.py: WanModel, WanAttentionBlock, Head), not from ours."""
    d, f = c.dim, c.ffn_dim

    def linear(name: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}

    shapes = {
        "patch_embedding.weight": (d, c.in_channels, *c.patch_size),
        "patch_embedding.bias": (d,),
        **linear("text_embedding.0", c.text_dim, d),
        **linear("text_embedding.2", d, d),
        **linear("time_embedding.0", c.freq_dim, d),
        **linear("time_embedding.2", d, d),
        **linear("time_projection.1", d, 6 * d),
    }
    for i in range(c.num_layers):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes |= linear(f"{b}.{attn}.{proj}", d, d)
            shapes[f"{b}.{attn}.norm_q.weight"] = (d,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (d,)
        shapes[f"{b}.norm3.weight"] = (d,)  # cross-attention LayerNorm (cross_attn_norm=True)
        shapes[f"{b}.norm3.bias"] = (d,)
        shapes |= linear(f"{b}.ffn.0", d, f) | linear(f"{b}.ffn.2", f, d)
        shapes[f"{b}.modulation"] = (1, 6, d)
    shapes |= linear("head.head", d, c.out_channels * math.prod(c.patch_size))
    shapes["head.modulation"] = (1, 2, d)
    return shapes


@pytest.mark.parametrize(
    ("config", "n_params"), [(WAN_DIT_1_3B, 1_418_996_800), (WAN_DIT_14B, 14_288_491_584)]
)
def test_official_map_fits_release_layout(config, n_params):
    shapes = _official_t2v_shapes(config)
    assert len(shapes) == 12 + 27 * config.num_layers + 3
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        model = WanDiT(config)
    check_state_dict(model, WAN_DIT_FROM_OFFICIAL.convert(official))
    assert sum(math.prod(s) for s in shapes.values()) == n_params  # "1.3B" and "14B"


def test_official_dimensions():
    assert (WAN_DIT_1_3B.dim, WAN_DIT_1_3B.ffn_dim, WAN_DIT_1_3B.num_heads) == (1536, 8960, 12)
    assert (WAN_DIT_14B.dim, WAN_DIT_14B.ffn_dim, WAN_DIT_14B.num_heads) == (5120, 13824, 40)
    assert (WAN_DIT_1_3B.num_layers, WAN_DIT_14B.num_layers) == (30, 40)
    for c in (WAN_DIT_1_3B, WAN_DIT_14B):
        assert (c.freq_dim, c.text_dim, c.in_channels, c.out_channels) == (256, 4096, 16, 16)
        assert (c.eps, c.cross_attn_norm, c.text_len, c.head_dim) == (1e-6, True, 512, 128)


def test_official_map_tiny_forward_matches_diffusers_conversion():
    """Tiny official-format weights: ours via our map == diffusers via its own converter."""
    g = _gen(3)
    official = {
        k: 0.2 * torch.randn(s, generator=g) for k, s in _official_t2v_shapes(WAN_DIT_TINY).items()
    }
    ours = _ours_from(official, WAN_DIT_FROM_OFFICIAL)
    ref = _diffusers_tiny()
    ref.load_state_dict(convert_wan_transformer_to_diffusers(dict(official)), strict=True)
    x = torch.randn(1, 16, 3, 8, 12, generator=g)
    context = torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([0.6])
    with torch.no_grad():
        got = ours(x, t, context)
        expected = ref(x, t * 1000, context, return_dict=False)[0]
    assert (got - expected).abs().max().item() <= PARITY_TOL


def test_official_map_accepts_comfyui_prefix():
    sd = {
        "model.diffusion_model.blocks.3.norm3.bias": torch.zeros(2),
        "head.modulation": torch.zeros(1, 2, 2),
    }
    assert set(WAN_DIT_FROM_OFFICIAL.convert(sd)) == {"blocks.3.norm3.bias", "head.modulation"}


@pytest.mark.parametrize(
    ("keymap", "key"),
    [
        (WAN_DIT_FROM_OFFICIAL, "blocks.0.cross_attn.k_img.weight"),  # I2V weights
        (WAN_DIT_FROM_OFFICIAL, "img_emb.proj.1.weight"),
        (WAN_DIT_FROM_OFFICIAL, "blocks.0.norm2.weight"),  # FFN norm has no weights
        (WAN_DIT_FROM_DIFFUSERS, "blocks.0.attn2.add_k_proj.weight"),
        (WAN_DIT_FROM_DIFFUSERS, "blocks.0.self_attn.q.weight"),  # official name
        (WAN_DIT_FROM_DIFFUSERS, "rope.freqs_cos"),
    ],
)
def test_maps_reject_unknown_keys(keymap, key):
    with pytest.raises(CineforgeError, match="match no rule"):
        keymap.convert({"patch_embedding.weight": torch.zeros(1), key: torch.zeros(1)})


def test_strict_load_rejects_missing_key():
    sd = WAN_DIT_FROM_DIFFUSERS.convert(_diffusers_tiny().state_dict())
    del sd["blocks.1.modulation"]
    with torch.device("meta"):
        model = WanDiT(WAN_DIT_TINY)
    with pytest.raises(CineforgeError, match="missing"):
        load_strict(model, sd)


def test_rope_axis_split_and_relative_positions():
    assert wan_rope_axis_dims(128) == (44, 42, 42)
    assert wan_rope_axis_dims(16) == (8, 4, 4)
    cis = rope_cis_3d((4, 4, 5), wan_rope_axis_dims(16))
    assert cis.shape == (80, 8)
    g = _gen(4)
    q, k = torch.randn(2, 1, 1, 16, generator=g).unbind(0)
    # q.k after rotation depends only on the offset: (t,h,w)=(0,0,0)->(1,2,3) vs (2,1,1)->(3,3,4)
    idx = lambda t, h, w: (t * 4 + h) * 5 + w  # noqa: E731
    qa, kb = apply_rope(q, cis[idx(0, 0, 0)][None]), apply_rope(k, cis[idx(1, 2, 3)][None])
    qc, kd = apply_rope(q, cis[idx(2, 1, 1)][None]), apply_rope(k, cis[idx(3, 3, 4)][None])
    torch.testing.assert_close((qa * kb).sum(), (qc * kd).sum())
    torch.testing.assert_close(qa.norm(), q.norm())


def test_rope_step_places_tokens_at_fractional_positions():
    """``step``: token i of an axis sits at i * step. At step 0.5 on rows and columns, token
    (t, 2i, 2j) gets the rotation of token (t, i, j) at step 1, bit for bit; step 1 is the
    release's integer grid."""
    dims = wan_rope_axis_dims(16)
    half = rope_cis_3d((2, 4, 6), dims, step=(1.0, 0.5, 0.5)).view(2, 4, 6, -1)
    whole = rope_cis_3d((2, 2, 3), dims).view(2, 2, 3, -1)
    assert torch.equal(half[:, ::2, ::2], whole)
    assert not torch.equal(half[:, 1::2, 1::2], whole)
    assert torch.equal(rope_cis_3d((2, 2, 3), dims, step=(1.0, 1.0, 1.0)), whole.view(12, -1))
    with pytest.raises(ValueError, match="positive"):
        rope_cis_3d((2, 2, 3), dims, step=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="rope_step"):
        dataclasses.replace(WAN_DIT_TINY, rope_step=(1.0, -1.0, 1.0))


def _math_attention(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


def test_flops_estimate_matches_counted_flops():
    register_attention_backend("test_wan_dit_math", _math_attention)
    config = dataclasses.replace(WAN_DIT_TINY, attention="test_wan_dit_math")
    model = WanDiT(config).eval()
    x, context = torch.randn(2, 16, 3, 8, 12), torch.randn(2, 8, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([0.2, 0.7]), context)
    estimate = wan_dit_flops(config, tuple(x.shape), 8)
    assert abs(estimate - counter.get_total_flops()) / estimate < 0.01


def test_init_weights_is_reproducible_and_zero_velocity():
    a = WanDiT(WAN_DIT_TINY).init_weights(_gen(5))
    b = WanDiT(WAN_DIT_TINY).init_weights(_gen(5))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    out = a(torch.randn(1, 16, 1, 4, 4), torch.tensor(0.5), torch.randn(1, 3, 32))
    assert out.shape == (1, 16, 1, 4, 4) and out.abs().max() == 0


def test_bad_inputs_and_configs_raise():
    model = WanDiT(WAN_DIT_TINY)
    t, context = torch.tensor([0.5]), torch.randn(1, 4, 32)
    with pytest.raises(CineforgeError, match="divisible by the patch"):
        model(torch.randn(1, 16, 1, 5, 4), t, context)
    with pytest.raises(CineforgeError, match="text tokens"):
        model(torch.randn(1, 16, 1, 4, 4), t, torch.randn(1, 4, 31))
    with pytest.raises(CineforgeError, match="shorten the prompt"):
        pad_context(torch.randn(1, 20, 32), 16)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        dataclasses.replace(WAN_DIT_TINY, num_heads=3)
    with pytest.raises(CineforgeError, match="unknown attention backend"):
        WanDiT(dataclasses.replace(WAN_DIT_TINY, attention="nope"))


def test_bf16_weights_and_autocast_stay_close_to_fp32():
    model = WanDiT(WAN_DIT_TINY).eval()
    g = _gen(6)
    x, context = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 8, 32, generator=g)
    with torch.no_grad():
        full = model(x, 0.3, context)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, torch.tensor([0.3, 0.3]), context)
        half = model.to(torch.bfloat16)(x, 0.3, context)
    assert mixed.dtype == half.dtype == torch.float32  # velocity comes back in x's dtype
    assert full.abs().max() > 1.0
    assert (mixed - full).abs().max() < 0.05 and (half - full).abs().max() < 0.05
