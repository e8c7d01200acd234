"""The whole Kandinsky 5 pipeline (text encoders, DiT, sampler, VAE) against diffusers'
Kandinsky5T2VPipeline / Kandinsky5T2IPipeline with identical tiny random weights, fp32."""

from __future__ import annotations

import dataclasses

import diffusers.models.transformers.transformer_kandinsky as diffusers_k5
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    Kandinsky5T2IPipeline,
    Kandinsky5T2VPipeline,
    Kandinsky5Transformer3DModel,
)

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.kandinsky5.dit import K5_DIT_TINY, Kandinsky5DiT
from cineforge.families.kandinsky5.dit_keys import K5_DIT_FROM_DIFFUSERS
from cineforge.families.kandinsky5.flux_vae import FLUX_VAE_TINY, FluxVAE
from cineforge.families.kandinsky5.flux_vae_keys import FLUX_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.hunyuan_vae import HUNYUAN_VAE_TINY, HunyuanVAE
from cineforge.families.kandinsky5.hunyuan_vae_keys import HUNYUAN_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.pipeline import Kandinsky5, release_schedule, video_rope_scale
from cineforge.models.text_encoders import CLIPTextEncoder, PromptTemplate, Qwen25VLTextEncoder
from cineforge.pipelines.common import VideoRequest
from cineforge.sampling import shift_time
from cineforge.weights.keymap import load_strict
from k5_oracles import TorchWithoutBF16, clip_tokenizer, qwen_tokenizer, tiny_clip, tiny_qwen
from oracles import perturb

PROMPT, NEGATIVE = "a red ball bounces", "static, blurry"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads on a busy 2-core machine; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fp32_oracle(monkeypatch):
    monkeypatch.setattr(diffusers_k5, "torch", TorchWithoutBF16())


def _transformer(visual_cond: bool) -> Kandinsky5Transformer3DModel:
    torch.manual_seed(0)
    ref = Kandinsky5Transformer3DModel(
        in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=16,
        patch_size=(1, 2, 2), model_dim=64, ff_dim=128, num_text_blocks=1,
        num_visual_blocks=2, axes_dims=(8, 12, 12), visual_cond=visual_cond,
    )
    return perturb(ref, 1)


def _video_vae() -> AutoencoderKLHunyuanVideo:
    c = HUNYUAN_VAE_TINY
    torch.manual_seed(2)
    return AutoencoderKLHunyuanVideo(
        block_out_channels=c.block_out_channels, latent_channels=c.latent_channels,
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
        spatial_compression_ratio=c.spatial_ratio, temporal_compression_ratio=c.temporal_ratio,
        mid_block_add_attention=c.mid_attention, scaling_factor=c.scaling_factor,
    ).eval()


def _image_vae() -> AutoencoderKL:
    c, n = FLUX_VAE_TINY, len(FLUX_VAE_TINY.dim_mult)
    torch.manual_seed(2)
    ref = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(c.widths), layers_per_block=c.num_res_blocks,
        latent_channels=c.z_dim, norm_num_groups=c.norm_groups,
        scaling_factor=c.scaling_factor, shift_factor=c.shift_factor,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    return perturb(ref, 3, scale=0.02)


