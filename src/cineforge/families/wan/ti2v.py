"""Wan 2.2 TI2V-5B (Wan-Video/Wan2.2, ``wan/configs/wan_ti2v_5B.py``): Wan's DiT at 5B
over the 48-channel Wan 2.2 VAE (16x16 spatial, 4x temporal; ``vae22.py``), umT5-XXL text.

The DiT is Wan 2.1's (``WanDiT``) with 48 input and output channels: dim 3072, 24 heads of
128, 30 layers, FFN 14336, patch 1x2x2, so one token covers 32x32 pixels. The release
samples 121 frames at 1280x704 and 24 fps, 50 steps, guidance 5, shift 5. One model does
text-to-video and image-to-video: with an image, the first latent frame is the encoded image,
kept clean with time 0 on its tokens (per-token timesteps, diffusers' ``expand_timesteps``;
``ti2v_dit.py``, ``ti2v_pipeline.py``).

This module holds the family object ``WAN22_TI2V`` and its presets.
"""

from __future__ import annotations

import dataclasses

from cineforge.families.family import (
    MINILM,
    Family,
    Preset,
    SamplerDefaults,
)
from cineforge.families.wan import UMT5_XXL, WAN_NEGATIVE, dit_files, wan_layouts
from cineforge.families.wan.dit import WanDiTConfig
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.families.wan.ti2v_dit import WanTI2VDiT
from cineforge.families.wan.ti2v_pipeline import TextImageToVideo
from cineforge.families.wan.vae22 import WAN_VAE_2_2, WAN_VAE_2_2_TINY, Wan22VAE
from cineforge.families.wan.vae22_keys import WAN22_VAE_FROM_DIFFUSERS, WAN22_VAE_FROM_OFFICIAL

# Official TI2V-5B size (wan/configs/wan_ti2v_5B.py).
WAN_DIT_TI2V_5B = WanDiTConfig(
    dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48, out_channels=48
)
# Tiny: 2 heads x 16, 2 layers, 48 channels (the VAE's); builds and runs in milliseconds.
WAN_DIT_TI2V_TINY = WanDiTConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16,
    in_channels=48, out_channels=48,
)

WAN22_TI2V = Family(
    name="wan2.2-ti2v",
    dit_class=WanTI2VDiT,
    vae_class=Wan22VAE,
    tiny_dit=WAN_DIT_TI2V_TINY,
    tiny_vae=WAN_VAE_2_2_TINY,
    layouts=wan_layouts(*dit_files(WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL),
                        vae_file="Wan2.2_VAE.pth", vae_diffusers=WAN22_VAE_FROM_DIFFUSERS,
                        vae_official=WAN22_VAE_FROM_OFFICIAL),
    pipeline=TextImageToVideo,
    text_encoder=UMT5_XXL,
)

WAN22_TI2V_5B = Preset(
    name="wan2.2-ti2v-5b",
    summary="Wan 2.2 TI2V 5B text/image-to-video, 720p at 24 fps",
    family=WAN22_TI2V,
    dit=WAN_DIT_TI2V_5B,
    vae=WAN_VAE_2_2,
    width=1280,
    height=704,
    frames=121,
    fps=24,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=5.0, negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.2-TI2V-5B",
    diffusers_repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
)

# Random-weight sized for tests and CI, fed by the embedded MiniLM text encoder.
WAN22_TI2V_TINY = dataclasses.replace(
    WAN22_TI2V_5B,
    name="wan2.2-ti2v-tiny",
    summary="Wan 2.2 TI2V architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN_DIT_TI2V_TINY, text_dim=384, text_len=77),
    vae=WAN_VAE_2_2_TINY,
    text_encoder=MINILM,
    width=64,
    height=64,
    frames=9,
    sampler=SamplerDefaults(steps=4, guidance=5.0, shift=5.0),
    hub_repo=None,
    diffusers_repo=None,
)

PRESETS = (WAN22_TI2V_5B, WAN22_TI2V_TINY)
