"""Kandinsky 5 (kandinskylab/kandinsky-5): video and image DiTs over Qwen2.5-VL token states
and a CLIP pooled vector; the HunyuanVideo VAE for video, the FLUX VAE for images.

    dit.py                 Kandinsky5DiT, its config and the release sizes (Lite, Pro, image)
    hunyuan_vae.py         HunyuanVAE (video), flux_vae.py FluxVAE (images)
    *_keys.py              official / diffusers key maps of each
    pipeline.py            Kandinsky5 (text-to-video; text-to-image with ``video=False``)
    i2v.py                 Kandinsky5I2V (image-to-video: first frame, ``visual_cond`` mask)

This module holds the three family objects (``KANDINSKY5`` video, ``KANDINSKY5_I2V``,
``KANDINSKY5_IMAGE``) and their presets. Sampler settings are the release's: steps and
guidance from its configs/k5_*.yaml (model.num_steps, model.guidance_weight); shift from the
config's metrics.scheduler_scale where it has one (10 s: 10, distilled 5 s: 5), else the
release pipelines' defaults (Kandinsky5T2VPipeline: 10.0, Kandinsky5T2IPipeline: 3.0). Size:
the pipelines' defaults (768x512 video, 1024x1024 image); frames: seconds * 24 + 1. Files:
the release repo holds model/<dit_file>.safetensors; its code takes the VAE from vae_repo
(folder vae/, diffusers format) and the text encoders from text_repos.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.errors import CineforgeError
from cineforge.families.family import (
    CINEFORGE_LAYOUT,
    Family,
    Layout,
    Preset,
    SamplerDefaults,
    TextEncoderSpec,
    WeightFile,
)
from cineforge.families.kandinsky5.dit import (
    K5_DIT_IMAGE_LITE,
    K5_DIT_TINY,
    K5_DIT_VIDEO_LITE,
    K5_DIT_VIDEO_PRO,
    Kandinsky5DiT,
)
from cineforge.families.kandinsky5.dit_keys import K5_DIT_FROM_DIFFUSERS, K5_DIT_FROM_OFFICIAL
from cineforge.families.kandinsky5.flux_vae import FLUX_VAE, FLUX_VAE_TINY, FluxVAE
from cineforge.families.kandinsky5.flux_vae_keys import FLUX_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.hunyuan_vae import HUNYUAN_VAE, HUNYUAN_VAE_TINY, HunyuanVAE
from cineforge.families.kandinsky5.hunyuan_vae_keys import HUNYUAN_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.i2v import Kandinsky5I2V
from cineforge.families.kandinsky5.pipeline import Kandinsky5
from cineforge.models.text_encoders import K5_IMAGE_TEMPLATE, K5_VIDEO_TEMPLATE, PromptTemplate

# Text folders (Qwen model, Qwen tokenizer, CLIP model, CLIP tokenizer) of each layout.
_DIFFUSERS_TEXT = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
_OFFICIAL_TEXT = ("text_encoder", "text_encoder", "text_encoder2", "text_encoder2")


def _layouts(vae_dir: str, vae_keys) -> dict[str, Layout]:
    """Kandinsky 5's layouts; the VAE folder is in diffusers format in both release layouts."""
    return {
        "cineforge": dataclasses.replace(CINEFORGE_LAYOUT, text_dirs=_DIFFUSERS_TEXT),
        "diffusers": Layout(
            "model_index.json",
            dit=WeightFile("transformer", "diffusion_pytorch_model", K5_DIT_FROM_DIFFUSERS),
            vae=WeightFile("vae", "diffusion_pytorch_model", vae_keys),
            text_dirs=_DIFFUSERS_TEXT,
        ),
        "official": Layout(
            "model/{preset.dit_file}.safetensors",
            dit=WeightFile("model", "{preset.dit_file}", K5_DIT_FROM_OFFICIAL),
            vae=WeightFile(vae_dir, "diffusion_pytorch_model", vae_keys, repo="vae_repo"),
            text_dirs=_OFFICIAL_TEXT,
        ),
    }


