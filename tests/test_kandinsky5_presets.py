"""Kandinsky 5 presets: release settings, official-layout files for every preset (meta
tensors at full size), folder layouts and text-encoder sources, CLI routing (tiny models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLHunyuanVideo, Kandinsky5Transformer3DModel

from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families import family as family_module
from cineforge.families.family import Components, Family, detect_layout, load_model
from cineforge.families.kandinsky5 import KANDINSKY5, KANDINSKY5_IMAGE
from cineforge.families.kandinsky5.dit import K5_DIT_TINY, Kandinsky5DiT
from cineforge.families.kandinsky5.flux_vae import FLUX_VAE, FLUX_VAE_TINY, FluxVAE
from cineforge.families.kandinsky5.hunyuan_vae import HUNYUAN_VAE, HUNYUAN_VAE_TINY, HunyuanVAE
from cineforge.families.kandinsky5.pipeline import Kandinsky5
from cineforge.families.registry import PRESETS, get_preset
from cineforge.io.video import read_video
from cineforge.models.text_encoders import (
    K5_IMAGE_TEMPLATE,
    K5_VIDEO_TEMPLATE,
    CLIPTextEncoder,
    PromptTemplate,
    Qwen25VLTextEncoder,
)
from cineforge.pipelines.common import VideoRequest
from k5_oracles import clip_tokenizer, qwen_tokenizer, tiny_clip, tiny_qwen
from oracles import perturb

K5 = [name for name, p in PRESETS.items()  # the releases (the tiny presets have no files)
      if p.family in (KANDINSKY5, KANDINSKY5_IMAGE) and p.hub_repo is not None]


def test_release_settings():
    lite, pro, image = (get_preset(n) for n in
                        ("kandinsky5-t2v-lite", "kandinsky5-t2v-pro", "kandinsky5-t2i-lite"))
    assert (lite.sampler.steps, lite.sampler.guidance, lite.sampler.solver) == (50, 5.0, "euler")
    assert (lite.width, lite.height, lite.frames, lite.fps) == (768, 512, 121, 24)
    assert lite.hub_repo == "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s"
    assert lite.diffusers_repo == "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers"
    assert lite.sampler.negative.startswith("Static, 2D cartoon")
    distill = get_preset("kandinsky5-t2v-lite-distill")
    assert (distill.sampler.steps, distill.sampler.guidance, distill.sampler.shift) == (16, 1, 5)
    assert distill.dit_file == "kandinsky5lite_t2v_distilled16steps_5s"
    nocfg = get_preset("kandinsky5-t2v-lite-nocfg-10s")
    assert (nocfg.sampler.steps, nocfg.sampler.guidance, nocfg.frames) == (50, 1.0, 241)
    assert nocfg.hub_repo.endswith("T2V-Lite-nocfg-10s")
    assert pro.dit.model_dim == 4096 and pro.dit_file == "kandinsky5pro_t2v_sft_5s"
    assert (image.frames, image.width, image.sampler.guidance, image.sampler.shift) == (
        1, 1024, 3.5, 3.0)
    assert image.vae == FLUX_VAE and image.vae_repo == "black-forest-labs/FLUX.1-dev"
    assert (lite.max_text_len, image.max_text_len) == (256, 512)


def _diffusers_shapes(preset) -> tuple[dict, dict]:
    """Official-layout state dicts on the meta device: the release's DiT file uses the
    names of diffusers' Kandinsky5Transformer3DModel, and its VAE folders are diffusers'
    AutoencoderKLHunyuanVideo / AutoencoderKL (FLUX.1-dev ``vae/``)."""
    c = preset.dit
    with torch.device("meta"):
        dit = Kandinsky5Transformer3DModel(
            in_visual_dim=c.in_channels, in_text_dim=c.text_dim, in_text_dim2=c.pooled_dim,
            time_dim=c.time_dim, out_visual_dim=c.out_channels, patch_size=c.patch_size,
            model_dim=c.model_dim, ff_dim=c.ff_dim, num_text_blocks=c.num_text_blocks,
            num_visual_blocks=c.num_visual_blocks, axes_dims=c.axes_dims,
            visual_cond=c.visual_cond,
        ).state_dict()
        if preset.vae == HUNYUAN_VAE:
            vae = AutoencoderKLHunyuanVideo().state_dict()
        else:
            vae = AutoencoderKL(
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                use_quant_conv=False, use_post_quant_conv=False,
            ).state_dict()
    return dit, vae


@pytest.mark.parametrize("name", K5)
def test_official_layout_loads_every_preset(name, tmp_path, monkeypatch):
    preset = get_preset(name)
    dit_sd, vae_sd = _diffusers_shapes(preset)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / f"{preset.dit_file}.safetensors").touch()
    assert detect_layout(preset, tmp_path) == "official"
    asked = []

    def fake_read(folder, stem, *, hub_repo=None):
        asked.append((Path(folder).relative_to(tmp_path).as_posix(), stem, hub_repo))
        return dit_sd if stem == preset.dit_file else vae_sd

    monkeypatch.setattr(family_module, "read_safetensors", fake_read)
    dit, vae = load_model(preset, tmp_path, "dit"), load_model(preset, tmp_path, "vae")
    assert isinstance(dit, Kandinsky5DiT) and dit.config == preset.dit
    assert isinstance(vae, HunyuanVAE if preset.vae == HUNYUAN_VAE else FluxVAE)
    assert dit.state_dict().keys() == dit_sd.keys()  # identity names, nothing dropped
    vae_dir = "vae" if preset.family.name == "kandinsky5" else "flux/vae"
    assert asked == [("model", preset.dit_file, preset.hub_repo),
                     (vae_dir, "diffusion_pytorch_model", preset.vae_repo)]


def test_official_layout_rejects_a_foreign_key(tmp_path, monkeypatch):
    preset = get_preset("kandinsky5-t2v-lite")
    dit_sd, _ = _diffusers_shapes(preset)
    monkeypatch.setattr(family_module, "read_safetensors",
                        lambda *a, **k: {**dit_sd, "lora_A.weight": torch.empty(1)})
    with pytest.raises(CineforgeError, match="match no rule"):
        load_model(preset, tmp_path, "dit", layout="official")


def test_diffusers_layout_loads_real_files(tmp_path):
    """A diffusers Kandinsky5T2VPipeline folder (tiny DiT with the real text widths)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    config = dataclasses.replace(K5_DIT_TINY, text_dim=3584, pooled_dim=768, visual_cond=True)
    preset = dataclasses.replace(get_preset("kandinsky5-t2v-lite"), dit=config,
                                 vae=HUNYUAN_VAE_TINY)
    torch.manual_seed(0)
    transformer = perturb(Kandinsky5Transformer3DModel(
        in_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=32, out_visual_dim=16,
        patch_size=(1, 2, 2), model_dim=64, ff_dim=128, num_text_blocks=1, num_visual_blocks=2,
        axes_dims=(8, 12, 12), visual_cond=True), 1)
    c = HUNYUAN_VAE_TINY
    vae = AutoencoderKLHunyuanVideo(block_out_channels=c.block_out_channels,
                                    layers_per_block=1, norm_num_groups=4)
    Kandinsky5T2VPipeline(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None,
                          text_encoder_2=None, tokenizer_2=None,
                          scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path)
    assert detect_layout(preset, tmp_path) == "diffusers"
    dit, ours_vae = load_model(preset, tmp_path, "dit"), load_model(preset, tmp_path, "vae")
    want = transformer.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in dit.state_dict().items())
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z / c.scaling_factor).sample.clamp(-1, 1)
    assert (ours_vae.decode(z) - ref).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("layout", "present", "want"),
    [
        ("official", ["text_encoder", "text_encoder2"],
         ["text_encoder", "text_encoder", "text_encoder2", "text_encoder2"]),
        ("diffusers", ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"],
         ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]),
        ("official", [], ["Qwen/Qwen2.5-VL-7B-Instruct"] * 2
         + ["openai/clip-vit-large-patch14"] * 2),
    ],
)
def test_text_encoder_sources(layout, present, want, tmp_path, monkeypatch):
    import cineforge.weights.text_encoders as te

    got = {}

    def fake_qwen(src, *, tokenizer, template, max_length, dtype):
        got["qwen"] = (src, tokenizer, template, max_length)
        return "qwen"

    def fake_clip(src, *, tokenizer):
        got["clip"] = (src, tokenizer)
        return "clip"

    monkeypatch.setattr(te, "load_qwen25vl", fake_qwen)
    monkeypatch.setattr(te, "load_clip", fake_clip)
    monkeypatch.setattr(te, "load_umt5", lambda folder, *, layout, dtype: "umt5")
    for d in present:
        (tmp_path / d).mkdir()
    wan = get_preset("wan2.1-t2v-1.3b")
    assert wan.text.load(wan, tmp_path, layout, torch.float32) == ("umt5", None)  # no pooled
    for name, template, length in (("kandinsky5-t2v-lite", K5_VIDEO_TEMPLATE, 256),
                                   ("kandinsky5-t2i-lite", K5_IMAGE_TEMPLATE, 512)):
        preset = get_preset(name)
        assert preset.text.load(preset, tmp_path, layout, torch.float32) == ("qwen", "clip")
        sources = [*got["qwen"][:2], *got["clip"]]
        assert [s if isinstance(s, str) else s.relative_to(tmp_path).as_posix()
                for s in sources] == want
        assert got["qwen"][2:] == (template, length)


