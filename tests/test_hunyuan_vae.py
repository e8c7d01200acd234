"""HunyuanVideo VAE: parity with diffusers' AutoencoderKLHunyuanVideo, tiling, key maps, errors.

Measured on the build machine (fp32, tiny config, 1x3x9x64x64, every parameter perturbed):
encode and decode max |diff| vs diffusers 0.0 (same operations in the same order); with
diffusers' temporal + spatial tiling at small tile sizes ~3e-7 encode, ~3e-6 decode.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.hunyuan_vae import (
    DIFFUSERS_TILING,
    HUNYUAN_VAE,
    HUNYUAN_VAE_TINY,
    HunyuanTiling,
    HunyuanVAE,
    HunyuanVAEConfig,
)
from cineforge.families.kandinsky5.hunyuan_vae_keys import (
    HUNYUAN_VAE_FROM_DIFFUSERS,
    HUNYUAN_VAE_FROM_OFFICIAL,
)
from cineforge.weights.keymap import check_state_dict, load_strict
from oracles import perturb

TOL = 1e-4
WHOLE = HunyuanTiling(frames=1000, frame_stride=4)  # one window for any test clip


def diffusers_vae(config: HunyuanVAEConfig) -> AutoencoderKLHunyuanVideo:
    return AutoencoderKLHunyuanVideo(
        block_out_channels=config.block_out_channels,
        latent_channels=config.latent_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        spatial_compression_ratio=config.spatial_ratio,
        temporal_compression_ratio=config.temporal_ratio,
        mid_block_add_attention=config.mid_attention,
        scaling_factor=config.scaling_factor,
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP threads
    waiting for each other made these tests 20x slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    """diffusers' tiny VAE (every parameter perturbed) and ours with the same weights."""
    torch.manual_seed(0)
    ref = perturb(diffusers_vae(HUNYUAN_VAE_TINY), seed=1)
    with torch.device("meta"):
        ours = HunyuanVAE(HUNYUAN_VAE_TINY)
    load_strict(ours, HUNYUAN_VAE_FROM_DIFFUSERS.convert(ref.state_dict()))
    return ref, ours.eval()


@pytest.fixture(scope="module")
def video():
    return torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1


@pytest.fixture(scope="module")
def reference(pair, video):
    """diffusers' posterior of ``video`` and its decoding of the posterior mean."""
    ref, _ = pair
    with torch.no_grad():
        posterior = ref.encode(video).latent_dist
        return posterior, ref.decode(posterior.mode()).sample


def test_encode_moments_match_diffusers(pair, video, reference):
    _, ours = pair
    posterior, _ = reference
    mu, logvar = ours.encode_moments(video)
    assert mu.shape == (1, 16, 3, 8, 8)
    assert max_diff(mu, posterior.mean) <= TOL
    assert max_diff(logvar, posterior.logvar) <= TOL


def test_encode_is_scaled_like_kandinsky5(pair, video, reference):
    """Latents are ``z * scaling_factor``, as Kandinsky 5's pipelines scale them."""
    ref, ours = pair
    posterior, _ = reference
    sf = ref.config.scaling_factor
    assert ours.config.scaling_factor == sf
    assert max_diff(ours.encode(video), posterior.mode() * sf) <= TOL
    drawn = ours.encode(video, sample=True, generator=torch.Generator().manual_seed(5))
    expected = posterior.sample(generator=torch.Generator().manual_seed(5)) * sf
    assert max_diff(drawn, expected) <= TOL
    assert max_diff(drawn, posterior.mode() * sf) > 1e-2  # the draw is not the mean


def test_decode_matches_diffusers(pair, reference):
    ref, ours = pair
    posterior, frames = reference
    mu = posterior.mode()
    with torch.no_grad():
        raw = ours.decode_raw(mu)
    assert raw.shape == (1, 3, 9, 64, 64)
    assert max_diff(raw, frames) <= TOL
    decoded = ours.decode(mu * ref.config.scaling_factor)
    assert max_diff(decoded, frames.clamp(-1, 1)) <= TOL


def test_norms_span_the_clip_so_chunks_differ(pair, reference):
    """Why the walk is whole-clip: GroupNorm statistics cover all frames, so decoding the
    first latent frame alone is NOT the first frame of the whole decode."""
    _, ours = pair
    posterior, frames = reference
    with torch.no_grad():
        alone = ours.decode_raw(posterior.mode()[:, :, :1])
    assert max_diff(alone, frames[:, :, :1]) > 1e-2