def text_sources(preset: Preset, folder: Path | None, layout: str | None) -> list[Path | str]:
    """Kandinsky's (Qwen model, Qwen tokenizer, CLIP model, CLIP tokenizer): the layout's
    folders where ``folder`` holds them, else the hub ids of ``preset.text_repos``."""
    repos = [preset.text_repos[0]] * 2 + [preset.text_repos[1]] * 2 if preset.text_repos \
        else [None] * 4
    dirs = (preset.family.layouts[layout].text_dirs if folder is not None and layout is not None
            else ()) or (None,) * 4
    paths = [None if d is None else Path(folder) / d for d in dirs]
    found = [p if p is not None and p.is_dir() else r for p, r in zip(paths, repos, strict=True)]
    if None in found:
        raise CineforgeError(f"preset {preset.name} takes its text encoders from the weights "
                             f"folder, but {folder} has no {', '.join(dict.fromkeys(dirs))}",
                             fields=("weights",))
    return found


def _text_loader(template: PromptTemplate):
    def load(preset: Preset, folder: Path | None, layout: str | None, dtype: torch.dtype):
        """Qwen2.5-VL (``dtype``) and CLIP (fp32: small; its pooled vector is cast with
        the DiT's inputs)."""
        from cineforge.weights.text_encoders import load_clip, load_qwen25vl

        qwen, qwen_tokens, clip, clip_tokens = text_sources(preset, folder, layout)
        text = load_qwen25vl(qwen, tokenizer=qwen_tokens, dtype=dtype,
                             max_length=preset.max_text_len, template=template)
        return text, load_clip(clip, tokenizer=clip_tokens)

    return load


QWEN_VIDEO = TextEncoderSpec("qwen2.5-vl+clip-l", 3584, _text_loader(K5_VIDEO_TEMPLATE),
                             pooled_dim=768)
QWEN_IMAGE = dataclasses.replace(QWEN_VIDEO, load=_text_loader(K5_IMAGE_TEMPLATE))

KANDINSKY5 = Family(
    name="kandinsky5",
    dit_class=Kandinsky5DiT,
    vae_class=HunyuanVAE,
    tiny_dit=K5_DIT_TINY,
    tiny_vae=HUNYUAN_VAE_TINY,
    layouts=_layouts("vae", HUNYUAN_VAE_FROM_DIFFUSERS),
    pipeline=Kandinsky5,
    text_encoder=QWEN_VIDEO,
    pipeline_options={"video": True},
)
KANDINSKY5_I2V = dataclasses.replace(KANDINSKY5, name="kandinsky5-i2v", pipeline=Kandinsky5I2V,
                                     tiny_dit=dataclasses.replace(K5_DIT_TINY, visual_cond=True))
KANDINSKY5_IMAGE = Family(
    name="kandinsky5-image",
    dit_class=Kandinsky5DiT,
    vae_class=FluxVAE,
    tiny_dit=K5_DIT_TINY,
    tiny_vae=FLUX_VAE_TINY,
    layouts=_layouts("flux/vae", FLUX_VAE_FROM_DIFFUSERS),
    pipeline=Kandinsky5,
    text_encoder=QWEN_IMAGE,
    pipeline_options={"video": False},
)

K5_NEGATIVE = (
    "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, "
    "ugly, deformed, walking backwards"
)
K5_TEXT_REPOS = ("Qwen/Qwen2.5-VL-7B-Instruct", "openai/clip-vit-large-patch14")
K5_HUB = "kandinskylab/Kandinsky-5.0-"

K5_T2V_LITE = Preset(
    name="kandinsky5-t2v-lite",
    summary="Kandinsky 5.0 Video Lite 2B text-to-video, SFT, 5 s at 512 px",
    family=KANDINSKY5,
    dit=K5_DIT_VIDEO_LITE,
    vae=HUNYUAN_VAE,
    width=768,
    height=512,
    frames=121,
    fps=24,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=10.0, solver="euler",
                            negative=K5_NEGATIVE),
    hub_repo=K5_HUB + "T2V-Lite-sft-5s",
    diffusers_repo=K5_HUB + "T2V-Lite-sft-5s-Diffusers",
    text_len=256,
    dit_file="kandinsky5lite_t2v_sft_5s",
    vae_repo="hunyuanvideo-community/HunyuanVideo",
    text_repos=K5_TEXT_REPOS,
)


