"""Wan 2.2 TI2V-5B: the 48-channel VAE against diffusers' AutoencoderKLWan (is_residual),
its key maps, the text-to-video pipeline against diffusers' WanPipeline with
``expand_timesteps``, and full-size strict loads."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.families.wan.ti2v import WAN_DIT_TI2V_5B, WAN_DIT_TI2V_TINY
from cineforge.families.wan.ti2v_dit import WanTI2VDiT
from cineforge.families.wan.ti2v_pipeline import TextImageToVideo
from cineforge.families.wan.vae22 import (
    WAN_VAE_2_2,
    WAN_VAE_2_2_TINY,
    Wan22VAE,
    Wan22VAEConfig,
    patchify,
    unpatchify,
)
from cineforge.families.wan.vae22_keys import WAN22_VAE_FROM_DIFFUSERS, WAN22_VAE_FROM_OFFICIAL
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.keymap import check_state_dict, load_strict
from oracles import perturb
from wan22_oracles import diffusers_vae22, official_vae22_state_dict, reference_vae

TOL = 1e-4


def ours_from(ref: torch.nn.Module, config: Wan22VAEConfig = WAN_VAE_2_2_TINY) -> Wan22VAE:
    with torch.device("meta"):
        vae = Wan22VAE(config)
    load_strict(vae, WAN22_VAE_FROM_DIFFUSERS.convert(ref.state_dict()))
    return vae.eval()


@pytest.fixture(scope="module")
def pair():
    ref = reference_vae()
    return ref, ours_from(ref)


def test_config_matches_release():
    c = WAN_VAE_2_2
    assert (c.base_dim, c.decoder_base_dim, c.z_dim, c.dim_mult) == (160, 256, 48, (1, 2, 4, 4))
    assert (c.spatial_ratio, c.temporal_ratio) == (16, 4)
    assert c.temporal_downsample == (False, True, True)
    assert len(c.latents_mean) == len(c.latents_std) == 48
    assert (c.latents_mean[0], c.latents_std[-1]) == (-0.2289, 0.7744)


def test_patchify_round_trips_in_the_release_order():
    x = torch.arange(2 * 3 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 3, 1, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 1, 2, 2)
    # channel c*4 + r*2 + q holds pixel (2h + q, 2w + r): row offset q, column offset r
    assert p[0, 0 * 4 + 1 * 2 + 0, 0, 1, 0] == x[0, 0, 0, 2, 1]
    assert p[0, 1 * 4 + 0 * 2 + 1, 0, 0, 1] == x[0, 1, 0, 1, 2]
    assert torch.equal(unpatchify(p, 2), x)


def test_encode_matches_diffusers(pair):
    ref, ours = pair
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = ref.encode(video).latent_dist
        mu, logvar = ours.encode_moments(video)
    assert mu.shape == (1, 48, 2, 2, 2)
    err = max((mu - expected.mean).abs().max().item(),
              (logvar - expected.logvar).abs().max().item())
    print(f"Wan 2.2 VAE encode parity: max abs diff {err:.2e}")
    assert err <= TOL
    assert torch.allclose(ours.encode(video), (mu - ours._latent_stats(mu)[0])
                          / ours._latent_stats(mu)[1])


def test_decode_matches_diffusers(pair):
    ref, ours = pair
    z = torch.randn(1, 48, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.decode(z).sample
    got = ours.decode_raw(z).clamp(-1, 1)
    assert got.shape == expected.shape == (1, 3, 5, 32, 32)
    err = (got - expected).abs().max().item()
    print(f"Wan 2.2 VAE decode parity: max abs diff {err:.2e}")
    assert err <= TOL
    assert expected.std() > 0.05


def test_official_map_covers_the_tiny_model(pair):
    """The release's key names (written from its module tree) cover our tiny model exactly,
    with the same shapes."""
    ref, ours = pair
    official = official_vae22_state_dict(WAN_VAE_2_2_TINY, lambda *s: torch.empty(s))
    ours_keys = WAN22_VAE_FROM_OFFICIAL.convert(official)
    assert set(ours_keys) == set(ours.state_dict())
    for key, value in ours_keys.items():
        assert value.shape == ours.state_dict()[key].shape, key


def test_full_size_vae_loads_strictly_from_both_layouts():
    meta = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    with torch.device("meta"):
        vae = Wan22VAE(WAN_VAE_2_2)
        ref = diffusers_vae22(WAN_VAE_2_2)
    official = WAN22_VAE_FROM_OFFICIAL.convert(official_vae22_state_dict(WAN_VAE_2_2, meta))
    check_state_dict(vae, official)
    check_state_dict(vae, WAN22_VAE_FROM_DIFFUSERS.convert(ref.state_dict()))
    n = sum(p.numel() for p in vae.parameters())
    print(f"Wan 2.2 VAE parameters: {n:,}")
    assert n == sum(p.numel() for p in ref.parameters())


def test_full_size_dit_loads_strictly():
    with torch.device("meta"):
        dit = WanTI2VDiT(WAN_DIT_TI2V_5B)
        ref = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128,
            in_channels=48, out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336,
            num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    check_state_dict(dit, WAN_DIT_FROM_DIFFUSERS.convert(ref.state_dict()))
    official = {k: torch.empty(v.shape, device="meta") for k, v in dit.state_dict().items()}
    check_state_dict(dit, WAN_DIT_FROM_OFFICIAL.convert(official))
    n = sum(p.numel() for p in dit.parameters())
    print(f"TI2V-5B DiT parameters: {n:,}")
    assert 4.9e9 < n < 5.1e9


def test_unknown_vae_key_is_an_error():
    official = official_vae22_state_dict(WAN_VAE_2_2_TINY, lambda *s: torch.empty(s))
    official["encoder.downsamples.0.avg_shortcut.weight"] = torch.empty(1)
    with pytest.raises(CineforgeError, match="match no rule"):
        WAN22_VAE_FROM_OFFICIAL.convert(official)


def _pair(pipeline_class):
    """A diffusers Wan 2.2 TI2V pipeline on tiny random models, and ours with its weights."""
    torch.manual_seed(1)
    transformer = perturb(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=48,
        out_channels=48, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32), 1)
    vae = reference_vae()
    ref = pipeline_class(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
        expand_timesteps=True,
    )
    ref.set_progress_bar_config(disable=True)
    with torch.device("meta"):
        dit = WanTI2VDiT(WAN_DIT_TI2V_TINY)
    load_strict(dit, WAN_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    return ref, TextImageToVideo(Components(dit.eval(), ours_from(vae), text_encoder=None))


def _run(pipe: TextImageToVideo, cond: dict, uncond: dict, noise: torch.Tensor) -> torch.Tensor:
    """Our frames (B, T, C, H, W in [0, 1]) from 2 UniPC steps with guidance 5."""
    for step in pipe.sample(cond, uncond, noise, steps=2, guidance=5.0, shift=5.0):
        latents = step.x
    return ((pipe.decode(latents) + 1) / 2).permute(0, 2, 1, 3, 4)


def test_t2v_matches_diffusers_wan_pipeline_with_expand_timesteps():
    ref, pipe = _pair(WanPipeline)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)
    noise = torch.randn(1, 48, 2, 4, 4, generator=g)  # 5 frames of 64x64
    expected = ref(
        prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
        num_inference_steps=2, guidance_scale=5.0, height=64, width=64, num_frames=5,
        output_type="pt",
    ).frames
    ours = _run(pipe, {"context": cond}, {"context": uncond}, noise)
    assert ours.shape == expected.shape == (1, 5, 3, 64, 64)
    err = (ours - expected).abs().max().item()
    print(f"TI2V-5B t2v parity: max abs diff {err:.2e}")
    assert err <= TOL
    assert expected.std() > 0.01


def test_i2v_matches_diffusers_wan_image_to_video_with_expand_timesteps():
    ref, pipe = _pair(WanImageToVideoPipeline)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)
    noise = torch.randn(1, 48, 2, 4, 4, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1  # already at the output size
    expected = ref(
        image=(image + 1) / 2, prompt_embeds=cond, negative_prompt_embeds=uncond,
        latents=noise.clone(), num_inference_steps=2, guidance_scale=5.0, height=64,
        width=64, num_frames=5, output_type="pt",
    ).frames
    r = VideoRequest(prompt="", width=64, height=64, frames=5, steps=2, guidance=5.0,
                     shift=5.0, image=image)
    pipe.encode_text = lambda prompts, negative, guidance: (cond, uncond)  # states given
    c, u = pipe.conditions([""], r)
    assert c["first"].shape == (1, 48, 1, 4, 4) and u["first"] is c["first"]
    ours = _run(pipe, c, u, noise)
    err = (ours - expected).abs().max().item()
    print(f"TI2V-5B i2v parity: max abs diff {err:.2e}")
    assert err <= TOL


def test_preset_follows_the_release():
    p = get_preset("wan2.2-ti2v-5b")
    assert (p.width, p.height, p.frames, p.fps) == (1280, 704, 121, 24)
    assert (p.sampler.steps, p.sampler.guidance, p.sampler.shift) == (50, 5.0, 5.0)
    assert p.dit.in_channels == p.vae.z_dim == 48
    assert p.hub_repo == "Wan-AI/Wan2.2-TI2V-5B"
    with pytest.raises(CineforgeError):  # 720 is not a multiple of 32 (16x VAE, 2x patch)
        p.family.check_request(p, VideoRequest(
            prompt="a", width=1280, height=720, frames=121, steps=2, guidance=5.0, shift=5.0))


def test_tiny_preset_generates_from_an_image_through_the_api(tmp_path):
    """The toy preset loads from the cineforge layout and runs image-to-video end to end: an
    image of another size is fitted with a one-line warning, and the image shapes the video."""
    import cineforge
    from cineforge.families.family import save_components

    preset = get_preset("wan2.2-ti2v-tiny")
    torch.manual_seed(0)
    dit, vae = (preset.family.build(part, getattr(preset, part)) for part in ("dit", "vae"))
    save_components(tmp_path, dit=perturb(dit, seed=1), vae=perturb(vae, 2, scale=0.02))
    pipe = cineforge.load_pipeline(preset.name, tmp_path, device="cpu")
    image = torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8)
    with pytest.warns(UserWarning, match="80x48: scaled to cover 64x64"):
        video = pipe("a red ball", steps=1, image=image)
    assert video.frames.shape == (preset.frames, preset.height, preset.width, 3)
    text_only = pipe("a red ball", steps=1)
    assert not torch.equal(torch.as_tensor(video.frames), torch.as_tensor(text_only.frames))