def diffusers_tiling(ref: AutoencoderKLHunyuanVideo, tiling: HunyuanTiling) -> None:
    ref.enable_tiling(
        tile_sample_min_height=tiling.size,
        tile_sample_min_width=tiling.size,
        tile_sample_stride_height=tiling.stride,
        tile_sample_stride_width=tiling.stride,
        tile_sample_min_num_frames=tiling.frames,
        tile_sample_stride_num_frames=tiling.frame_stride,
    )
    ref.use_tiling = tiling.size is not None  # temporal tiles are always on in diffusers


@pytest.mark.parametrize(
    ("tiling", "shape"),
    [
        (HunyuanTiling(frames=8, frame_stride=4), (1, 3, 17, 16, 16)),  # time only
        (HunyuanTiling(frames=8, frame_stride=4, size=16, stride=8), (1, 3, 9, 32, 32)),
        (DIFFUSERS_TILING, (1, 3, 21, 16, 16)),  # diffusers untouched: 16-frame windows
    ],
)
def test_tiling_matches_diffusers(pair, tiling, shape):
    """Temporal (+ spatial) tiles with overlaps, blended exactly as diffusers does."""
    torch.manual_seed(0)
    ref = diffusers_vae(HUNYUAN_VAE_TINY).eval()
    ref.load_state_dict(pair[0].state_dict())
    if tiling is not DIFFUSERS_TILING:
        diffusers_tiling(ref, tiling)
    _, ours = pair
    x = torch.rand(shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        mu_ref = ref.encode(x).latent_dist.mode()
        mu, _ = ours.encode_moments(x, tiling=tiling)
        assert max_diff(mu, mu_ref) <= TOL
        assert max_diff(mu, ours.encode_moments(x, tiling=WHOLE)[0]) > 1e-2  # tiles took effect
        frames_ref = ref.decode(mu_ref).sample
        frames = ours.decode_raw(mu_ref, tiling=tiling)
        assert max_diff(frames, frames_ref) <= TOL
        assert max_diff(frames, ours.decode_raw(mu_ref, tiling=WHOLE)) > 1e-2


def test_gradients_flow_through_moments_and_decode_raw(pair):
    _, ours = pair
    x = torch.zeros(1, 3, 5, 16, 16, requires_grad=True)
    mu, _ = ours.moments(x)
    ours.decode_raw(mu).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffusers_map_covers_full_size_model():
    """Every key of the full-size AutoencoderKLHunyuanVideo maps onto ours, shapes equal;
    the release's keys (diffusers' names, optionally prefixed ``vae.``) too."""
    with torch.device("meta"):
        ref = diffusers_vae(HUNYUAN_VAE)
        ours = HunyuanVAE(HUNYUAN_VAE)
    sd = ref.state_dict()
    converted = HUNYUAN_VAE_FROM_DIFFUSERS.convert(sd)
    check_state_dict(ours, converted)
    official = HUNYUAN_VAE_FROM_OFFICIAL.convert({f"vae.{k}": v for k, v in sd.items()})
    assert official.keys() == converted.keys()
    assert HUNYUAN_VAE_FROM_OFFICIAL.convert(sd).keys() == converted.keys()


def test_unknown_key_is_rejected(pair):
    sd = dict(pair[0].state_dict())
    sd["encoder.mid_block.attentions.0.to_qkv.weight"] = torch.zeros(1)
    with pytest.raises(CineforgeError, match="match no rule"):
        HUNYUAN_VAE_FROM_DIFFUSERS.convert(sd)


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 8, 64, 64), (1, 3, 9, 60, 64), (1, 4, 9, 64, 64), (3, 9, 64, 64), (1, 3, 0, 64, 64)],
)
def test_bad_video_shapes_raise(pair, shape):
    with pytest.raises(CineforgeError, match="VAE"):
        pair[1].encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 8, 3, 8, 8), (16, 3, 8, 8), (1, 16, 0, 8, 8)])
def test_bad_latent_shapes_raise(pair, shape):
    with pytest.raises(CineforgeError, match="latents shaped"):
        pair[1].decode(torch.zeros(shape))


@pytest.mark.parametrize(
    "changes",
    [
        dict(norm_num_groups=3),
        dict(temporal_ratio=8),
        dict(spatial_ratio=6),
        dict(block_out_channels=(8, 8)),
        dict(scaling_factor=0.0),
    ],
)
def test_config_is_validated(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(HUNYUAN_VAE_TINY, **changes)


@pytest.mark.parametrize(
    "changes", [dict(frames=10), dict(frame_stride=20), dict(size=30), dict(size=64, stride=72)]
)
def test_tiling_is_validated(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(HunyuanTiling(), **changes)
