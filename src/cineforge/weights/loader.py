"""Build models from a preset and load their weights from a folder, strictly.

Three folder layouts are understood, detected from the files present:

- ``official``: the release as published (Wan 2.1: ``diffusion_pytorch_model*.safetensors``
  maybe sharded, ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl``);
- ``diffusers``: a diffusers pipeline folder (``model_index.json``, ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``);
- ``cineforge``: our own keys, ``dit.safetensors`` + ``vae.safetensors`` (what our trainer
  writes and what the embedded demo model ships as).

Models are built on the meta device and loaded with ``assign=True``: no time or memory is
spent on random initialisation of multi-GB models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.wan_dit import WanDiT
from cineforge.models.wan_vae import WanVAE
from cineforge.weights.files import read_safetensors, read_torch
from cineforge.weights.keymap import KeyMap, load_strict
from cineforge.weights.presets import Preset
from cineforge.weights.wan_dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.weights.wan_vae_keys import WAN_VAE_FROM_DIFFUSERS, WAN_VAE_FROM_OFFICIAL

IDENTITY = KeyMap("cineforge", rules=((r"(.+)", r"\1"),))
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # embedded weights (the demo model)


@dataclass(frozen=True)
class WeightFile:
    """One model's file in a layout: ``folder/subdir/stem`` (safetensors or .pth)."""

    subdir: str
    stem: str
    keymap: KeyMap

    def read(self, folder: Path, hub_repo: str | None) -> dict[str, torch.Tensor]:
        base = folder / self.subdir if self.subdir else folder
        if self.stem.endswith(".pth"):
            return read_torch(base / self.stem, hub_repo=hub_repo)
        return read_safetensors(base, self.stem, hub_repo=hub_repo)


@dataclass(frozen=True)
class Layout:
    marker: str  # a file whose presence identifies the layout
    dit: WeightFile
    vae: WeightFile


@dataclass(frozen=True)
class Family:
    dit_class: type[nn.Module]
    vae_class: type[nn.Module]
    layouts: dict[str, Layout]


FAMILIES: dict[str, Family] = {
    "wan2.1": Family(
        dit_class=WanDiT,
        vae_class=WanVAE,
        layouts={
            "cineforge": Layout(
                "dit.safetensors",
                dit=WeightFile("", "dit", IDENTITY),
                vae=WeightFile("", "vae", IDENTITY),
            ),
            "diffusers": Layout(
                "model_index.json",
                dit=WeightFile("transformer", "diffusion_pytorch_model", WAN_DIT_FROM_DIFFUSERS),
                vae=WeightFile("vae", "diffusion_pytorch_model", WAN_VAE_FROM_DIFFUSERS),
            ),
            "official": Layout(
                "Wan2.1_VAE.pth",
                dit=WeightFile("", "diffusion_pytorch_model", WAN_DIT_FROM_OFFICIAL),
                vae=WeightFile("", "Wan2.1_VAE.pth", WAN_VAE_FROM_OFFICIAL),
            ),
        },
    ),
}


def detect_layout(preset: Preset, folder: Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise CineforgeError(f"weights folder not found: {folder}; {download_hint(preset)}")
    for name, layout in FAMILIES[preset.family].layouts.items():
        if (folder / layout.marker).is_file():
            return name
    markers = ", ".join(f"{lay.marker} ({n})" for n, lay in FAMILIES[preset.family].layouts.items())
    raise CineforgeError(
        f"{folder} holds no {preset.name} weights: expected one of {markers}; "
        + download_hint(preset)
    )


def download_hint(preset: Preset) -> str:
    if preset.hub_repo:
        return (
            f"download them with `huggingface-cli download {preset.hub_repo} --local-dir DIR` "
            "and pass --weights DIR"
        )
    return "pass --weights DIR with weights in cineforge layout (dit.safetensors, vae.safetensors)"


def load_model(
    preset: Preset,
    folder: Path,
    part: str,
    *,
    dtype: torch.dtype = torch.float32,
    layout: str | None = None,
) -> nn.Module:
    """Build ``part`` ("dit" or "vae") of ``preset`` on the meta device and load it on CPU."""
    family = FAMILIES[preset.family]
    layout = layout or detect_layout(preset, folder)
    spec: WeightFile = getattr(family.layouts[layout], part)
    cls = family.dit_class if part == "dit" else family.vae_class
    config = preset.dit if part == "dit" else preset.vae
    state = spec.keymap.convert(spec.read(Path(folder), preset.hub_repo))
    with torch.device("meta"):
        model = cls(config)
    load_strict(model, state, dtype=dtype, what=f"{preset.name} {part} weights in {folder}")
    return model.eval().requires_grad_(False)


@dataclass
class Components:
    """The loaded parts of a text-to-video model, all on CPU, ready for a placement."""

    dit: nn.Module
    vae: nn.Module
    text_encoder: object  # cineforge.models.text_encoders.TextEncoder


def load_text_encoder(
    preset: Preset, folder: Path | None, *, dtype: torch.dtype, layout: str | None = None
):
    from cineforge.weights.text_encoders import load_minilm, load_umt5

    if preset.text_encoder == "minilm":
        return load_minilm(dtype=torch.float32, max_length=preset.dit.text_len)
    if folder is None:
        raise CineforgeError(f"{preset.name} needs its umT5 text encoder; {download_hint(preset)}")
    layout = layout or detect_layout(preset, Path(folder))
    return load_umt5(Path(folder), layout=layout, dtype=dtype)


def load_pipeline_components(
    preset: Preset, folder: Path | None, *, dtype: torch.dtype = torch.float32
) -> Components:
    """Load DiT (``dtype``), VAE (fp32) and text encoder of ``preset`` from ``folder``
    (default: the weights embedded in the package, for presets that ship them)."""
    if folder is None and preset.embedded:
        folder = ASSETS / preset.embedded
    if folder is None:
        raise CineforgeError(f"preset {preset.name} needs --weights DIR; {download_hint(preset)}")
    folder = Path(folder)
    layout = detect_layout(preset, folder)
    return Components(
        dit=load_model(preset, folder, "dit", dtype=dtype, layout=layout),
        vae=load_model(preset, folder, "vae", dtype=torch.float32, layout=layout),
        text_encoder=load_text_encoder(preset, folder, dtype=dtype, layout=layout),
    )


def save_components(folder: Path, *, dit: nn.Module, vae: nn.Module, dtype=None) -> Path:
    """Write ``dit.safetensors`` and ``vae.safetensors`` in cineforge layout (our own keys)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in (("dit", dit), ("vae", vae)):
        state = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, folder / f"{name}.safetensors")
    return folder
