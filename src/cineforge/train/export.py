"""Exported weights: fp16 safetensors in cineforge layout plus the model config as JSON.

An export folder holds ``dit.safetensors`` / ``vae.safetensors`` (our own keys, what
``cineforge.weights.loader`` reads in its ``cineforge`` layout) and ``dit.json`` /
``vae.json``, the ``WanDiTConfig`` / ``WanVAEConfig`` that built them (for the VAE with its
measured latent statistics) — the configs a preset for these weights needs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.wan_vae import WanVAE, WanVAEConfig


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The model's state dict (our keys), floating tensors cast to ``dtype``."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, path)
    return path


def write_model_config(config: Any, path: Path) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    return path


def read_model_config(cls: type, path: Path) -> Any:
    """A model config written by ``write_model_config`` (JSON lists become tuples)."""
    if not path.is_file():
        raise CineforgeError(f"{path} not found: export the run first (cineforge train export)")
    values = json.loads(path.read_text())
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise CineforgeError(f"{path} is not a valid {cls.__name__}: {exc}") from None


def load_vae(folder: Path) -> WanVAE:
    """A VAE exported by a VAE run (``vae.json`` + ``vae.safetensors``), in fp32, frozen."""
    from cineforge.weights.files import read_safetensors
    from cineforge.weights.keymap import load_strict

    folder = Path(folder)
    config = read_model_config(WanVAEConfig, folder / "vae.json")
    with torch.device("meta"):
        vae = WanVAE(config)
    load_strict(vae, read_safetensors(folder, "vae"), dtype=torch.float32, what=f"VAE in {folder}")
    return vae.eval().requires_grad_(False)
