"""Exported weights: fp16 safetensors in cineforge layout plus the model config as JSON.

An export folder holds ``dit.safetensors`` / ``vae.safetensors`` (our own keys, what
``cineforge.weights.loader`` reads in its ``cineforge`` layout) and ``dit.json`` /
``vae.json``, the configs that built them (for the VAE with its measured latent
statistics) — what a preset for these weights needs. Each JSON names its config type
(``"type": "CompactVAEConfig"``); files without it are Wan configs (older exports).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cineforge.models.causal3d import LatentVideoVAE
from cineforge.models.compact_vae import CompactVAE, CompactVAEConfig
from cineforge.models.wan_vae import WanVAE, WanVAEConfig
from cineforge.weights.files import read_model_config

# The video VAEs a run can train, by config type.
VAE_CLASSES: dict[type, type[LatentVideoVAE]] = {WanVAEConfig: WanVAE, CompactVAEConfig: CompactVAE}


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The model's state dict (our keys), floating tensors cast to ``dtype``."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, path)
    return path


def read_vae_config(path: Path) -> WanVAEConfig | CompactVAEConfig:
    """The VAE config in ``vae.json``, of the type the file names (Wan when it names none)."""
    kind = json.loads(path.read_text()).get("type", "WanVAEConfig") if path.is_file() else ""
    by_name = {cls.__name__: cls for cls in VAE_CLASSES}
    return read_model_config(by_name.get(kind, WanVAEConfig), path)


def load_vae(folder: Path) -> LatentVideoVAE:
    """A VAE exported by a VAE run (``vae.json`` + ``vae.safetensors``), in fp32, frozen."""
    from cineforge.weights.files import read_safetensors
    from cineforge.weights.keymap import load_strict

    folder = Path(folder)
    config = read_vae_config(folder / "vae.json")
    with torch.device("meta"):
        vae = VAE_CLASSES[type(config)](config)
    load_strict(vae, read_safetensors(folder, "vae"), dtype=torch.float32, what=f"VAE in {folder}")
    return vae.eval().requires_grad_(False)