def _pair(video: bool, visual_cond: bool):
    """The diffusers pipeline and ours, with the same weights and the same prompt template
    (the crop is our byte-level tokenizer's length of the template's system part)."""
    qwen, clip, transformer = tiny_qwen(), tiny_clip(), _transformer(visual_cond)
    cls, vae = (Kandinsky5T2VPipeline, _video_vae()) if video else (Kandinsky5T2IPipeline,
                                                                    _image_vae())
    ref = cls(transformer=transformer, vae=vae, text_encoder=qwen, tokenizer=qwen_tokenizer(),
              text_encoder_2=clip, tokenizer_2=clip_tokenizer(),
              scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    ref.set_progress_bar_config(disable=True)
    crop = len(qwen_tokenizer()(ref.prompt_template.split("{}")[0])["input_ids"])
    ref.prompt_template_encode_start_idx = crop

    config = dataclasses.replace(K5_DIT_TINY, visual_cond=visual_cond)
    with torch.device("meta"):
        dit = Kandinsky5DiT(config)
        our_vae = HunyuanVAE(HUNYUAN_VAE_TINY) if video else FluxVAE(FLUX_VAE_TINY)
    load_strict(dit, K5_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    keymap = HUNYUAN_VAE_FROM_DIFFUSERS if video else FLUX_VAE_FROM_DIFFUSERS
    load_strict(our_vae, keymap.convert(vae.state_dict()))
    parts = Components(
        dit.eval(), our_vae.eval(),
        text_encoder=Qwen25VLTextEncoder(qwen, qwen_tokenizer(), max_length=40,
                                         template=PromptTemplate(ref.prompt_template, crop)),
        pooled_encoder=CLIPTextEncoder(clip, clip_tokenizer()),
    )
    return ref, Kandinsky5(parts, video=video, schedule="diffusers")


@pytest.mark.parametrize(("guidance", "visual_cond"), [(5.0, True), (1.0, False)])
def test_t2v_matches_diffusers(fp32_oracle, guidance, visual_cond):
    ref, pipe = _pair(video=True, visual_cond=visual_cond)
    r = VideoRequest(prompt=PROMPT, negative=NEGATIVE, width=64, height=64, frames=9, steps=3,
                     guidance=guidance, shift=5.0, solver="euler", seed=7)
    expected = ref(  # the same seed: both draw channel-last noise from one CPU generator
        prompt=PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_frames=9,
        num_inference_steps=3, guidance_scale=guidance,
        generator=torch.Generator().manual_seed(7), output_type="pt",
    ).frames  # B, T, C, H, W in [0, 1]
    video = pipe(r)  # B, C, T, H, W in [-1, 1]
    ours = ((video + 1) / 2).permute(0, 2, 1, 3, 4)
    assert ours.shape == expected.shape == (1, 9, 3, 64, 64)
    err = (ours - expected).abs().max().item()
    print(f"kandinsky5 t2v parity (guidance {guidance}): max abs diff {err:.2e}")
    assert err <= 1e-4
    assert expected.std() > 0.01


def test_t2i_matches_diffusers(fp32_oracle):
    ref, pipe = _pair(video=False, visual_cond=False)
    r = VideoRequest(prompt=PROMPT, negative="", width=64, height=48, frames=1, steps=3,
                     guidance=3.5, shift=3.0, solver="euler", seed=3)
    ref.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.resolutions = [(64, 48)]  # diffusers resizes other sizes to its 1024 px list
    expected = ref(
        prompt=PROMPT, negative_prompt="", height=48, width=64, num_inference_steps=3,
        guidance_scale=3.5, generator=torch.Generator().manual_seed(3), output_type="pt",
    ).image  # B, C, H, W in [0, 1]
    image = pipe(r)[:, :, 0]
    err = ((image + 1) / 2 - expected).abs().max().item()
    print(f"kandinsky5 t2i parity: max abs diff {err:.2e}")
    assert image.shape == expected.shape == (1, 3, 48, 64)
    assert err <= 1e-4
    assert expected.std() > 0.01
    with pytest.raises(CineforgeError, match="one frame"):
        pipe(dataclasses.replace(r, frames=5))


def test_release_schedule_and_rope_scale():
    sigmas, times = release_schedule(4, 5.0)
    want = shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), 5.0)
    torch.testing.assert_close(sigmas, want)
    torch.testing.assert_close(times, want[:-1])
    assert video_rope_scale(512, 768) == (1.0, 2.0, 2.0)
    assert video_rope_scale(1024, 1024) == video_rope_scale(64, 64) == (1.0, 3.16, 3.16)


def test_batch_of_prompts_equals_one_at_a_time():
    """Prompts of different lengths in one batch (padding masked, negative shared) give
    each prompt's own video; the same seed draws the same noise for the first one."""
    _, pipe = _pair(video=True, visual_cond=True)
    r = VideoRequest(prompt=PROMPT, negative=NEGATIVE, width=32, height=32, frames=5, steps=2,
                     guidance=4.0, shift=5.0, solver="euler", seed=1)
    prompts = [PROMPT, "a green cube spins slowly"]
    batch = pipe(r, prompts=prompts)
    first = pipe(r)
    assert batch.shape == (2, 3, 5, 32, 32)
    torch.testing.assert_close(batch[:1], first, atol=1e-5, rtol=0)
    assert (batch[0] - batch[1]).abs().max() > 1e-3