def _check(name: str, r: VideoRequest, **kwargs) -> None:
    preset = get_preset(name)
    preset.family.check_request(preset, r, **kwargs)


def test_request_checks_before_loading():
    base = VideoRequest(prompt="a cat", width=768, height=512, frames=121, steps=2,
                        guidance=5.0, shift=10.0, solver="euler")
    _check("kandinsky5-t2v-lite", base)
    with pytest.raises(CineforgeError, match="^frames 8 is not of the form 4k\\+1"):
        _check("kandinsky5-t2v-lite", dataclasses.replace(base, frames=8))
    with pytest.raises(CineforgeError, match="one frame"):
        _check("kandinsky5-t2i-lite", base)
    # NABLA: whole 8x8-patch tiles (128 px)
    _check("kandinsky5-t2v-lite-10s", dataclasses.replace(base, frames=241))
    with pytest.raises(CineforgeError, match="multiple of 128"):
        _check("kandinsky5-t2v-lite-10s", dataclasses.replace(base, width=704))
    _check("kandinsky5-t2i-lite", dataclasses.replace(base, frames=1))
    with pytest.raises(CineforgeError, match="'kandinsky5-t2v-lite' .* has no video-to-video"):
        _check("kandinsky5-t2v-lite", base, init_video=True)


def _tiny_components(video: bool) -> Components:
    torch.manual_seed(0)
    dit = perturb(Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, visual_cond=video)), 1)
    vae = HunyuanVAE(HUNYUAN_VAE_TINY) if video else FluxVAE(FLUX_VAE_TINY)
    qwen = Qwen25VLTextEncoder(tiny_qwen(), qwen_tokenizer(), max_length=160,
                               template=PromptTemplate("<|im_start|>user\n{}<|im_end|>", 3))
    return Components(dit, perturb(vae, 2, scale=0.02), qwen,
                      pooled_encoder=CLIPTextEncoder(tiny_clip(), clip_tokenizer()))


