"""Wan 2.2 A14B (two experts switched at the boundary, guidance per expert) against diffusers'
WanPipeline / WanImageToVideoPipeline with ``transformer_2`` and ``boundary_ratio``."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.registry import get_preset
from cineforge.families.wan.a14b import (
    WAN_EXPERTS_FROM_DIFFUSERS,
    WAN_EXPERTS_FROM_OFFICIAL,
    WAN_EXPERTS_TINY,
    ImageToVideoA14B,
    TextToVideoA14B,
)
from cineforge.families.wan.experts import EXPERTS, WanExperts
from cineforge.families.wan.vae import WAN_VAE_TINY, WanVAE
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.keymap import load_strict
from cineforge.weights.offload import ModelOffload
from oracles import tiny_wan_transformer, tiny_wan_vae
from test_wan_i2v import _meta_diffusers_state, random_image, tiny_i2v_transformer


def _scheduler(shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   flow_shift=shift)


def _ours(pipeline, high, low, vae, config):
    state = {f"high_noise_model.{k}": v for k, v in high.state_dict().items()}
    state |= {f"low_noise_model.{k}": v for k, v in low.state_dict().items()}
    with torch.device("meta"):
        dit, our_vae = WanExperts(config), WanVAE(WAN_VAE_TINY)
    load_strict(dit, WAN_EXPERTS_FROM_DIFFUSERS.convert(state))
    load_strict(our_vae, WAN_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    return pipeline(Components(dit.eval(), our_vae.eval(), text_encoder=None))


def _run(pipe, cond, uncond, r):
    """The whole pipeline on given text states; B, T, C, H, W in [0, 1]."""

    def conditions(prompts, r):
        image = pipe.first_frame(r, 1) if isinstance(pipe, ImageToVideoA14B) else {}
        return {"context": cond, **image}, {"context": uncond, **image}

    pipe.conditions = conditions
    return ((pipe(r) + 1) / 2).permute(0, 2, 1, 3, 4)


def test_t2v_a14b_matches_diffusers_wan_pipeline_with_two_transformers():
    boundary, guidance, guidance_2 = 0.875, 4.0, 3.0
    shift, steps = 3.0, 4  # sigmas 1, .9, .75, .5: two steps per expert at 0.875
    high, low, vae = tiny_wan_transformer(1), tiny_wan_transformer(5), tiny_wan_vae()
    ref = WanPipeline(tokenizer=None, text_encoder=None, transformer=high, transformer_2=low,
                      vae=vae, scheduler=_scheduler(shift), boundary_ratio=boundary)
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    r = VideoRequest(prompt="-", width=32, height=32, frames=5, steps=steps, guidance=guidance,
                     guidance_2=guidance_2, shift=shift, seed=3)
    pipe = _ours(TextToVideoA14B, high, low, vae,
                 dataclasses.replace(WAN_EXPERTS_TINY, boundary=boundary))
    noise = pipe.initial_latents(r, 1)
    expected = ref(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(),
                   num_inference_steps=steps, guidance_scale=guidance,
                   guidance_scale_2=guidance_2, height=32, width=32, num_frames=5,
                   output_type="pt").frames
    got = _run(pipe, cond, uncond, r)
    err = (got - expected).abs().max().item()
    print(f"wan2.2 t2v a14b parity: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"


def test_i2v_a14b_matches_diffusers_wan_image_to_video_pipeline_with_two_transformers():
    shift, steps, boundary = 5.0, 4, 0.9  # sigmas 1, .94, .83, .63: two steps per expert
    high = tiny_i2v_transformer(6, image_dim=None)
    low = tiny_i2v_transformer(7, image_dim=None)
    vae = tiny_wan_vae()
    ref = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, transformer=high,
                                  transformer_2=low, vae=vae, scheduler=_scheduler(shift),
                                  boundary_ratio=boundary)
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 16, 32, generator=g), torch.randn(1, 16, 32, generator=g)
    image = random_image(4)
    r = VideoRequest(prompt="-", width=32, height=32, frames=5, steps=steps, guidance=3.5,
                     guidance_2=2.0, shift=shift, seed=4, image=image)
    config = dataclasses.replace(WAN_EXPERTS_TINY, in_channels=36, boundary=boundary)
    pipe = _ours(ImageToVideoA14B, high, low, vae, config)
    noise = pipe.initial_latents(r, 1)
    expected = ref(image=image, prompt_embeds=cond, negative_prompt_embeds=uncond,
                   latents=noise.clone(), num_inference_steps=steps, guidance_scale=3.5,
                   guidance_scale_2=2.0, height=32, width=32, num_frames=5,
                   output_type="pt").frames
    got = _run(pipe, cond, uncond, r)
    err = (got - expected).abs().max().item()
    print(f"wan2.2 i2v a14b parity: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"
    assert expected.std() > 0.01


class _Recording(ModelOffload):
    """Model offload on the CPU that records which models are in use, and when."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.active: list[torch.nn.Module] = []
        self.most = 0
        self.log: list[torch.nn.Module] = []

    @contextlib.contextmanager
    def use(self, module):
        self.active.append(module)
        self.log.append(module)
        self.most = max(self.most, len(self.active))
        try:
            with super().use(module) as m:
                yield m
        finally:
            self.active.remove(module)


