"""Wan 2.1 I2V 14B (Wan-Video/Wan2.1, ``wan/configs/wan_i2v_14B.py``): the 14B DiT with 36
input channels (16 noise + 4 mask + 16 first-frame latents) and a CLIP image path (ViT-H/14
states, width 1280, 257 tokens: ``img_emb`` and image keys/values in every
cross-attention), Wan 2.1's VAE and umT5-XXL. Two releases share the architecture: 480P
(832x480, shift 3) and 720P (1280x720, shift 5); both sample 81 frames at 16 fps with 40
steps and guidance 5 (``generate.py``'s I2V defaults).

This module holds the family object ``WAN21_I2V`` and its presets.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.families.family import (
    MINILM,
    Family,
    Preset,
    SamplerDefaults,
)
from cineforge.families.wan import (
    UMT5_XXL,
    WAN21_T2V_14B,
    WAN_NEGATIVE,
    dit_files,
    wan_layouts,
)
from cineforge.families.wan.dit import WAN_DIT_14B, WAN_DIT_TINY, WanDiT
from cineforge.families.wan.i2v import ImageToVideo
from cineforge.families.wan.i2v_keys import WAN_I2V_DIT_FROM_DIFFUSERS, WAN_I2V_DIT_FROM_OFFICIAL
from cineforge.families.wan.image_encoder import load_image_encoder
from cineforge.families.wan.vae import WAN_VAE_TINY, WanVAE

WAN_DIT_I2V_14B = dataclasses.replace(WAN_DIT_14B, in_channels=36, image_dim=1280)
# Tiny: the T2V tiny DiT with 36 input channels and a 24-wide CLIP of 17 tokens
# (a 32 x 32 image in 8 x 8 patches + the class token).
WAN_DIT_I2V_TINY = dataclasses.replace(WAN_DIT_TINY, in_channels=36, image_dim=24,
                                       image_tokens=17)


def _load_clip(preset: Preset, folder: Path, layout: str, dtype: torch.dtype):
    return None if preset.dit.image_dim is None else load_image_encoder(folder, layout, dtype)


WAN21_I2V = Family(
    name="wan2.1-i2v",
    dit_class=WanDiT,
    vae_class=WanVAE,
    tiny_dit=WAN_DIT_I2V_TINY,
    tiny_vae=WAN_VAE_TINY,
    layouts=wan_layouts(*dit_files(WAN_I2V_DIT_FROM_DIFFUSERS, WAN_I2V_DIT_FROM_OFFICIAL)),
    pipeline=ImageToVideo,
    text_encoder=UMT5_XXL,
    image_encoder=_load_clip,
)

WAN21_I2V_480P = dataclasses.replace(
    WAN21_T2V_14B,
    name="wan2.1-i2v-14b-480p",
    summary="Wan 2.1 image-to-video 14B, 480p",
    family=WAN21_I2V,
    dit=WAN_DIT_I2V_14B,
    width=832,
    height=480,
    sampler=SamplerDefaults(steps=40, guidance=5.0, shift=3.0, negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.1-I2V-14B-480P",
    diffusers_repo="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
)

WAN21_I2V_720P = dataclasses.replace(
    WAN21_I2V_480P,
    name="wan2.1-i2v-14b-720p",
    summary="Wan 2.1 image-to-video 14B, 720p",
    width=1280,
    height=720,
    sampler=dataclasses.replace(WAN21_I2V_480P.sampler, shift=5.0),
    hub_repo="Wan-AI/Wan2.1-I2V-14B-720P",
    diffusers_repo="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
)

# Random-weight sized for tests and CI, fed by the embedded MiniLM text encoder; its tiny
# CLIP lives in the weights folder's image_encoder/ like the release's.
WAN21_I2V_TINY = dataclasses.replace(
    WAN21_I2V_480P,
    name="wan2.1-i2v-tiny",
    summary="Wan 2.1 I2V architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN_DIT_I2V_TINY, text_dim=384, text_len=77),
    vae=WAN_VAE_TINY,
    text_encoder=MINILM,
    width=32,
    height=32,
    frames=5,
    sampler=SamplerDefaults(steps=2, guidance=5.0, shift=3.0),
    hub_repo=None,
    diffusers_repo=None,
)

PRESETS = (WAN21_I2V_480P, WAN21_I2V_720P, WAN21_I2V_TINY)