@pytest.mark.parametrize(("preset", "out", "frames"),
                         [("kandinsky5-t2v-tiny", "v.mp4", 5), ("kandinsky5-t2i-tiny", "i.png", 1)])
def test_cli_routes_kandinsky5_presets(preset, out, frames, tmp_path, monkeypatch):
    """The CLI runs each Kandinsky 5 family's pipeline (the toy presets: the releases' own
    sizes do not fit this machine's memory in fp32, and the memory check says so first)."""
    import cineforge.api as api

    video = preset == "kandinsky5-t2v-tiny"
    monkeypatch.setattr(api, "load_components", lambda p, folder, dtype: _tiny_components(video))
    made = []
    real = Family.make_pipeline
    monkeypatch.setattr(Family, "make_pipeline",
                        lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    code = main(["generate", "a red ball", "--preset", preset, "--size", "64x64", "--frames",
                 str(frames), "--steps", "2", "--out", str(tmp_path / out), "--device", "cpu"])
    assert code == 0
    assert isinstance(made[0], Kandinsky5) and made[0].video is video
    frames_read, _ = read_video(tmp_path / out)
    assert frames_read.shape == (frames, 64, 64, 3)
    assert np.std(frames_read) > 1.0


def test_tiny_presets_take_their_text_encoders_from_the_folder_only(tmp_path):
    """The toy presets name no hub text encoders (a 7B download for a toy): a folder without
    them is a one-line error, not a silent fallback to the release's Qwen2.5-VL."""
    for name in ("kandinsky5-t2v-tiny", "kandinsky5-t2i-tiny"):
        preset = get_preset(name)
        assert preset.text.dim == preset.dit.text_dim and not preset.text_repos
        with pytest.raises(CineforgeError, match="takes its text encoders from the weights "
                                                 "folder, but .* has no text_encoder, tokenizer"):
            preset.text.load(preset, tmp_path, "cineforge", torch.float32)
