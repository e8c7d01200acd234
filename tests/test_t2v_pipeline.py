"""The whole text-to-video pipeline against diffusers' WanPipeline with identical weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

from cineforge.models.wan_dit import WAN_DIT_TINY, WanDiT
from cineforge.models.wan_vae import WAN_VAE_TINY, WanVAE
from cineforge.pipelines.t2v import TextToVideo
from cineforge.weights.keymap import load_strict
from cineforge.weights.loader import Components
from cineforge.weights.wan_dit_keys import WAN_DIT_FROM_DIFFUSERS
from cineforge.weights.wan_vae_keys import WAN_VAE_FROM_DIFFUSERS
from oracles import tiny_wan_transformer, tiny_wan_vae

SCHEDULERS = {
    "euler": lambda shift: FlowMatchEulerDiscreteScheduler(shift=shift),
    "unipc": lambda shift: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    ),
}


def _ours(transformer, vae) -> TextToVideo:
    with torch.device("meta"):
        dit, our_vae = WanDiT(WAN_DIT_TINY), WanVAE(WAN_VAE_TINY)
    load_strict(dit, WAN_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, WAN_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    return TextToVideo(Components(dit.eval(), our_vae.eval(), text_encoder=None))


@pytest.mark.parametrize(("solver", "steps", "guidance"), [("unipc", 4, 5.0), ("euler", 3, 1.0)])
def test_t2v_matches_diffusers_wan_pipeline(solver, steps, guidance):
    transformer, vae = tiny_wan_transformer(), tiny_wan_vae()
    shift = 3.0
    ref = WanPipeline(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
        scheduler=SCHEDULERS[solver](shift),
    )
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 8, 32, generator=g)
    uncond = torch.randn(1, 8, 32, generator=g)
    noise = torch.randn(1, 16, 3, 8, 8, generator=g)  # 9 frames of 64x64

    expected = ref(
        prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
        num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
        num_frames=9, output_type="pt",
    ).frames  # B, T, C, H, W in [0, 1]

    pipe = _ours(transformer, vae)
    for step in pipe.denoise(
        cond, uncond, noise, steps=steps, guidance=guidance, shift=shift, solver=solver
    ):
        latents = step.x
    video = pipe.decode(latents)  # B, C, T, H, W in [-1, 1]
    ours = ((video + 1) / 2).permute(0, 2, 1, 3, 4)

    assert ours.shape == expected.shape == (1, 9, 3, 64, 64)
    err = (ours - expected).abs().max().item()
    print(f"t2v parity {solver}: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"
    assert expected.std() > 0.01  # the comparison is not between two constant videos
