"""CogVideoX text-to-video against diffusers' CogVideoXPipeline with identical tiny models
(T5, DiT, VAE) and seed; the T5 prompt states; the presets' requests; loading a release
folder (diffusers layout) and a cineforge folder through the Python API and the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline

import cineforge
from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families.cogvideox import COGVIDEOX
from cineforge.families.cogvideox.dit import COGVIDEOX_DIT_TINY, CogVideoXDiT
from cineforge.families.cogvideox.dit_keys import COGVIDEOX_DIT_FROM_DIFFUSERS
from cineforge.families.cogvideox.pipeline import CogVideoX, dynamic_guidance
from cineforge.families.cogvideox.text import CogVideoXT5
from cineforge.families.cogvideox.vae import COGVIDEOX_VAE_TINY, CogVideoXVAE
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.families.family import Components, detect_layout, load_components, save_components
from cineforge.families.registry import get_preset
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.files import write_model_config
from cineforge.weights.keymap import load_strict
from cogvideox_oracles import (
    diffusers_transformer,
    diffusers_vae,
    tiny_t5,
    tiny_tokenizer,
    write_diffusers_folder,
)
from oracles import perturb

PROMPT = "a red cat runs on the beach"
TEXT_LEN = COGVIDEOX_DIT_TINY.text_len
ROPE = dataclasses.replace(COGVIDEOX_DIT_TINY, positions="rope")
V1_5 = dataclasses.replace(ROPE, patch_size=(2, 2, 2), sample_size=(5, 20, 20))
SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


@pytest.fixture(scope="module")
def text():
    tok = tiny_tokenizer()
    return tiny_t5(len(tok)), tok


def _ours(transformer, vae, dit_config, text, **options) -> CogVideoX:
    with torch.device("meta"):
        dit, our_vae = CogVideoXDiT(dit_config), CogVideoXVAE(COGVIDEOX_VAE_TINY)
    load_strict(dit, COGVIDEOX_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, COGVIDEOX_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    encoder = CogVideoXT5(*text, max_length=TEXT_LEN)
    return CogVideoX(Components(dit.eval(), our_vae.eval(), encoder), **options)


CASES = {  # name: DiT config, solver, steps, guidance, SNR shift, dynamic guidance, frames
    "2B ddim": (COGVIDEOX_DIT_TINY, "ddim", 3, 6.0, 3.0, False, 9),
    "5B dpm dynamic": (ROPE, "dpm", 3, 6.0, 1.0, True, 9),
    "1.5 dpm padded frames": (V1_5, "dpm", 3, 6.0, 1.0, True, 9),
    "5B ddim no guidance, one frame": (ROPE, "ddim", 2, 1.0, 1.0, False, 1),
}
DECODED = ("2B ddim", "5B ddim no guidance, one frame")  # the others compare latents


def _latents(pipe: CogVideoX, r: VideoRequest) -> torch.Tensor:
    """The sampled latents of ``pipe(r)`` (its stages without the decode), B, T, C, H, W."""
    cond, uncond = pipe.conditions([r.prompt], r)
    for step in pipe.sample(cond, uncond, pipe.initial_latents(r, 1), steps=r.steps,
                            guidance=r.guidance, shift=r.shift, solver=r.solver,
                            fresh_noise=pipe.fresh_noise(r)):
        latents = step.x
    return latents.permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_matches_diffusers(name, text):
    """Videos (or, for the DPM cases, the latents before decoding: the VAE is the same) of
    our pipeline and diffusers' from the same seed."""
    config, solver, steps, guidance, shift, dynamic, frames = CASES[name]
    decoded = name in DECODED
    torch.manual_seed(0)
    transformer = perturb(diffusers_transformer(config), 1)
    vae = perturb(diffusers_vae(COGVIDEOX_VAE_TINY), 2, scale=0.02)
    scheduler = SCHEDULERS[solver](
        beta_schedule="scaled_linear", clip_sample=False, prediction_type="v_prediction",
        rescale_betas_zero_snr=True, set_alpha_to_one=True, timestep_spacing="trailing",
        snr_shift_scale=shift)
    ref = CogVideoXPipeline(tokenizer=text[1], text_encoder=text[0], transformer=transformer,
                            vae=vae, scheduler=scheduler)
    ref.set_progress_bar_config(disable=True)
    expected = ref(prompt=PROMPT, height=32, width=32, num_frames=frames,
                   max_sequence_length=TEXT_LEN, num_inference_steps=steps,
                   guidance_scale=guidance, use_dynamic_cfg=dynamic,
                   generator=torch.Generator().manual_seed(7),
                   output_type="pt" if decoded else "latent").frames

    pipe = _ours(transformer, vae, config, text, dynamic_cfg=dynamic)
    r = VideoRequest(prompt=PROMPT, width=32, height=32, frames=frames, steps=steps,
                     guidance=guidance, shift=shift, solver=solver, seed=7)
    if decoded:
        ours = ((pipe(r) + 1) / 2).permute(0, 2, 1, 3, 4)  # B, T, C, H, W in [0, 1]
        assert ours.shape == expected.shape == (1, frames, 3, 32, 32)
    else:
        ours = _latents(pipe, r)
        expected = expected[:, pipe.padding():]  # diffusers' latents keep 1.5's padding
        assert ours.shape == expected.shape == (1, 1 + (frames - 1) // 4, 16, 4, 4)
    err = (ours - expected).abs().max().item()
    print(f"CogVideoX pipeline {name}: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"
    assert expected.std() > 0.01  # not two constant tensors


def test_guidance_until_zero_is_the_unguided_run(text):
    """``guidance_until`` 0 runs every step on the conditional model alone: the video of
    guidance 1; with guidance on every step the video differs."""
    dit, vae = _tiny_models()
    pipe = CogVideoX(Components(dit, vae, CogVideoXT5(*text, max_length=TEXT_LEN)))
    r = VideoRequest(prompt=PROMPT, width=32, height=32, frames=1, steps=2, guidance=6.0,
                     shift=1.0, solver="dpm", seed=3)
    plain = pipe(dataclasses.replace(r, guidance=1.0))
    assert torch.equal(pipe(dataclasses.replace(r, guidance_until=0.0)), plain)
    assert (pipe(r) - plain).abs().max() > 1e-3


def test_t5_states_equal_diffusers_prompt_embeds(text):
    """226-token padding (here 16), end-of-sequence token, no mask: pad rows are real T5
    outputs, as diffusers' ``_get_t5_prompt_embeds`` gives them."""
    ref = CogVideoXPipeline(tokenizer=text[1], text_encoder=text[0], transformer=None, vae=None,
                            scheduler=None)
    prompts = [PROMPT, "a dog", ""]
    want = ref._get_t5_prompt_embeds(prompts, max_sequence_length=TEXT_LEN,
                                     device=torch.device("cpu"), dtype=torch.float32)
    got = CogVideoXT5(*text, max_length=TEXT_LEN).encode(prompts)
    assert got.states.shape == want.shape == (3, TEXT_LEN, 32)
    torch.testing.assert_close(got.states, want, rtol=0, atol=1e-5)
    assert got.mask.sum(1).tolist() == [8, 3, 1]  # the prompt's tokens and </s>
    assert got.states[2, 5:].abs().sum() > 0  # padding rows are not zeroed
    with pytest.raises(CineforgeError, match="at most 16 tokens"):
        CogVideoXT5(*text, max_length=TEXT_LEN).encode(["a " * 20])


def test_dynamic_guidance_is_diffusers_formula():
    """``1 + g (1 - cos(pi ((N - t) / N) ** 5)) / 2`` with the timestep t, as diffusers has it:
    at t = N the scale is 1, and otherwise it lands anywhere in [1, 1 + g]."""
    assert dynamic_guidance(6.0, 50, 50) == 1.0
    x = ((50 - 999) / 50) ** 5
    assert dynamic_guidance(6.0, 999, 50) == pytest.approx(1 + 3 * (1 - torch.cos(
        torch.tensor(torch.pi * x, dtype=torch.float64)).item()))
    assert all(1 <= dynamic_guidance(6.0, t, 50) <= 7 for t in range(0, 1000, 20))


@pytest.mark.parametrize(("preset", "fields", "message"), [
    ("cogvideox-2b", dict(solver="unipc"), "unknown --solver 'unipc' for CogVideoX"),
    ("cogvideox1.5-5b", dict(frames=85), "--frames 85 is not of the form 8k+1"),
    ("cogvideox-2b", dict(frames=45), "--frames 45 is not of the form 8k+1; use 41 or 49"),
    ("cogvideox-5b", dict(steps=1001), "--steps 1001 exceeds"),
    ("cogvideox-5b", dict(frame_noise_share=0.5), "--frame_noise_share 0"),
    ("cogvideox1.5-5b", dict(width=2560), "--size 2560x768 is beyond this model's positions"),
    ("cogvideox-2b", dict(width=728), "is not a multiple of 16"),
])
def test_requests_the_models_cannot_honour_are_errors(preset, fields, message):
    preset = get_preset(preset)
    with pytest.raises(CineforgeError) as error:
        preset.family.check_request(preset, preset.request(PROMPT, **fields))
    shown = error.value.renamed(lambda field: "--" + field)  # as the CLI shows it
    assert message in shown and "\n" not in shown


def test_presets_follow_the_releases():
    two, five, v15 = (get_preset(n) for n in ("cogvideox-2b", "cogvideox-5b", "cogvideox1.5-5b"))
    assert (two.width, two.height, two.frames, two.fps) == (720, 480, 49, 8)
    assert (v15.width, v15.height, v15.frames, v15.fps) == (1360, 768, 81, 16)
    assert [p.sampler.solver for p in (two, five, v15)] == ["ddim", "dpm", "dpm"]
    assert [p.sampler.shift for p in (two, five, v15)] == [3.0, 1.0, 1.0]
    assert [p.vae.scaling_factor for p in (two, five, v15)] == [1.15258426, 0.7, 0.7]
    assert [p.hub_repo for p in (two, five, v15)] == [
        "THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX1.5-5B"]
    assert all(p.sampler.steps == 50 and p.sampler.guidance == 6.0 and p.max_text_len == 226
               for p in (two, five, v15))
    for p in (two, five, v15):
        p.family.check_request(p, p.request(PROMPT))


def _tiny_models():
    torch.manual_seed(0)
    dit = perturb(COGVIDEOX.build("dit", COGVIDEOX_DIT_TINY), 3)
    vae = perturb(COGVIDEOX.build("vae", COGVIDEOX_VAE_TINY), 4, scale=0.02)
    return dit, vae


def test_release_folder_loads_strictly_and_generates(tmp_path, text):
    """A diffusers-layout folder (the release's) loads DiT, VAE and T5 for the tiny preset;
    the CLI generates from it with the preset's solver."""
    dit, vae = _tiny_models()
    write_diffusers_folder(tmp_path, COGVIDEOX_DIT_TINY, COGVIDEOX_VAE_TINY, dit, vae, text)
    preset = get_preset("cogvideox-tiny")
    assert detect_layout(preset, tmp_path) == "diffusers"
    loaded = load_components(preset, tmp_path)
    for ours, got in ((dit, loaded.dit), (vae, loaded.vae)):
        want = ours.state_dict()
        assert all(torch.equal(got.state_dict()[k], v) for k, v in want.items())
    torch.testing.assert_close(loaded.text_encoder.encode([PROMPT]).states,
                               CogVideoXT5(*text, max_length=TEXT_LEN).encode([PROMPT]).states)
    out = tmp_path / "out.mp4"
    assert main(["generate", PROMPT, "--preset", "cogvideox-tiny", "--weights", str(tmp_path),
                 "--steps", "2", "--size", "32x32", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_load_pipeline_cogvideox_2b_from_a_tiny_folder(tmp_path, text):
    """The 2B preset's API with weights of another size: a cineforge folder with dit.json /
    vae.json and the T5 folders."""
    dit, vae = _tiny_models()
    save_components(tmp_path, dit=dit, vae=vae)
    write_model_config(COGVIDEOX_DIT_TINY, tmp_path / "dit.json")
    write_model_config(COGVIDEOX_VAE_TINY, tmp_path / "vae.json")
    text[0].save_pretrained(tmp_path / "text_encoder")
    text[1].save_pretrained(tmp_path / "tokenizer")
    pipe = cineforge.load_pipeline("cogvideox-2b", weights=tmp_path, device="cpu")
    assert pipe.runner.dit.config == COGVIDEOX_DIT_TINY
    video = pipe(PROMPT, width=32, height=48, frames=9, steps=2, seed=1)
    assert video.frames.shape == (9, 48, 32, 3) and video.fps == 8


def test_missing_text_encoder_names_the_folders(tmp_path):
    dit, vae = _tiny_models()
    save_components(tmp_path, dit=dit, vae=vae)
    with pytest.raises(CineforgeError, match="text_encoder/, tokenizer/"):
        load_components(get_preset("cogvideox-tiny"), tmp_path)
    with pytest.raises(CineforgeError, match="THUDM/CogVideoX-2b"):
        load_components(get_preset("cogvideox-2b"), tmp_path)