def _variant(base: Preset, name: str, tag: str, summary: str, **changes) -> Preset:
    """A Kandinsky 5 video release: ``tag`` (e.g. ``sft-10s``) names its repos and DiT file."""
    kind = "Pro" if base.dit is K5_DIT_VIDEO_PRO else "Lite"
    fields = dict(
        hub_repo=f"{K5_HUB}T2V-{kind}-{tag}",
        diffusers_repo=f"{K5_HUB}T2V-{kind}-{tag}-Diffusers",
        dit_file=f"kandinsky5{kind.lower()}_t2v_{tag.replace('-', '_')}",
    )
    return dataclasses.replace(base, name=name, summary=summary, **{**fields, **changes})


_NOCFG = dataclasses.replace(K5_T2V_LITE.sampler, guidance=1.0, negative="")
# The 10 s configs run NABLA (P 0.9, sliding-tile window 11x3x3: the "nabla" backend's
# defaults); the 5 s ones dense attention.
_NABLA_LITE = dataclasses.replace(K5_DIT_VIDEO_LITE, attention="nabla")

K5_T2V_LITE_10S = _variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-10s", "sft-10s",
    "Kandinsky 5.0 Video Lite, SFT, 10 s (NABLA attention)", frames=241, dit=_NABLA_LITE)
K5_T2V_LITE_NOCFG = _variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-nocfg", "nocfg-5s",
    "Kandinsky 5.0 Video Lite, CFG-distilled (guidance 1), 5 s", sampler=_NOCFG)
K5_T2V_LITE_NOCFG_10S = _variant(
    K5_T2V_LITE_10S, "kandinsky5-t2v-lite-nocfg-10s", "nocfg-10s",
    "Kandinsky 5.0 Video Lite, CFG-distilled, 10 s", sampler=_NOCFG)
K5_T2V_LITE_DISTILL = _variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-distill", "distilled16steps-5s",
    "Kandinsky 5.0 Video Lite, distilled to 16 steps, 5 s",
    sampler=dataclasses.replace(_NOCFG, steps=16, shift=5.0))
K5_T2V_LITE_DISTILL_10S = _variant(
    K5_T2V_LITE_10S, "kandinsky5-t2v-lite-distill-10s", "distilled16steps-10s",
    "Kandinsky 5.0 Video Lite, distilled to 16 steps, 10 s",
    sampler=dataclasses.replace(_NOCFG, steps=16))
K5_T2V_PRO = _variant(
    dataclasses.replace(K5_T2V_LITE, dit=K5_DIT_VIDEO_PRO), "kandinsky5-t2v-pro", "sft-5s",
    "Kandinsky 5.0 Video Pro 19B text-to-video, SFT, 5 s at 512 px")
K5_T2V_PRO_10S = _variant(  # diffusers lists no Pro 10 s conversion
    K5_T2V_PRO, "kandinsky5-t2v-pro-10s", "sft-10s",
    "Kandinsky 5.0 Video Pro, SFT, 10 s (NABLA attention)", frames=241,
    dit=dataclasses.replace(K5_DIT_VIDEO_PRO, attention="nabla"), diffusers_repo=None)

# Image-to-video (configs/k5_lite_i2v_5s_sft_sd.yaml, k5_pro_i2v_5s_sft_sd.yaml): the T2V
# sizes and settings (50 steps, guidance 5, scheduler_scale 10, 512 px "sd" RoPE scale).
K5_I2V_LITE = dataclasses.replace(
    K5_T2V_LITE, name="kandinsky5-i2v-lite", family=KANDINSKY5_I2V,
    summary="Kandinsky 5.0 Video Lite 2B image-to-video, 5 s at 512 px",
    hub_repo=K5_HUB + "I2V-Lite-5s", diffusers_repo=K5_HUB + "I2V-Lite-5s-Diffusers",
    dit_file="kandinsky5lite_i2v_5s")
