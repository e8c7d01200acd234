"""FLUX.1 VAE (Kandinsky 5 Image Lite's): parity with diffusers' AutoencoderKL, latent
normalisation, tiled decoding, key maps of the release and of diffusers, errors.

Measured on the build machine (fp32, tiny config with every parameter perturbed, batch 2,
2 frames of 32x48): max |diff| vs diffusers 7e-7 for encode (mu, logvar), 3e-6 for decode
(outputs up to ~3.6). Tiled decode vs whole decode: see ``test_tiled_decode``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from cineforge.errors import CineforgeError
from cineforge.families.kandinsky5.flux_vae import (
    FLUX1_VAE,
    FLUX_VAE,
    FLUX_VAE_TINY,
    FluxVAE,
    FluxVAEConfig,
)
from cineforge.families.kandinsky5.flux_vae_keys import (
    FLUX_VAE_FROM_DIFFUSERS,
    FLUX_VAE_FROM_OFFICIAL,
)
from cineforge.weights.keymap import load_strict
from oracles import perturb

TOL = 1e-4


def diffusers_config(config: FluxVAEConfig) -> dict:
    n = len(config.dim_mult)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(config.widths),
        layers_per_block=config.num_res_blocks,
        latent_channels=config.z_dim,
        norm_num_groups=config.norm_groups,
        scaling_factor=config.scaling_factor,
        shift_factor=config.shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def official_state_dict(config: FluxVAEConfig, make) -> dict[str, torch.Tensor]:
    """Keys and shapes of the release's ``ae.safetensors`` (black-forest-labs/flux
    ``src/flux/modules/autoencoder.py``), written from its module structure, independently
    of our model: ``down.I.block.J``, ``mid.block_1/attn_1/block_2`` (1x1-conv attention),
    decoder ``up.I`` numbered by resolution level and built from the deepest level."""
    sd: dict[str, torch.Tensor] = {}

    def conv(name, c_in, c_out, k):
        sd[f"{name}.weight"] = make(c_out, c_in, k, k)
        sd[f"{name}.bias"] = make(c_out)

    def norm(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = make(c), make(c)

    def block(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def middle(name, c):
        block(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{part}", c, c, 1)
        block(f"{name}.block_2", c, c)

    ch, mult, nrb, z = config.base_dim, config.dim_mult, config.num_res_blocks, config.z_dim
    n = len(mult)
    conv("encoder.conv_in", 3, ch, 3)
    c_in = ch
    for i in range(n):
        for j in range(nrb):
            block(f"encoder.down.{i}.block.{j}", c_in, ch * mult[i])
            c_in = ch * mult[i]
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", c_in, c_in, 3)
    middle("encoder.mid", c_in)
    norm("encoder.norm_out", c_in)
    conv("encoder.conv_out", c_in, 2 * z, 3)
    conv("decoder.conv_in", z, c_in, 3)
    middle("decoder.mid", c_in)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            block(f"decoder.up.{i}.block.{j}", c_in, ch * mult[i])
            c_in = ch * mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c_in, c_in, 3)
    norm("decoder.norm_out", c_in)
    conv("decoder.conv_out", c_in, 3, 3)
    return sd


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def frames_first(x: torch.Tensor) -> torch.Tensor:
    """``B, C, T, H, W`` -> ``B*T, C, H, W`` (diffusers' images, frame-major per sample)."""
    return x.transpose(1, 2).flatten(0, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads on a busy 2-core machine. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    """diffusers' tiny AutoencoderKL (every parameter perturbed) and ours, same weights."""
    torch.manual_seed(0)
    ref = perturb(AutoencoderKL(**diffusers_config(FLUX_VAE_TINY)), seed=1)
    with torch.device("meta"):
        ours = FluxVAE(FLUX_VAE_TINY)
    load_strict(ours, FLUX_VAE_FROM_DIFFUSERS.convert(ref.state_dict()))
    return ref, ours.eval()


@pytest.fixture(scope="module")
def video():
    """Batch 2, 2 frames, non-square 32x48."""
    return torch.rand(2, 3, 2, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1


def test_encode_moments_match_diffusers_frame_by_frame(pair, video):
    ref, ours = pair
    with torch.no_grad():
        posterior = ref.encode(frames_first(video)).latent_dist
    mu, logvar = ours.encode_moments(video)
    assert mu.shape == logvar.shape == (2, 16, 2, 4, 6)
    assert max_diff(frames_first(mu), posterior.mean) <= TOL
    assert max_diff(frames_first(logvar), posterior.logvar) <= TOL


def test_decode_matches_diffusers(pair, video):
    ref, ours = pair
    z = torch.randn(2, 16, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref.decode(frames_first(z)).sample
        raw = ours.decode_raw(z)
    assert raw.shape == (2, 3, 2, 32, 48)
    assert max_diff(frames_first(raw), expected) <= TOL
    assert raw.abs().max() > 1  # so the clamp below is exercised
    latents = ours.normalize(z)
    assert max_diff(frames_first(ours.decode(latents)), expected.clamp(-1, 1)) <= TOL


def test_latents_are_scaled_like_kandinsky5(pair, video):
    """Kandinsky 5 (release and diffusers' Kandinsky5T2IPipeline) encodes
    ``latent_dist * scaling_factor`` and decodes ``latents / scaling_factor``: no shift."""
    ref, ours = pair
    image = video[:, :, :1]
    with torch.no_grad():
        posterior = ref.encode(image[:, :, 0]).latent_dist
        sf = ref.config.scaling_factor
        assert sf == FLUX_VAE.scaling_factor == 0.3611 and FLUX_VAE.shift_factor == 0.0
        latents = ours.encode(image)
        assert latents.shape == (2, 16, 1, 4, 6)
        assert max_diff(latents[:, :, 0], posterior.mode() * sf) <= TOL
        drawn = ours.encode(image, sample=True, generator=torch.Generator().manual_seed(5))
        expected = posterior.sample(generator=torch.Generator().manual_seed(5)) * sf
        assert max_diff(drawn[:, :, 0], expected) <= TOL
        assert max_diff(drawn, latents) > 1e-2  # the draw is not the mean
        frames = ref.decode(latents[:, :, 0] / sf).sample.clamp(-1, 1)
        assert max_diff(ours.decode(latents)[:, :, 0], frames) <= TOL


def test_flux1_shift_normalises_like_the_release(pair, video):
    """FLUX.1's own convention: ``(z - 0.1159) * 0.3611`` and back."""
    _, ours = pair
    flux1 = FluxVAE(dataclasses.replace(FLUX_VAE_TINY, shift_factor=FLUX1_VAE.shift_factor))
    flux1.load_state_dict(ours.state_dict())
    mu, _ = ours.encode_moments(video)
    latents = flux1.encode(video)
    assert FLUX1_VAE.shift_factor == 0.1159
    assert max_diff(latents, (mu - 0.1159) * 0.3611) <= 1e-6
    assert max_diff(flux1.decode(latents), ours.decode(mu * 0.3611)) <= TOL


def test_tiled_decode(pair):
    """Tiles of at most ``tile`` cells cover the latent and blend in the overlaps; output
    only one tile reaches is that tile's decoding; the rest stays within a bound of whole
    decoding. The bound is loose because each tile has its own GroupNorm and attention
    statistics and these weights are random (measured: relative RMS error 0.159 for
    8-cell tiles overlapping by 2, 0.048 for 12-cell tiles overlapping by 4)."""
    _, ours = pair
    latents = torch.randn(1, 16, 1, 12, 16, generator=torch.Generator().manual_seed(6))
    whole = ours.decode(latents)
    assert max_diff(ours.decode(latents, tile=16), whole) == 0.0  # one tile = whole
    seen: list[torch.Size] = []
    hook = ours.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        tiled = ours.decode(latents, tile=8, tile_overlap=2)
    finally:
        hook.remove()
    assert tiled.shape == whole.shape == (1, 3, 1, 96, 128)
    assert [s[-2:] for s in seen] == [(8, 8)] * 6  # 2 rows x 3 columns, one at a time
    corner = ours.decode(latents[..., :8, :8])  # the only tile over pixels 0:32 x 0:48
    assert max_diff(tiled[..., :32, :48], corner[..., :32, :48]) <= 1e-6

    def error(x: torch.Tensor) -> float:
        return ((x - whole).norm() / whole.norm()).item()

    larger = ours.decode(latents, tile=12, tile_overlap=4)
    assert 1e-3 < error(tiled) <= 0.2
    assert error(larger) <= 0.06


def test_gradients_flow_through_moments_and_decode_raw(pair):
    _, ours = pair
    x = torch.zeros(1, 3, 2, 16, 16, requires_grad=True)
    mu, _ = ours.moments(x)
    ours.decode_raw(mu).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_official_map_agrees_with_diffusers_converter():
    """The release layout through our map equals the release layout through diffusers'
    own single-file converter, then our diffusers map: tensor for tensor."""
    g = torch.Generator().manual_seed(7)
    official = official_state_dict(FLUX_VAE_TINY, lambda *s: torch.randn(s, generator=g))
    ours = FLUX_VAE_FROM_OFFICIAL.convert(official)
    via_diffusers = FLUX_VAE_FROM_DIFFUSERS.convert(
        convert_ldm_vae_checkpoint(official, diffusers_config(FLUX_VAE_TINY))
    )
    assert ours.keys() == via_diffusers.keys()
    for key, value in ours.items():
        assert torch.equal(value, via_diffusers[key]), key
    model = load_strict(FluxVAE(FLUX_VAE_TINY), ours)
    # the release numbers decoder levels in reverse, and its attention is 1x1 convs
    up = official["decoder.up.3.upsample.conv.weight"]
    assert torch.equal(model.decoder.up[0].resample.conv.weight, up)
    q = official["encoder.mid.attn_1.q.weight"]
    assert torch.equal(model.encoder.mid.attn.to_q.weight, q[:, :, 0, 0])


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_key_maps_load_the_full_size_model(layout):
    """Every key of the full-size file (real names and shapes, meta tensors) loads strictly
    into ``FluxVAE(FLUX_VAE)`` built on the meta device: no missing/unexpected keys."""
    if layout == "official":
        sd = official_state_dict(FLUX_VAE, lambda *s: torch.empty(s, device="meta"))
        keymap = FLUX_VAE_FROM_OFFICIAL
        assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    else:
        with torch.device("meta"):
            sd = AutoencoderKL(**diffusers_config(FLUX_VAE)).state_dict()
        keymap = FLUX_VAE_FROM_DIFFUSERS
    assert len(sd) == 244 and sum(v.numel() for v in sd.values()) == 83_819_683
    with torch.device("meta"):
        model = FluxVAE(FLUX_VAE)
    load_strict(model, keymap.convert(sd))
    assert model.encoder.conv_out.weight.shape == (32, 512, 3, 3)
    assert model.decoder.up[3].res[0].shortcut.weight.shape == (128, 256, 1, 1)


def test_unknown_key_is_rejected(pair):
    sd = dict(pair[0].state_dict())
    sd["quant_conv.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CineforgeError, match="match no rule"):
        FLUX_VAE_FROM_DIFFUSERS.convert(sd)


@pytest.mark.parametrize(
    "shape", [(1, 3, 1, 60, 64), (1, 4, 1, 64, 64), (3, 64, 64), (1, 3, 0, 64, 64)]
)
def test_bad_video_shapes_raise(pair, shape):
    with pytest.raises(CineforgeError, match="VAE"):
        pair[1].encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 8, 1, 8, 8), (16, 1, 8, 8), (1, 16, 1, 0, 8)])
def test_bad_latent_shapes_raise(pair, shape):
    with pytest.raises(CineforgeError, match="latents shaped"):
        pair[1].decode(torch.zeros(shape))


@pytest.mark.parametrize(("tile", "overlap"), [(1, None), (8, 8), (8, -1)])
def test_bad_tiles_raise(pair, tile, overlap):
    with pytest.raises(CineforgeError, match="tile"):
        pair[1].decode(torch.zeros(1, 16, 1, 8, 8), tile=tile, tile_overlap=overlap)


@pytest.mark.parametrize(
    "changes",
    [dict(norm_groups=3), dict(dim_mult=()), dict(z_dim=0), dict(scaling_factor=0.0)],
)
def test_config_is_validated(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(FLUX_VAE_TINY, **changes)


def test_ratios_match_the_pipelines_contract():
    for config in (FLUX_VAE, FLUX_VAE_TINY):
        assert (config.spatial_ratio, config.temporal_ratio) == (8, 1)
        assert config.z_dim == config.latent_channels == 16