def test_offload_keeps_one_expert_on_the_device_at_a_time():
    pipe = _ours(TextToVideoA14B, tiny_wan_transformer(1), tiny_wan_transformer(5),
                 tiny_wan_vae(), WAN_EXPERTS_TINY)
    pipe.placement = placement = _Recording()
    cond = {"context": torch.randn(1, 16, 32)}
    noise = torch.randn(1, 16, 1, 2, 2)
    for _ in pipe.sample(cond, cond, noise, steps=6, guidance=2.0, guidance_2=1.0, shift=5.0):
        pass
    experts = pipe.dit.high_noise_model, pipe.dit.low_noise_model
    assert placement.log == list(experts)  # high noise first, then low noise, each once
    assert placement.most == 1 and not placement.active


@pytest.mark.parametrize("name", ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"])
def test_full_size_a14b_state_dicts_load_strictly(name, tmp_path):
    """Both experts' diffusers keys and shapes (``transformer``, ``transformer_2``) and the
    release's (``high_noise_model``, ``low_noise_model``) load strictly into the preset."""
    preset = get_preset(name)
    state = _meta_diffusers_state(preset.dit)
    both = {f"{e}.{k}": v for e in EXPERTS for k, v in state.items()}
    with torch.device("meta"):
        dit = WanExperts(preset.dit)
    load_strict(dit, WAN_EXPERTS_FROM_DIFFUSERS.convert(both))
    official = {k: v for k, v in dit.state_dict().items()}
    with torch.device("meta"):
        again = WanExperts(preset.dit)
    load_strict(again, WAN_EXPERTS_FROM_OFFICIAL.convert(official))
    count = sum(p.numel() for p in dit.parameters())
    per_expert = sum(p.numel() for p in dit.high_noise_model.parameters())
    print(f"{name}: {count:,} parameters ({per_expert:,} per expert)")
    assert 2 * per_expert == count and 14.2e9 < per_expert < 14.4e9
    assert dit.high_noise_model.patch_embedding.weight.shape[1] == preset.dit.in_channels
    with pytest.raises(CineforgeError, match="match no rule"):
        WAN_EXPERTS_FROM_DIFFUSERS.convert({"transformer_3." + k: v for k, v in state.items()})


def test_a14b_release_settings_and_guidance_2_checks():
    t2v, i2v = get_preset("wan2.2-t2v-a14b"), get_preset("wan2.2-i2v-a14b")
    assert (t2v.dit.boundary, t2v.sampler.guidance, t2v.sampler.guidance_2) == (0.875, 4.0, 3.0)
    assert (i2v.dit.boundary, i2v.sampler.guidance, i2v.sampler.guidance_2) == (0.9, 3.5, 3.5)
    assert (t2v.sampler.shift, i2v.sampler.shift, t2v.sampler.steps) == (12.0, 5.0, 40)
    assert i2v.dit.in_channels == 36 and i2v.dit.image_dim is None
    with pytest.raises(CineforgeError, match="guidance_2"):
        t2v.family.check_request(t2v, t2v.request("a", guidance_2=float("nan")))


def test_cli_runs_the_tiny_i2v_a14b_with_an_image_and_guidance_2(tmp_path, capsys):
    from cineforge.cli.main import main
    from cineforge.families.family import save_components
    from cineforge.io.video import read_video
    from oracles import perturb

    preset = get_preset("wan2.2-i2v-a14b-tiny")
    torch.manual_seed(0)
    folder = save_components(tmp_path / "w", dit=perturb(WanExperts(preset.dit), 8),
                             vae=perturb(WanVAE(preset.vae), 9, scale=0.02))
    image = tmp_path / "first.png"
    random_image(5).save(image)
    out = tmp_path / "v.gif"
    code = main(["generate", "a cat", "--preset", preset.name, "--weights", str(folder),
                 "--image", str(image), "--guidance-2", "2", "--offload", "model",
                 "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "scaled to cover" not in captured.err  # the image had the output's size
    frames, _ = read_video(out)
    assert frames.shape[:3] == (5, 32, 32)
    code = main(["generate", "a cat", "--preset", preset.name, "--weights", str(folder),
                 "--guidance-2", "-1", "--image", str(image), "--out", str(out)])
    assert code == 2 and "--guidance-2 must be a number >= 0" in capsys.readouterr().err
