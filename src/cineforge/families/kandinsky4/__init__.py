"""Kandinsky 4.0 (ai-forever/Kandinsky-4): the distilled 480p "Flash" text-to-video DiT over
T5-v1.1-XXL states, with CogVideoX-5B's VAE.

    dit.py        Kandinsky4DiT, its config, the release size (5.57B) and a tiny one
    dit_keys.py   the official checkpoint's key map
    pipeline.py   Kandinsky4Flash (4 re-noising steps, no guidance; one frame = an image)
    parallel.py   tensor-parallel DiT (DTensor) and its ``torchrun`` entry

This module holds the family object ``KANDINSKY4`` and its presets. The release
(``kandinsky/__init__.py``, ``t2v_pipeline.py``) takes the DiT from ai-forever/kandinsky-4-
t2v-flash (``kandinsky4_distil_512.pt``, fp32) and the VAE, T5 and tokenizer from
THUDM/CogVideoX-5b (``vae/``, ``text_encoder/``, ``tokenizer/``): T5 reads 224 tokens and
runs without an attention mask. Sizes: the release's seven 480p (height, width) pairs
``SIZES``; frames: ``seconds * 8 + 1`` at 8 fps (``seconds * 2 + 1`` latent frames; 12 s =
97 frames, 25 latent frames, the release's default).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.families.cogvideox import T5_DIRS, T5_XXL
from cineforge.families.cogvideox.vae import (
    COGVIDEOX_VAE_5B,
    COGVIDEOX_VAE_TINY,
    CogVideoXVAE,
)
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.families.family import (
    CINEFORGE_LAYOUT,
    MINILM,
    Family,
    Layout,
    Preset,
    SamplerDefaults,
    WeightFile,
)
from cineforge.families.kandinsky4.dit import (
    KANDINSKY4_DIT,
    KANDINSKY4_DIT_TINY,
    Kandinsky4DiT,
)
from cineforge.families.kandinsky4.dit_keys import K4_DIT_FROM_OFFICIAL, check_rope_tables
from cineforge.families.kandinsky4.pipeline import Kandinsky4Flash
from cineforge.weights.files import read_torch

DIT_FILE = "kandinsky4_distil_512.pt"
# The release's 480p sizes, (height, width) (t2v_pipeline.py: RESOLUTIONS[512]).
SIZES = ((512, 512), (352, 736), (736, 352), (384, 672), (672, 384), (480, 544), (544, 480))


@dataclasses.dataclass(frozen=True)
class TorchFile(WeightFile):
    """The release's DiT: a ``torch.save`` state dict named exactly ``stem`` (``.pt``), whose
    stored RoPE tables (dropped by the key map) are checked against the preset's config."""

    def read(self, folder: Path, preset: Preset) -> dict[str, torch.Tensor]:
        base = folder / self.subdir if self.subdir else folder
        state = read_torch(base / self.stem.format(preset=preset),
                           hub_repo=getattr(preset, self.repo))
        check_rope_tables(state, preset.dit)
        return state



KANDINSKY4 = Family(
    name="kandinsky4",
    dit_class=Kandinsky4DiT,
    vae_class=CogVideoXVAE,
    tiny_dit=KANDINSKY4_DIT_TINY,
    tiny_vae=COGVIDEOX_VAE_TINY,
    layouts={
        "cineforge": dataclasses.replace(CINEFORGE_LAYOUT, text_dirs=T5_DIRS),
        "official": Layout(
            DIT_FILE,
            dit=TorchFile("", DIT_FILE, K4_DIT_FROM_OFFICIAL),
            vae=WeightFile("vae", "diffusion_pytorch_model", COGVIDEOX_VAE_FROM_DIFFUSERS,
                           repo="vae_repo"),
            text_dirs=T5_DIRS,
        ),
    },
    pipeline=Kandinsky4Flash,
    text_encoder=T5_XXL,
)

K4_T2V_FLASH = Preset(
    name="kandinsky4-t2v-flash",
    summary="Kandinsky 4.0 Flash text-to-video 5.6B, 4 steps, 480p, 12 s at 8 fps",
    family=KANDINSKY4,
    dit=KANDINSKY4_DIT,
    vae=COGVIDEOX_VAE_5B,
    width=512,
    height=512,
    frames=97,
    fps=8,
    sampler=SamplerDefaults(steps=4, guidance=1.0, shift=1.0, solver="flash"),
    hub_repo="ai-forever/kandinsky-4-t2v-flash",
    vae_repo="THUDM/CogVideoX-5b",
    text_repos=("THUDM/CogVideoX-5b",),
)

# The architecture at toy size, random weights (tests; bring your own weights), fed by the
# embedded MiniLM so the whole CLI path runs offline.
K4_T2V_TINY = dataclasses.replace(
    K4_T2V_FLASH,
    name="kandinsky4-t2v-tiny",
    summary="Kandinsky 4.0 architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(KANDINSKY4_DIT_TINY, text_dim=384),
    vae=COGVIDEOX_VAE_TINY,
    text_encoder=MINILM,
    width=64,
    height=64,
    frames=9,
    hub_repo=None,
    vae_repo=None,
    text_repos=(),
)

PRESETS = (K4_T2V_FLASH, K4_T2V_TINY)
