"""The whole text-to-video pipeline against diffusers' WanPipeline with identical weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS
from cineforge.families.wan.pipeline import TextToVideo, VideoRequest
from cineforge.families.wan.vae import WAN_VAE_TINY, WanVAE
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS
from cineforge.weights.keymap import load_strict
from oracles import tiny_wan_transformer, tiny_wan_vae

SCHEDULERS = {
    "euler": lambda shift: FlowMatchEulerDiscreteScheduler(shift=shift),
    "unipc": lambda shift: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    ),
}


def _reference(pipeline_class, solver: str, shift: float, seed: int):
    """A diffusers Wan pipeline on tiny random models, and random text states for it."""
    transformer, vae = tiny_wan_transformer(), tiny_wan_vae()
    ref = pipeline_class(
        tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
        scheduler=SCHEDULERS[solver](shift),
    )
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, 8, 32, generator=g)
    uncond = torch.randn(1, 8, 32, generator=g)
    return ref, _ours(transformer, vae), g, cond, uncond


def _ours(transformer, vae) -> TextToVideo:
    with torch.device("meta"):
        dit, our_vae = WanDiT(WAN_DIT_TINY), WanVAE(WAN_VAE_TINY)
    load_strict(dit, WAN_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, WAN_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    return TextToVideo(Components(dit.eval(), our_vae.eval(), text_encoder=None))


@pytest.mark.parametrize(("solver", "steps", "guidance"), [("unipc", 4, 5.0), ("euler", 3, 1.0)])
def test_t2v_matches_diffusers_wan_pipeline(solver, steps, guidance):
    shift = 3.0
    ref, pipe, g, cond, uncond = _reference(WanPipeline, solver, shift, seed=0)
    noise = torch.randn(1, 16, 3, 8, 8, generator=g)  # 9 frames of 64x64

    expected = ref(
        prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
        num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
        num_frames=9, output_type="pt",
    ).frames  # B, T, C, H, W in [0, 1]

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


@pytest.mark.parametrize(("solver", "steps", "strength"), [("euler", 4, 0.5), ("unipc", 5, 0.6)])
def test_video_to_video_matches_diffusers_wan_video_to_video(solver, steps, strength):
    """SDEdit: the init video encoded, noised at the schedule's sigma after
    ``steps - int(steps * strength)`` steps, and only the rest run; as diffusers does it."""
    from diffusers import WanVideoToVideoPipeline

    shift, guidance = 3.0, 4.0
    ref, pipe, g, cond, uncond = _reference(WanVideoToVideoPipeline, solver, shift, seed=1)
    video = torch.rand(1, 3, 9, 64, 64, generator=g) * 2 - 1  # B, C, T, H, W in [-1, 1]

    expected = ref(
        video=((video + 1) / 2).permute(0, 2, 1, 3, 4), prompt_embeds=cond,
        negative_prompt_embeds=uncond, num_inference_steps=steps, guidance_scale=guidance,
        strength=strength, height=64, width=64, generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).frames  # B, T, C, H, W in [0, 1]

    pipe.conditions = lambda prompts, r: ({"context": cond}, {"context": uncond})
    request = VideoRequest(prompt="-", width=64, height=64, frames=9, steps=steps,
                           guidance=guidance, shift=shift, solver=solver, seed=7,
                           strength=strength)
    ours = ((pipe(request, init_video=video) + 1) / 2).permute(0, 2, 1, 3, 4)

    err = (ours - expected).abs().max().item()
    print(f"video-to-video parity {solver}: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"
    start = ((pipe.decode(pipe.encode_video(video)) + 1) / 2).permute(0, 2, 1, 3, 4)
    assert (ours - start).abs().mean() > 0.01  # the steps did change the encoded video


def test_video_to_video_refuses_bad_strength_and_init_video():
    pipe = _ours(tiny_wan_transformer(), tiny_wan_vae())
    pipe.conditions = lambda prompts, r: ({"context": torch.zeros(1, 8, 32)}, None)
    request = VideoRequest(prompt="-", width=64, height=64, frames=9, steps=4, guidance=1.0,
                           shift=3.0, strength=0.5)
    video = torch.zeros(1, 3, 9, 64, 64)
    with pytest.raises(CineforgeError, match="needs an init video"):
        pipe(request)
    with pytest.raises(CineforgeError, match="runs no step"):
        pipe(dataclasses.replace(request, strength=0.2), init_video=video)  # int(4 * 0.2) = 0
    with pytest.raises(CineforgeError, match="runs no step"):
        pipe(dataclasses.replace(request, strength=1.5), init_video=video)
    with pytest.raises(CineforgeError, match=r"expected \(1, 3, 9, 64, 64\)"):
        pipe(request, init_video=torch.zeros(1, 3, 5, 64, 64))
