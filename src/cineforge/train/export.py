"""Exported weights: fp16 safetensors in cineforge layout plus the model config as JSON.

An export folder holds ``dit.safetensors`` / ``vae.safetensors`` (our own keys, what the
``cineforge`` layout of ``cineforge.families.family`` reads) and ``dit.json`` / ``vae.json``,
the configs that built them (for the VAE with its measured latent statistics): what a
preset for these weights needs. Each JSON names its config type (``"type":
"CompactVAEConfig"``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """The model's state dict (our keys), floating tensors cast to ``dtype``."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, path)
    return path
