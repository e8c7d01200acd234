"""The models a training run builds, resolved through the preset registry.

A run's ``model`` section names a preset by its public name plus overrides of the task's
part of it (``model: {preset: demo, overrides: {num_layers: 4}}``): a ``dit`` run builds
``preset.dit`` with the overrides through the preset's family, a ``vae`` run ``preset.vae``.
The VAE a DiT run's latents came from (``cache.vae``, an exported folder) is of the same
family, so it is read as the family's VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cineforge.families.family import Family
from cineforge.families.registry import get_preset
from cineforge.train.config import ModelSpec, build_model_config
from cineforge.weights.files import read_model_config


def model_config(spec: ModelSpec, part: str) -> tuple[Family, Any]:
    """The family of ``spec.preset`` and its ``part`` config with ``spec.overrides``. A VAE's
    latent statistics default to identity (training works on raw latents; export measures
    the real ones)."""
    preset = get_preset(spec.preset)
    base, overrides = getattr(preset, part), dict(spec.overrides)
    if part == "vae":
        z_dim = overrides.get("z_dim", base.z_dim)
        if isinstance(z_dim, int) and z_dim > 0:
            overrides.setdefault("latents_mean", (0.0,) * z_dim)
            overrides.setdefault("latents_std", (1.0,) * z_dim)
    return preset.family, build_model_config(base, overrides, type(base).__name__)


def build_model(spec: ModelSpec, part: str) -> nn.Module:
    """A freshly constructed ``part`` model of ``spec`` (the class's own initialisation)."""
    family, config = model_config(spec, part)
    return family.build(part, config)


def read_vae_config(spec: ModelSpec, path: Path) -> Any:
    """The VAE config in ``path`` (a ``vae.json``), read as ``spec``'s family's VAE config."""
    return read_model_config(type(get_preset(spec.preset).vae), path)


def load_vae(spec: ModelSpec, folder: Path) -> nn.Module:
    """A VAE exported by a VAE run (``vae.json`` + ``vae.safetensors``) of ``spec``'s
    family, in fp32, frozen."""
    from cineforge.weights.files import read_safetensors
    from cineforge.weights.keymap import load_strict

    folder = Path(folder)
    config = read_vae_config(spec, folder / "vae.json")
    with torch.device("meta"):
        vae = get_preset(spec.preset).family.build("vae", config)
    load_strict(vae, read_safetensors(folder, "vae"), dtype=torch.float32, what=f"VAE in {folder}")
    return vae.eval().requires_grad_(False)
