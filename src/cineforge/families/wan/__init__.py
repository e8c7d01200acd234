"""Wan 2.1 (Wan-Video/Wan2.1): text-to-video DiT, causal 3D VAE, umT5-XXL text states.

    dit.py        WanDiT, WanDiTConfig and the release sizes (1.3B, 14B, tiny)
    vae.py        WanVAE, WanVAEConfig (Wan 2.1's causal VAE, 8x8 spatial, 4x temporal)
    dit_keys.py   official / diffusers DiT key maps
    vae_keys.py   official / diffusers VAE key maps
    pipeline.py   TextToVideo (text-to-video, text-to-image, video-to-video)

Image-to-video and Wan 2.2 A14B, each with its own family module:

    i2v.py            ImageToVideo (mask + first-frame latents, CLIP states)
    i2v_keys.py       official / diffusers key maps of the I2V DiT's image path
    image_encoder.py  CLIP ViT-H/14 image states (Wan 2.1 I2V)
    i2v_family.py     family WAN21_I2V, presets wan2.1-i2v-14b-480p / -720p
    experts.py        WanExperts: high- and low-noise DiTs switched at a boundary
    a14b.py           families and presets of Wan 2.2 T2V / I2V A14B

This module holds the family object ``WAN21`` and its presets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.errors import CineforgeError
from cineforge.families.family import (
    CINEFORGE_LAYOUT,
    MINILM,
    Family,
    Layout,
    Preset,
    SamplerDefaults,
    TextEncoderSpec,
    WeightFile,
    download_hint,
)
from cineforge.families.wan.dit import WAN_DIT_1_3B, WAN_DIT_14B, WAN_DIT_TINY, WanDiT
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.families.wan.pipeline import TextToVideo
from cineforge.families.wan.vae import WAN_VAE_2_1, WAN_VAE_TINY, WanVAE
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS, WAN_VAE_FROM_OFFICIAL
from cineforge.weights.keymap import KeyMap


def _load_umt5(preset: Preset, folder: Path | None, layout: str | None, dtype: torch.dtype):
    from cineforge.weights.text_encoders import load_umt5

    if folder is None:
        raise CineforgeError(f"{preset.name} needs its umT5 text encoder; {download_hint(preset)}",
                             fields=("weights",))
    return load_umt5(Path(folder), layout=layout, dtype=dtype), None


UMT5_XXL = TextEncoderSpec("umt5-xxl", 4096, _load_umt5)

def dit_files(diffusers: KeyMap, official: KeyMap) -> tuple[WeightFile, WeightFile]:
    """A single Wan DiT's files: ``transformer/`` of a diffusers folder, the top level of an
    official one."""
    return (WeightFile("transformer", "diffusion_pytorch_model", diffusers),
            WeightFile("", "diffusion_pytorch_model", official))


def wan_layouts(
    dit_diffusers: WeightFile, dit_official: WeightFile, *, vae_file: str = "Wan2.1_VAE.pth",
    vae_diffusers: KeyMap = WAN_VAE_FROM_DIFFUSERS, vae_official: KeyMap = WAN_VAE_FROM_OFFICIAL,
) -> dict[str, Layout]:
    """The three folder layouts every Wan family reads (cineforge, diffusers, official, the
    official one marked by its VAE file), with the family's DiT files and VAE key maps."""
    return {
        "cineforge": CINEFORGE_LAYOUT,
        "diffusers": Layout("model_index.json", dit=dit_diffusers,
                            vae=WeightFile("vae", "diffusion_pytorch_model", vae_diffusers)),
        "official": Layout(vae_file, dit=dit_official,
                           vae=WeightFile("", vae_file, vae_official)),
    }


WAN21 = Family(
    name="wan2.1",
    dit_class=WanDiT,
    vae_class=WanVAE,
    tiny_dit=WAN_DIT_TINY,
    tiny_vae=WAN_VAE_TINY,
    layouts=wan_layouts(*dit_files(WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL)),
    pipeline=TextToVideo,
    text_encoder=UMT5_XXL,
)

# Wan 2.1's recommended negative prompt is long and Chinese; this is our short English one.
WAN_NEGATIVE = (
    "blurry, low quality, worst quality, static, still picture, overexposed, jpeg artifacts, "
    "deformed, distorted, subtitles, watermark, messy background"
)

WAN21_T2V_1_3B = Preset(
    name="wan2.1-t2v-1.3b",
    summary="Wan 2.1 text-to-video 1.3B, 480p",
    family=WAN21,
    dit=WAN_DIT_1_3B,
    vae=WAN_VAE_2_1,
    width=832,
    height=480,
    frames=81,
    fps=16,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=3.0, negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.1-T2V-1.3B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
)

WAN21_T2V_14B = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-14b",
    summary="Wan 2.1 text-to-video 14B, 720p",
    dit=WAN_DIT_14B,
    width=1280,
    height=720,
    sampler=dataclasses.replace(WAN21_T2V_1_3B.sampler, shift=5.0),
    hub_repo="Wan-AI/Wan2.1-T2V-14B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
)

# Random-weight sized for tests and CI: the Wan architecture at toy width, fed by the
# embedded MiniLM text encoder so the whole CLI path runs offline in well under a second.
WAN21_T2V_TINY = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-tiny",
    summary="Wan 2.1 architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN_DIT_TINY, text_dim=384, text_len=77),
    vae=WAN_VAE_TINY,
    text_encoder=MINILM,
    width=64,
    height=64,
    frames=9,
    sampler=SamplerDefaults(steps=4, guidance=5.0, shift=3.0),
    hub_repo=None,
    diffusers_repo=None,
)

PRESETS = (WAN21_T2V_1_3B, WAN21_T2V_14B, WAN21_T2V_TINY)
