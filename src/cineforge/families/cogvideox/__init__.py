"""CogVideoX (THUDM/CogVideo): an expert-adaLN DiT over joined T5 and video tokens, a 3D
causal VAE, discrete-time v-prediction sampling.

    dit.py        CogVideoXDiT, CogVideoXDiTConfig and the release sizes (2B, 5B, 1.5-5B, tiny)
    dit_keys.py   diffusers DiT key map
    vae.py        CogVideoXVAE, CogVideoXVAEConfig (8x8 spatial, 4x temporal, 16 channels)
    vae_keys.py   diffusers VAE key map
    text.py       T5-v1.1-XXL as the release runs it (226 tokens, unmasked)
    pipeline.py   CogVideoX (text-to-video; DDIM or DPM, dynamic guidance)
    i2v.py        CogVideoXI2V (CogVideoX-5B-I2V: image latents as extra DiT channels)

This module holds the family objects ``COGVIDEOX`` and ``COGVIDEOX_I2V`` and their presets.
The releases are diffusers folders (THUDM/CogVideoX-2b, -5b, -5b-I2V, CogVideoX1.5-5B:
``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``). Settings are
the release's: size, frames and fps of the model cards (720x480, 49 frames at 8 fps; 1.5:
1360x768, 81 frames at 16 fps), 50 steps, guidance 6; the scheduler config's SNR shift
(``snr_shift_scale``: 2B 3.0, 5B, 5B-I2V and 1.5 1.0) is the request's ``shift``; DDIM for
2B, the DPM solver with dynamic guidance for 5B, 5B-I2V and 1.5 (the CogVideo repo's
recommendation). VAE scaling factors: 2B 1.15258426, 5B and 1.5 0.7.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox.dit import (
    COGVIDEOX1_5_5B,
    COGVIDEOX_2B,
    COGVIDEOX_5B,
    COGVIDEOX_5B_I2V,
    COGVIDEOX_DIT_TINY,
    CogVideoXDiT,
)
from cineforge.families.cogvideox.dit_keys import COGVIDEOX_DIT_FROM_DIFFUSERS
from cineforge.families.cogvideox.i2v import CogVideoXI2V
from cineforge.families.cogvideox.pipeline import CogVideoX
from cineforge.families.cogvideox.text import CogVideoXT5
from cineforge.families.cogvideox.vae import COGVIDEOX_VAE, COGVIDEOX_VAE_TINY, CogVideoXVAE
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.families.family import (
    CINEFORGE_LAYOUT,
    Family,
    Layout,
    Preset,
    SamplerDefaults,
    TextEncoderSpec,
    WeightFile,
    download_hint,
)

T5_DIRS = ("text_encoder", "tokenizer")


def _load_t5(preset: Preset, folder: Path | None, layout: str | None, dtype: torch.dtype):
    """T5-v1.1-XXL from the weights folder's ``text_encoder/`` and ``tokenizer/`` (every
    layout; else from ``preset.text_repos`` or the preset's own repositories), run as the
    releases run it: ``preset.max_text_len`` tokens, no attention mask, the padding rows'
    states kept (``text.CogVideoXT5``). Kandinsky 4.0 reads CogVideoX-5B's."""
    from cineforge.weights.text_encoders import load_t5_encoder

    repos = preset.text_repos or preset.hub_repos
    if folder is None or not (repos or (Path(folder) / T5_DIRS[0]).is_dir()):
        raise CineforgeError(f"{preset.name} reads its T5 text encoder from the weights folder "
                             f"({', '.join(d + '/' for d in T5_DIRS)}); "
                             + download_hint(preset), fields=("weights",))
    model, tokenizer = load_t5_encoder(folder, repos=repos, dtype=dtype)
    return CogVideoXT5(model, tokenizer, max_length=preset.max_text_len), None


T5_XXL = TextEncoderSpec("t5-v1.1-xxl", 4096, _load_t5)

