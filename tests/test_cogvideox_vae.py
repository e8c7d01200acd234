"""CogVideoX VAE: parity with diffusers' AutoencoderKLCogVideoX, frame batches, tiling, key map.

Measured on the build machine (fp32, tiny config, every parameter perturbed, 1x3x25x16x24 so
both walks take three frame batches): encode max |diff| vs diffusers ~1.4e-6 (mean and
log-variance), decode ~8e-7; with diffusers' spatial tiling (2 x 3 tiles of 24x32 pixels,
two frame batches each) ~2e-6 encode, ~5e-6 decode.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox.vae import (
    COGVIDEOX_VAE,
    COGVIDEOX_VAE_2B,
    COGVIDEOX_VAE_5B,
    COGVIDEOX_VAE_TINY,
    DIFFUSERS_TILING,
    CausalConv,
    CogVideoXTiling,
    CogVideoXVAE,
    CogVideoXVAEConfig,
    decoded_frames,
    frame_batches,
)
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.models.causal3d import CausalCache
from cineforge.weights.keymap import load_strict
from oracles import perturb

TOL = 1e-4
TILING = CogVideoXTiling(tile=(3, 4), overlap=(1, 2))  # 24x32-pixel tiles


def diffusers_vae(config: CogVideoXVAEConfig) -> AutoencoderKLCogVideoX:
    return AutoencoderKLCogVideoX(
        block_out_channels=config.block_out_channels,
        latent_channels=config.latent_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        norm_eps=config.norm_eps,
        temporal_compression_ratio=config.temporal_compression_ratio,
        scaling_factor=config.scaling_factor,
    )


def ours_like(ref: AutoencoderKLCogVideoX, config: CogVideoXVAEConfig) -> CogVideoXVAE:
    with torch.device("meta"):
        ours = CogVideoXVAE(config)
    return load_strict(ours, COGVIDEOX_VAE_FROM_DIFFUSERS.convert(ref.state_dict())).eval()


def diffusers_tiling(ref: AutoencoderKLCogVideoX, tiling: CogVideoXTiling) -> dict[str, tuple]:
    """Switch diffusers' tiling on with ``tiling``'s sizes; return the integers it derives."""
    (th, tw), (oh, ow) = tiling.tile, tiling.overlap
    ref.enable_tiling(
        tile_sample_min_height=8 * th,
        tile_sample_min_width=8 * tw,
        tile_overlap_factor_height=oh / th,
        tile_overlap_factor_width=ow / tw,
    )
    fh, fw = ref.tile_overlap_factor_height, ref.tile_overlap_factor_width
    return {  # the strides, blends and crops of diffusers' tiled_decode and tiled_encode
        "tile": (ref.tile_latent_min_height, ref.tile_latent_min_width),
        "decode stride": (int(ref.tile_latent_min_height * (1 - fh)),
                          int(ref.tile_latent_min_width * (1 - fw))),
        "decode blend": (int(ref.tile_sample_min_height * fh), int(ref.tile_sample_min_width * fw)),
        "encode stride": (int(ref.tile_sample_min_height * (1 - fh)),
                          int(ref.tile_sample_min_width * (1 - fw))),
        "encode blend": (int(ref.tile_latent_min_height * fh), int(ref.tile_latent_min_width * fw)),
    }  # fmt: skip


def our_tiling_numbers(tiling: CogVideoXTiling) -> dict[str, tuple[int, int]]:
    keep = tuple(t - o for t, o in zip(tiling.tile, tiling.overlap, strict=True))
    return {
        "tile": tiling.tile,
        "decode stride": keep,
        "decode blend": tuple(8 * o for o in tiling.overlap),
        "encode stride": tuple(8 * k for k in keep),
        "encode blend": tiling.overlap,
    }


@pytest.fixture(scope="module")
def pair():
    """diffusers' tiny AutoencoderKLCogVideoX and ours with the same (perturbed) weights."""
    torch.manual_seed(0)
    ref = perturb(diffusers_vae(COGVIDEOX_VAE_TINY), seed=1, scale=0.05)
    return ref, ours_like(ref, COGVIDEOX_VAE_TINY)


