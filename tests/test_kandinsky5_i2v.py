"""Kandinsky 5 image-to-video against diffusers' Kandinsky5I2VPipeline (tiny random models,
fp32), the release's first-frame renormalisation, presets and full-size strict loads."""

from __future__ import annotations

import dataclasses

import diffusers.models.transformers.transformer_kandinsky as diffusers_k5
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.kandinsky5.dit import K5_DIT_TINY, Kandinsky5DiT
from cineforge.families.kandinsky5.dit_keys import K5_DIT_FROM_DIFFUSERS, K5_DIT_FROM_OFFICIAL
from cineforge.families.kandinsky5.hunyuan_vae import HUNYUAN_VAE_TINY, HunyuanVAE
from cineforge.families.kandinsky5.hunyuan_vae_keys import HUNYUAN_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.i2v import Kandinsky5I2V, normalize_first_frames
from cineforge.families.registry import get_preset
from cineforge.models.text_encoders import CLIPTextEncoder, PromptTemplate, Qwen25VLTextEncoder
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.keymap import check_state_dict, load_strict
from k5_oracles import TorchWithoutBF16, clip_tokenizer, qwen_tokenizer, tiny_clip, tiny_qwen
from test_kandinsky5_pipeline import _transformer, _video_vae

PROMPT, NEGATIVE = "a red ball bounces", "static, blurry"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair():
    """diffusers' I2V pipeline and ours with the same tiny weights and prompt template."""
    qwen, clip, transformer, vae = tiny_qwen(), tiny_clip(), _transformer(True), _video_vae()
    ref = Kandinsky5I2VPipeline(
        transformer=transformer, vae=vae, text_encoder=qwen, tokenizer=qwen_tokenizer(),
        text_encoder_2=clip, tokenizer_2=clip_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    ref.set_progress_bar_config(disable=True)
    crop = len(qwen_tokenizer()(ref.prompt_template.split("{}")[0])["input_ids"])
    ref.prompt_template_encode_start_idx = crop
    with torch.device("meta"):
        dit = Kandinsky5DiT(dataclasses.replace(K5_DIT_TINY, visual_cond=True))
        our_vae = HunyuanVAE(HUNYUAN_VAE_TINY)
    load_strict(dit, K5_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, HUNYUAN_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    parts = Components(
        dit.eval(), our_vae.eval(),
        text_encoder=Qwen25VLTextEncoder(qwen, qwen_tokenizer(), max_length=40,
                                         template=PromptTemplate(ref.prompt_template, crop)),
        pooled_encoder=CLIPTextEncoder(clip, clip_tokenizer()),
    )
    return ref, Kandinsky5I2V(parts, schedule="diffusers")


def test_i2v_matches_diffusers(monkeypatch):
    monkeypatch.setattr(diffusers_k5, "torch", TorchWithoutBF16())
    # 9 frames = 3 latent frames: too few for the first-frame renormalisation, which the
    # release skips there and diffusers would fill with NaN (mean of no reference frame).
    monkeypatch.setattr(Kandinsky5I2VPipeline, "normalize_first_frame",
                        lambda self, latents: latents)
    ref, pipe = _pair()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = ref(
        image=(image + 1) / 2, prompt=PROMPT, negative_prompt=NEGATIVE, height=64, width=64,
        num_frames=9, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7), output_type="pt",
    ).frames
    # diffusers draws the noise, then the image's posterior sample, from one generator
    g = torch.Generator().manual_seed(7)
    torch.randn(1, 3, 8, 8, 16, generator=g)
    monkeypatch.setattr(pipe, "first_frame_generator", lambda r: g)
    r = VideoRequest(prompt=PROMPT, negative=NEGATIVE, width=64, height=64, frames=9, steps=3,
                     guidance=5.0, shift=5.0, solver="euler", seed=7, image=image)
    ours = ((pipe(r) + 1) / 2).permute(0, 2, 1, 3, 4)
    assert ours.shape == expected.shape == (1, 9, 3, 64, 64)
    err = (ours - expected).abs().max().item()
    print(f"kandinsky5 i2v parity: max abs diff {err:.2e}")
    assert err <= 1e-4
    assert expected.std() > 0.01


def test_first_frames_renormalised_per_frame_as_the_release():
    """Each of the first four latent frames gets the reference frames' clamped statistics:
    diffusers' ``adaptive_mean_std_normalization`` applied to one frame at a time (the
    release's per-frame statistics; diffusers' pipeline pools the four frames)."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 7, 4, 4, generator=g) * torch.rand(1, 1, 7, 1, 1, generator=g)
    ours = normalize_first_frames(latents)
    frames = latents.permute(0, 2, 3, 4, 1)  # B, T, H, W, C as diffusers holds them
    for i in range(4):
        expected = Kandinsky5I2VPipeline.adaptive_mean_std_normalization(
            frames[:, i : i + 1], frames[:, 4:9])
        assert torch.allclose(ours[:, :, i], expected[:, 0].permute(0, 3, 1, 2), atol=1e-6)
    assert torch.equal(ours[:, :, 4:], latents[:, :, 4:])
    assert not torch.allclose(ours[:, :, :4], latents[:, :, :4])
    short = latents[:, :, :4]
    assert normalize_first_frames(short) is short


def test_presets_follow_the_release():
    lite, pro = get_preset("kandinsky5-i2v-lite"), get_preset("kandinsky5-i2v-pro")
    for p in (lite, pro):
        assert p.dit.visual_cond and p.family.pipeline is Kandinsky5I2V
        assert (p.width, p.height, p.frames, p.fps) == (768, 512, 121, 24)
        assert (p.sampler.steps, p.sampler.guidance, p.sampler.shift) == (50, 5.0, 10.0)
    assert (lite.dit.model_dim, pro.dit.model_dim) == (1792, 4096)
    assert lite.hub_repo == "kandinskylab/Kandinsky-5.0-I2V-Lite-5s"
    assert pro.diffusers_repo == "kandinskylab/Kandinsky-5.0-I2V-Pro-sft-5s-Diffusers"
    assert (lite.dit_file, pro.dit_file) == ("kandinsky5lite_i2v_5s", "kandinsky5pro_i2v_sft_5s")
    r = lite.request("a red ball")
    with pytest.raises(CineforgeError, match="image-to-video"):
        lite.family.check_request(lite, r)
    lite.family.check_request(lite, dataclasses.replace(r, image=torch.zeros(1, 3, 8, 8)))


@pytest.mark.parametrize("name", ["kandinsky5-i2v-lite", "kandinsky5-i2v-pro"])
def test_full_size_dits_load_strictly(name):
    """The release's DiT names and shapes (diffusers' module tree, which the official map
    reads) load strictly; parameter counts printed."""
    from diffusers import Kandinsky5Transformer3DModel

    c = get_preset(name).dit
    with torch.device("meta"):
        dit = Kandinsky5DiT(c)
        ref = Kandinsky5Transformer3DModel(
            in_visual_dim=c.in_channels, in_text_dim=c.text_dim, in_text_dim2=c.pooled_dim,
            time_dim=c.time_dim, out_visual_dim=c.out_channels, patch_size=c.patch_size,
            model_dim=c.model_dim, ff_dim=c.ff_dim, num_text_blocks=c.num_text_blocks,
            num_visual_blocks=c.num_visual_blocks, axes_dims=c.axes_dims, visual_cond=True)
    state = ref.state_dict()
    check_state_dict(dit, K5_DIT_FROM_DIFFUSERS.convert(state))
    check_state_dict(dit, K5_DIT_FROM_OFFICIAL.convert(state))
    assert dit.visual_embeddings.in_layer.weight.shape[1] == 4 * (2 * 16 + 1)
    print(f"{name} DiT parameters: {sum(p.numel() for p in dit.parameters()):,}")