COGVIDEOX = Family(
    name="cogvideox",
    dit_class=CogVideoXDiT,
    vae_class=CogVideoXVAE,
    tiny_dit=COGVIDEOX_DIT_TINY,
    tiny_vae=COGVIDEOX_VAE_TINY,
    layouts={
        "cineforge": dataclasses.replace(CINEFORGE_LAYOUT, text_dirs=T5_DIRS),
        "diffusers": Layout(
            "model_index.json",
            dit=WeightFile("transformer", "diffusion_pytorch_model", COGVIDEOX_DIT_FROM_DIFFUSERS),
            vae=WeightFile("vae", "diffusion_pytorch_model", COGVIDEOX_VAE_FROM_DIFFUSERS),
            text_dirs=T5_DIRS,
        ),
    },
    pipeline=CogVideoX,
    text_encoder=T5_XXL,
)

COGVIDEOX_I2V = dataclasses.replace(
    COGVIDEOX, name="cogvideox-i2v", pipeline=CogVideoXI2V,
    tiny_dit=dataclasses.replace(COGVIDEOX_DIT_TINY, positions="rope", in_channels=32,
                                 learned_positions=True))

_VAE_5B = dataclasses.replace(COGVIDEOX_VAE, scaling_factor=0.7)

COGVIDEOX_2B_PRESET = Preset(
    name="cogvideox-2b",
    summary="CogVideoX 2B text-to-video, 6 s at 720x480",
    family=COGVIDEOX,
    dit=COGVIDEOX_2B,
    vae=COGVIDEOX_VAE,
    width=720,
    height=480,
    frames=49,
    fps=8,
    sampler=SamplerDefaults(steps=50, guidance=6.0, shift=3.0, solver="ddim"),
    hub_repo="THUDM/CogVideoX-2b",
)
COGVIDEOX_5B_PRESET = dataclasses.replace(
    COGVIDEOX_2B_PRESET,
    name="cogvideox-5b",
    summary="CogVideoX 5B text-to-video, 6 s at 720x480",
    dit=COGVIDEOX_5B,
    vae=_VAE_5B,
    sampler=SamplerDefaults(steps=50, guidance=6.0, shift=1.0, solver="dpm"),
    hub_repo="THUDM/CogVideoX-5b",
)
COGVIDEOX1_5_5B_PRESET = dataclasses.replace(
    COGVIDEOX_5B_PRESET,
    name="cogvideox1.5-5b",
    summary="CogVideoX 1.5 5B text-to-video, 5 s at 1360x768",
    dit=COGVIDEOX1_5_5B,
    width=1360,
    height=768,
    frames=81,
    fps=16,
    hub_repo="THUDM/CogVideoX1.5-5B",
)
COGVIDEOX_5B_I2V_PRESET = dataclasses.replace(
    COGVIDEOX_5B_PRESET,
    name="cogvideox-5b-i2v",
    summary="CogVideoX 5B image-to-video, 6 s at 720x480",
    family=COGVIDEOX_I2V,
    dit=COGVIDEOX_5B_I2V,
    hub_repo="THUDM/CogVideoX-5b-I2V",
)
# The 2B architecture at toy size, random weights (tests; bring your own weights and a T5
# of the tiny DiT's width in the weights folder's text_encoder/ and tokenizer/).
COGVIDEOX_TINY_PRESET = dataclasses.replace(
    COGVIDEOX_2B_PRESET,
    name="cogvideox-tiny",
    summary="CogVideoX architecture at toy size (tests; bring your own weights)",
    dit=COGVIDEOX_DIT_TINY,
    vae=COGVIDEOX_VAE_TINY,
    text_encoder=dataclasses.replace(T5_XXL, dim=COGVIDEOX_DIT_TINY.text_dim),
    width=64,
    height=64,
    frames=9,
    sampler=SamplerDefaults(steps=4, guidance=6.0, shift=3.0, solver="ddim"),
    hub_repo=None,
)

# The I2V architecture at toy size: its learned positions fix 9 frames at 96x64.
COGVIDEOX_I2V_TINY_PRESET = dataclasses.replace(
    COGVIDEOX_TINY_PRESET,
    name="cogvideox-i2v-tiny",
    summary="CogVideoX I2V architecture at toy size (tests; bring your own weights)",
    family=COGVIDEOX_I2V,
    dit=COGVIDEOX_I2V.tiny_dit,
    width=96,
)

PRESETS = (COGVIDEOX_2B_PRESET, COGVIDEOX_5B_PRESET, COGVIDEOX1_5_5B_PRESET,
           COGVIDEOX_5B_I2V_PRESET, COGVIDEOX_TINY_PRESET, COGVIDEOX_I2V_TINY_PRESET)
