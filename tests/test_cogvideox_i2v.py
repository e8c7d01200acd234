"""CogVideoX-5B-I2V against diffusers' CogVideoXImageToVideoPipeline (tiny random models,
fp32): the image latents as extra DiT channels; the preset and its full-size strict load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox import COGVIDEOX_I2V
from cineforge.families.cogvideox.dit import COGVIDEOX_5B_I2V, CogVideoXDiT
from cineforge.families.cogvideox.dit_keys import COGVIDEOX_DIT_FROM_DIFFUSERS
from cineforge.families.cogvideox.i2v import CogVideoXI2V
from cineforge.families.cogvideox.text import CogVideoXT5
from cineforge.families.cogvideox.vae import COGVIDEOX_VAE_TINY, CogVideoXVAE
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.families.family import Components
from cineforge.families.registry import get_preset
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.keymap import check_state_dict, load_strict
from cogvideox_oracles import diffusers_transformer, diffusers_vae, tiny_t5, tiny_tokenizer
from oracles import perturb

PROMPT = "a red cat runs on the beach"
TINY = COGVIDEOX_I2V.tiny_dit  # learned positions: 9 frames at 96x64


def test_i2v_matches_diffusers(monkeypatch):
    tok = tiny_tokenizer()
    t5 = tiny_t5(len(tok))
    torch.manual_seed(0)
    transformer = perturb(diffusers_transformer(TINY), 1)
    vae = perturb(diffusers_vae(COGVIDEOX_VAE_TINY), 2, scale=0.02)
    ref = CogVideoXImageToVideoPipeline(
        tokenizer=tok, text_encoder=t5, transformer=transformer, vae=vae,
        scheduler=CogVideoXDDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, prediction_type="v_prediction",
            rescale_betas_zero_snr=True, set_alpha_to_one=True, timestep_spacing="trailing",
            snr_shift_scale=1.0))
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 96, generator=g) * 2 - 1
    noise = torch.randn(1, 16, 3, 8, 12, generator=g)
    expected = ref(
        image=(image + 1) / 2, prompt=PROMPT, height=64, width=96, num_frames=9,
        max_sequence_length=TINY.text_len, num_inference_steps=3, guidance_scale=6.0,
        latents=noise.permute(0, 2, 1, 3, 4).clone(),
        generator=torch.Generator().manual_seed(7), output_type="latent",
    ).frames  # B, T, C, H, W (the VAE's decode is tested on its own)

    with torch.device("meta"):
        dit, our_vae = CogVideoXDiT(TINY), CogVideoXVAE(COGVIDEOX_VAE_TINY)
    load_strict(dit, COGVIDEOX_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, COGVIDEOX_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    pipe = CogVideoXI2V(Components(dit.eval(), our_vae.eval(),
                                   CogVideoXT5(t5, tok, max_length=TINY.text_len)))
    # diffusers draws the image latent first from its generator
    monkeypatch.setattr(pipe, "first_frame_generator", lambda r: torch.Generator().manual_seed(7))
    r = VideoRequest(prompt=PROMPT, width=96, height=64, frames=9, steps=3, guidance=6.0,
                     shift=1.0, solver="ddim", seed=7, image=image)
    cond, uncond = pipe.conditions([PROMPT], r)
    assert cond["y"].shape == (1, 16, 3, 8, 12) and not cond["y"][:, :, 1:].any()
    for step in pipe.sample(cond, uncond, noise, steps=3, guidance=6.0, shift=1.0,
                            solver="ddim"):
        latents = step.x
    ours = latents.permute(0, 2, 1, 3, 4)
    assert ours.shape == expected.shape == (1, 3, 16, 8, 12)
    err = (ours - expected).abs().max().item()
    print(f"CogVideoX I2V parity: max abs diff {err:.2e}")
    assert err <= 1e-4
    assert expected.std() > 0.01


def test_preset_and_requests():
    p = get_preset("cogvideox-5b-i2v")
    assert p.family.pipeline is CogVideoXI2V and p.hub_repo == "THUDM/CogVideoX-5b-I2V"
    assert (p.width, p.height, p.frames, p.fps) == (720, 480, 49, 8)
    assert (p.sampler.steps, p.sampler.guidance, p.sampler.solver) == (50, 6.0, "dpm")
    assert (p.dit.in_channels, p.dit.out_channels, p.vae.scaling_factor) == (32, 16, 0.7)
    r = p.request("a cat", image=torch.zeros(1, 3, 8, 8))
    p.family.check_request(p, r)
    with pytest.raises(CineforgeError, match="image-to-video"):
        p.family.check_request(p, dataclasses.replace(r, image=None))
    with pytest.raises(CineforgeError, match="learned positions"):
        p.family.check_request(p, dataclasses.replace(r, frames=33))


def test_full_size_dit_loads_strictly():
    with torch.device("meta"):
        dit, ref = CogVideoXDiT(COGVIDEOX_5B_I2V), diffusers_transformer(COGVIDEOX_5B_I2V)
    check_state_dict(dit, COGVIDEOX_DIT_FROM_DIFFUSERS.convert(ref.state_dict()))
    assert dit.pos_embedding.shape == (1, 226 + 13 * 30 * 45, 3072)
    print(f"CogVideoX-5B-I2V DiT parameters: {sum(p.numel() for p in dit.parameters()):,}")