@pytest.fixture(scope="module")
def video():
    """25 frames: encoder batches of 9 + 8 + 8 frames, decoder batches of 3 + 2 + 2 latents."""
    return torch.rand(1, 3, 25, 16, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1


@pytest.fixture(scope="module")
def reference(pair, video):
    """diffusers' posterior of ``video`` and its decoding of the posterior mean."""
    ref, _ = pair
    with torch.no_grad():
        posterior = ref.encode(video).latent_dist
        return posterior.mean, posterior.logvar, ref.decode(posterior.mean).sample


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- config


def test_config_matches_release():
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX()  # its defaults are CogVideoX-2B's vae/config.json
    c = ref.config
    assert COGVIDEOX_VAE is COGVIDEOX_VAE_2B
    assert COGVIDEOX_VAE.block_out_channels == tuple(c.block_out_channels) == (128, 256, 256, 512)
    assert (COGVIDEOX_VAE.latent_channels, COGVIDEOX_VAE.layers_per_block) == (16, 3)
    assert (COGVIDEOX_VAE.norm_num_groups, COGVIDEOX_VAE.norm_eps) == (32, 1e-6)
    assert COGVIDEOX_VAE.temporal_compression_ratio == c.temporal_compression_ratio == 4
    assert not c.use_quant_conv and not c.use_post_quant_conv
    assert COGVIDEOX_VAE_2B.scaling_factor == c.scaling_factor == 1.15258426
    assert COGVIDEOX_VAE_5B.scaling_factor == 0.7
    assert COGVIDEOX_VAE_5B.sample_frames_batch == ref.num_sample_frames_batch_size == 8
    assert COGVIDEOX_VAE_5B.latent_frames_batch == ref.num_latent_frames_batch_size == 2
    assert (COGVIDEOX_VAE.spatial_ratio, COGVIDEOX_VAE.temporal_ratio) == (8, 4)
    assert (COGVIDEOX_VAE_TINY.spatial_ratio, COGVIDEOX_VAE_TINY.temporal_ratio) == (8, 4)
    ref.enable_tiling()  # diffusers' default tiles are DIFFUSERS_TILING
    assert diffusers_tiling(ref, DIFFUSERS_TILING) == our_tiling_numbers(DIFFUSERS_TILING)
    assert (ref.tile_sample_min_height, ref.tile_sample_min_width) == (240, 360)


@pytest.mark.parametrize(
    "change",
    [
        {"block_out_channels": (8, 10, 16, 16)},  # not divisible by 4 groups
        {"temporal_compression_ratio": 3},
        {"temporal_compression_ratio": 16},  # more than the 3 downsampling levels
        {"scaling_factor": 0.0},
        {"sample_frames_batch": 6},
        {"latent_frames_batch": 3},
    ],
)
def test_config_rejects_inconsistent_values(change):
    with pytest.raises(ValueError):
        dataclasses.replace(COGVIDEOX_VAE_TINY, **change)


@pytest.mark.parametrize("change", [{"tile": (1, 4)}, {"overlap": (3, 1)}, {"overlap": (-1, 0)}])
def test_tiling_rejects_inconsistent_values(change):
    with pytest.raises(ValueError):
        dataclasses.replace(TILING, **change)


# ---------------------------------------------------------------- building blocks


def test_causal_conv_starts_from_copies_of_the_first_frame():
    conv = CausalConv(4, 5)
    x = torch.randn(2, 4, 9, 6, 7, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    expected = F.conv3d(F.pad(padded, (1, 1, 1, 1)), conv.weight, conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-5)
        cache = CausalCache()  # in batches, the later ones continue from the cache
        parts = [conv(x[:, :, a:b], cache) for a, b in ((0, 1), (1, 5), (5, 9))]
    torch.testing.assert_close(torch.cat(parts, dim=2), expected, rtol=0, atol=1e-5)


def test_frame_batches_follow_diffusers():
    def spans(frames, size):
        return [(s.start, s.stop) for s in frame_batches(frames, size)]

    assert spans(25, 8) == [(0, 9), (9, 17), (17, 25)]
    assert spans(13, 8) == [(0, 13)]
    assert spans(1, 8) == [(0, 1)]
    assert spans(13, 2) == [(0, 3), *((i, i + 2) for i in range(3, 13, 2))]
    assert spans(4, 2) == [(0, 2), (2, 4)]
    assert [decoded_frames(n, 4) for n in (1, 2, 3)] == [1, 8, 9]


# ---------------------------------------------------------------- parity with diffusers


def test_encode_matches_diffusers(pair, video, reference):
    _, ours = pair
    mu_ref, logvar_ref, _ = reference
    mu, logvar = ours.encode_moments(video)
    assert mu.shape == (1, 16, 7, 2, 3)
    assert max_diff(mu, mu_ref) <= TOL
    assert max_diff(logvar, logvar_ref) <= TOL
    scaled = ours.encode(video)  # latents as the CogVideoX pipelines scale them
    assert max_diff(scaled, mu_ref * COGVIDEOX_VAE_TINY.scaling_factor) <= TOL


def test_sampled_encode_follows_the_generator(pair):
    _, ours = pair
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    a = ours.encode(video, sample=True, generator=torch.Generator().manual_seed(5))
    mu, logvar = ours.encode_moments(video)
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    expected = (mu + torch.exp(0.5 * logvar) * noise) * COGVIDEOX_VAE_TINY.scaling_factor
    assert max_diff(a, expected) <= 1e-6
    assert max_diff(a, ours.encode(video)) > 1e-3


@pytest.mark.parametrize("frames", [7, 4])  # odd: 1 + 4 (T - 1) frames; even: 4 T
def test_decode_matches_diffusers(pair, reference, frames):
    ref, ours = pair
    z = reference[0][:, :, :frames]
    with torch.no_grad():
        expected = reference[2] if frames == 7 else ref.decode(z).sample
        out = ours.decode_raw(z)
    assert out.shape == (1, 3, 25 if frames == 7 else 16, 16, 24)
    assert max_diff(out, expected) <= TOL
    clamped = ours.decode(z * COGVIDEOX_VAE_TINY.scaling_factor)
    assert max_diff(clamped, expected.clamp(-1, 1)) <= TOL


def test_single_frame_matches_diffusers(pair):
    """An image: one frame in, one latent frame out, one frame back."""
    ref, ours = pair
    image = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        mu_ref = ref.encode(image).latent_dist.mean
        expected = ref.decode(mu_ref).sample
        mu, _ = ours.encode_moments(image)
        assert mu.shape == (1, 16, 1, 2, 2)
        assert max_diff(mu, mu_ref) <= TOL
        assert max_diff(ours.decode_raw(mu_ref), expected) <= TOL


def test_frame_batches_change_the_result(pair, video, reference):
    """GroupNorms span a batch: one whole-clip batch gives other values (so the parity above
    holds only because the batches match diffusers')."""
    ref, ours = pair
    whole = ours_like(ref, dataclasses.replace(COGVIDEOX_VAE_TINY, sample_frames_batch=64,
                                               latent_frames_batch=64))  # fmt: skip
    mu_ref, _, frames_ref = reference
    assert max_diff(whole.encode_moments(video)[0], mu_ref) > 1e-3
    with torch.no_grad():
        assert max_diff(whole.decode_raw(mu_ref), frames_ref) > 1e-3


def test_tiling_matches_diffusers(pair):
    ref, ours = pair
    # 17 frames: two frame batches in every tile; 2 x 3 tiles, the last ones cut short
    video = torch.rand(1, 3, 17, 32, 40, generator=torch.Generator().manual_seed(3)) * 2 - 1
    try:
        assert diffusers_tiling(ref, TILING) == our_tiling_numbers(TILING)
        with torch.no_grad():
            mu_ref = ref.encode(video).latent_dist.mean
            frames_ref = ref.decode(mu_ref).sample
    finally:
        ref.disable_tiling()
    mu, _ = ours.encode_moments(video, tiling=TILING)
    assert mu.shape == (1, 16, 5, 4, 5)
    assert max_diff(mu, mu_ref) <= TOL
    assert max_diff(mu, ours.encode_moments(video)[0]) > 1e-3  # tiles took effect
    with torch.no_grad():
        frames = ours.decode_raw(mu_ref, tiling=TILING)
        assert max_diff(frames, frames_ref) <= TOL
        assert max_diff(frames, ours.decode_raw(mu_ref)) > 1e-3
    # ``tile`` (the shared decode option) is square tiles of the same scheme
    square = CogVideoXTiling(tile=(3, 3), overlap=(1, 1))
    scaled = mu_ref * COGVIDEOX_VAE_TINY.scaling_factor
    with torch.no_grad():
        expected = ours.decode_raw(ours.denormalize(scaled), tiling=square).clamp(-1, 1)
    assert max_diff(ours.decode(scaled, tile=3, tile_overlap=1), expected) == 0


def test_gradients_flow_through_moments_and_decode_raw(pair):
    _, ours = pair
    video = torch.rand(1, 3, 5, 16, 16, requires_grad=True)
    mu, logvar = ours.moments(video)
    (ours.decode_raw(mu).square().mean() + logvar.mean()).backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert ours.encoder.conv_in.weight.grad is not None
    ours.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- key map


def test_full_size_diffusers_state_dict_loads_strictly_into_5b():
    with torch.device("meta"):
        ref = AutoencoderKLCogVideoX(scaling_factor=0.7)  # CogVideoX-5B's vae/config.json
        ours = CogVideoXVAE(COGVIDEOX_VAE_5B)
    state = ref.state_dict()
    converted = COGVIDEOX_VAE_FROM_DIFFUSERS.convert(state)
    load_strict(ours, converted)  # raises on missing / unexpected keys and shape mismatches
    assert len(converted) == len(state) == 436
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 215_583_907


def test_unknown_or_missing_keys_are_rejected(pair):
    ref, _ = pair
    state = dict(ref.state_dict())
    with pytest.raises(CineforgeError, match="match no rule"):
        COGVIDEOX_VAE_FROM_DIFFUSERS.convert({**state, "quant_conv.weight": torch.zeros(1)})
    del state["decoder.norm_out.conv_b.conv.bias"]
    with torch.device("meta"):
        ours = CogVideoXVAE(COGVIDEOX_VAE_TINY)
    with pytest.raises(CineforgeError, match="1 missing"):
        load_strict(ours, COGVIDEOX_VAE_FROM_DIFFUSERS.convert(state))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(1, 3, 6, 16, 16), (1, 3, 5, 12, 16), (1, 4, 5, 16, 16)])
def test_bad_video_shapes_raise(pair, shape):
    with pytest.raises(CineforgeError):
        pair[1].encode(torch.zeros(shape))


def test_bad_latents_and_tiles_raise(pair):
    _, ours = pair
    with pytest.raises(CineforgeError):
        ours.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(CineforgeError, match="tile"):
        ours.decode(torch.zeros(1, 16, 1, 2, 2), tile=1)
    with pytest.raises(CineforgeError, match="tile"):
        ours.decode(torch.zeros(1, 16, 1, 2, 2), tile=2, tiling=TILING)