K5_I2V_PRO = dataclasses.replace(
    K5_I2V_LITE, name="kandinsky5-i2v-pro", dit=K5_DIT_VIDEO_PRO,
    summary="Kandinsky 5.0 Video Pro 19B image-to-video, SFT, 5 s at 512 px",
    hub_repo=K5_HUB + "I2V-Pro-sft-5s", diffusers_repo=K5_HUB + "I2V-Pro-sft-5s-Diffusers",
    dit_file="kandinsky5pro_i2v_sft_5s")

K5_T2I_LITE = dataclasses.replace(
    K5_T2V_LITE,
    name="kandinsky5-t2i-lite",
    summary="Kandinsky 5.0 Image Lite 6B text-to-image, 1024 px",
    family=KANDINSKY5_IMAGE,
    dit=K5_DIT_IMAGE_LITE,
    vae=FLUX_VAE,
    width=1024,
    height=1024,
    frames=1,
    sampler=SamplerDefaults(steps=50, guidance=3.5, shift=3.0, solver="euler"),
    hub_repo=K5_HUB + "T2I-Lite",
    diffusers_repo=K5_HUB + "T2I-Lite-sft-Diffusers",
    text_len=512,
    dit_file="kandinsky5lite_t2i",
    vae_repo="black-forest-labs/FLUX.1-dev",
)

# The architectures at toy size, random weights (tests; bring your own weights and text
# encoders, in the weights folder: tiny Qwen2.5-VL and CLIP with the tiny DiT's widths).
_TINY_TEXT = dict(text_len=16, text_repos=(), hub_repo=None, diffusers_repo=None, vae_repo=None,
                  sampler=SamplerDefaults(steps=4, guidance=5.0, shift=3.0, solver="euler"))
K5_T2V_TINY = dataclasses.replace(
    K5_T2V_LITE, name="kandinsky5-t2v-tiny", dit=K5_DIT_TINY, vae=HUNYUAN_VAE_TINY,
    summary="Kandinsky 5 video architecture at toy size (tests; bring your own weights)",
    text_encoder=dataclasses.replace(QWEN_VIDEO, dim=K5_DIT_TINY.text_dim,
                                     pooled_dim=K5_DIT_TINY.pooled_dim),
    width=64, height=64, frames=9, dit_file="kandinsky5_tiny", **_TINY_TEXT)
K5_I2V_TINY = dataclasses.replace(
    K5_T2V_TINY, name="kandinsky5-i2v-tiny", family=KANDINSKY5_I2V,
    dit=KANDINSKY5_I2V.tiny_dit,
    summary="Kandinsky 5 image-to-video architecture at toy size (tests; bring your own weights)")
K5_T2I_TINY = dataclasses.replace(
    K5_T2V_TINY, name="kandinsky5-t2i-tiny", family=KANDINSKY5_IMAGE, vae=FLUX_VAE_TINY,
    summary="Kandinsky 5 image architecture at toy size (tests; bring your own weights)",
    text_encoder=dataclasses.replace(QWEN_IMAGE, dim=K5_DIT_TINY.text_dim,
                                     pooled_dim=K5_DIT_TINY.pooled_dim), frames=1)

PRESETS = (
    K5_T2V_LITE, K5_T2V_LITE_10S, K5_T2V_LITE_NOCFG, K5_T2V_LITE_NOCFG_10S, K5_T2V_LITE_DISTILL,
    K5_T2V_LITE_DISTILL_10S, K5_T2V_PRO, K5_T2V_PRO_10S, K5_I2V_LITE, K5_I2V_PRO, K5_T2I_LITE,
    K5_T2V_TINY, K5_I2V_TINY, K5_T2I_TINY,
)
