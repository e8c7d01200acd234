"""Build models from a preset and load their weights from a folder, strictly.

Three folder layouts are understood, detected from the files present:

- ``official``: the release as published (Wan 2.1: ``diffusion_pytorch_model*.safetensors``
  maybe sharded, ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl``;
  Kandinsky 5: the folder the release's ``download_models.py`` fills: ``model/<dit_file>
  .safetensors``, ``vae/`` (HunyuanVideo, diffusers format) or ``flux/vae/`` (images),
  ``text_encoder/`` (Qwen2.5-VL), ``text_encoder2/`` (CLIP));
- ``diffusers``: a diffusers pipeline folder (``model_index.json``, ``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, for Kandinsky also ``text_encoder_2/``, ``tokenizer_2/``);
- ``cineforge``: our own keys, ``dit.safetensors`` + ``vae.safetensors`` (what our trainer
  writes and what the embedded demo model ships as).

Kandinsky's text encoders come from the folder when it holds them, else from the hub ids
in ``preset.text_repos`` (downloaded into the Hugging Face cache, as the release does).

Models are built on the meta device and loaded with ``assign=True``: no time or memory is
spent on random initialisation of multi-GB models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.compact_vae import CompactVAE, CompactVAEConfig
from cineforge.models.flux_vae import FluxVAE, FluxVAEConfig
from cineforge.models.hunyuan_vae import HunyuanVAE, HunyuanVAEConfig
from cineforge.models.kandinsky5_dit import Kandinsky5DiT, Kandinsky5DiTConfig
from cineforge.models.wan_dit import WanDiT, WanDiTConfig
from cineforge.models.wan_vae import WanVAE, WanVAEConfig
from cineforge.weights.files import read_model_config, read_safetensors, read_torch
from cineforge.weights.flux_vae_keys import FLUX_VAE_FROM_DIFFUSERS
from cineforge.weights.hunyuan_vae_keys import HUNYUAN_VAE_FROM_DIFFUSERS
from cineforge.weights.kandinsky5_keys import K5_DIT_FROM_DIFFUSERS, K5_DIT_FROM_OFFICIAL
from cineforge.weights.keymap import KeyMap, load_strict
from cineforge.weights.presets import Preset
from cineforge.weights.wan_dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.weights.wan_vae_keys import WAN_VAE_FROM_DIFFUSERS, WAN_VAE_FROM_OFFICIAL

IDENTITY = KeyMap("cineforge", rules=((r"(.+)", r"\1"),))
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # embedded weights (the demo model)


@dataclass(frozen=True)
class WeightFile:
    """One model's file in a layout: ``folder/subdir/stem`` (safetensors or .pth); ``stem``
    may name preset fields, e.g. ``{preset.dit_file}``. ``repo`` (a Preset field name) says
    where the release takes this file from when it is not ``hub_repo``."""

    subdir: str
    stem: str
    keymap: KeyMap
    repo: str = "hub_repo"

    def read(self, folder: Path, preset: Preset) -> dict[str, torch.Tensor]:
        base = folder / self.subdir if self.subdir else folder
        stem, hub_repo = self.stem.format(preset=preset), getattr(preset, self.repo)
        if stem.endswith(".pth"):
            return read_torch(base / stem, hub_repo=hub_repo)
        return read_safetensors(base, stem, hub_repo=hub_repo)


@dataclass(frozen=True)
class Layout:
    marker: str  # a file whose presence identifies the layout (may name preset fields)
    dit: WeightFile
    vae: WeightFile
    # Kandinsky: folders of (Qwen model, Qwen tokenizer, CLIP model, CLIP tokenizer)
    text: tuple[str, str, str, str] | None = None


# The model class of each config type.
MODEL_CLASSES: dict[type, type[nn.Module]] = {
    WanDiTConfig: WanDiT,
    WanVAEConfig: WanVAE,
    Kandinsky5DiTConfig: Kandinsky5DiT,
    HunyuanVAEConfig: HunyuanVAE,
    FluxVAEConfig: FluxVAE,
    CompactVAEConfig: CompactVAE,
}
_OURS = Layout("dit.safetensors", dit=WeightFile("", "dit", IDENTITY),
               vae=WeightFile("", "vae", IDENTITY))
_K5_DIFFUSERS_TEXT = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
_K5_OFFICIAL_TEXT = ("text_encoder", "text_encoder", "text_encoder2", "text_encoder2")


def _kandinsky5(vae_dir: str, vae_keys: KeyMap) -> dict[str, Layout]:
    """Kandinsky 5's layouts; the VAE folder is in diffusers format in both release layouts."""
    return {
        "cineforge": dataclasses.replace(_OURS, text=_K5_DIFFUSERS_TEXT),
        "diffusers": Layout(
            "model_index.json",
            dit=WeightFile("transformer", "diffusion_pytorch_model", K5_DIT_FROM_DIFFUSERS),
            vae=WeightFile("vae", "diffusion_pytorch_model", vae_keys),
            text=_K5_DIFFUSERS_TEXT,
        ),
        "official": Layout(
            "model/{preset.dit_file}.safetensors",
            dit=WeightFile("model", "{preset.dit_file}", K5_DIT_FROM_OFFICIAL),
            vae=WeightFile(vae_dir, "diffusion_pytorch_model", vae_keys, repo="vae_repo"),
            text=_K5_OFFICIAL_TEXT,
        ),
    }


# family -> its folder layouts, in detection order
FAMILIES: dict[str, dict[str, Layout]] = {
    "wan2.1": {
        "cineforge": _OURS,
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
    "kandinsky5": _kandinsky5("vae", HUNYUAN_VAE_FROM_DIFFUSERS),
    "kandinsky5-image": _kandinsky5("flux/vae", FLUX_VAE_FROM_DIFFUSERS),
}


def detect_layout(preset: Preset, folder: Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise CineforgeError(f"weights folder not found: {folder}; {download_hint(preset)}")
    layouts = FAMILIES[preset.family]
    for name, layout in layouts.items():
        if (folder / layout.marker.format(preset=preset)).is_file():
            return name
    markers = ", ".join(f"{lay.marker.format(preset=preset)} ({n})" for n, lay in layouts.items())
    raise CineforgeError(
        f"{folder} holds no {preset.name} weights: expected one of {markers}; "
        + download_hint(preset)
    )


def download_hint(preset: Preset) -> str:
    if preset.hub_repo and preset.vae_repo:  # the release's files are spread over repos
        vae_dir = FAMILIES[preset.family]["official"].vae.subdir
        hint = (
            f"download them with `huggingface-cli download {preset.hub_repo} --local-dir DIR` "
            f"plus the vae/ folder of {preset.vae_repo} into DIR/{vae_dir}"
        )
        if preset.diffusers_repo:
            hint += f" (or all in one: {preset.diffusers_repo})"
        return hint + " and pass --weights DIR"
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
    """Build ``part`` ("dit" or "vae") of ``preset`` on the meta device and load it on CPU.

    A cineforge-layout folder with ``{part}.json`` beside the weights (what ``cineforge train``
    exports) is built from that config, of the preset's config type: a run trained at another
    size, or with ``abs_position``, loads under the preset it was trained for."""
    layout = layout or detect_layout(preset, folder)
    spec: WeightFile = getattr(FAMILIES[preset.family][layout], part)
    config = preset.dit if part == "dit" else preset.vae
    if layout == "cineforge" and (Path(folder) / f"{part}.json").is_file():
        config = read_model_config(type(config), Path(folder) / f"{part}.json")
    state = spec.keymap.convert(spec.read(Path(folder), preset))
    with torch.device("meta"):
        model = MODEL_CLASSES[type(config)](config)
    load_strict(model, state, dtype=dtype, what=f"{preset.name} {part} weights in {folder}")
    return model.eval().requires_grad_(False)


@dataclass
class Components:
    """The loaded parts of a text-to-video model, all on CPU, ready for a placement."""

    dit: nn.Module
    vae: nn.Module
    text_encoder: object  # cineforge.models.text_encoders.TextEncoder
    pooled_encoder: object | None = None  # CLIPTextEncoder (Kandinsky 5's pooled vector)


def load_text_encoder(
    preset: Preset, folder: Path | None, *, dtype: torch.dtype, layout: str | None = None
):
    """The encoder of ``preset``'s token states (umT5, MiniLM or Kandinsky's Qwen2.5-VL)."""
    from cineforge.weights.text_encoders import load_minilm, load_qwen25vl, load_umt5

    if preset.text_encoder == "minilm":
        return load_minilm(dtype=torch.float32, max_length=preset.max_text_len)
    if preset.text_encoder == "qwen2.5-vl+clip-l":
        from cineforge.models.text_encoders import K5_IMAGE_TEMPLATE, K5_VIDEO_TEMPLATE

        image = preset.family == "kandinsky5-image"
        model, tokenizer = _text_sources(preset, folder, layout)[:2]
        return load_qwen25vl(
            model, tokenizer=tokenizer, dtype=dtype, max_length=preset.max_text_len,
            template=K5_IMAGE_TEMPLATE if image else K5_VIDEO_TEMPLATE,
        )
    if folder is None:
        raise CineforgeError(f"{preset.name} needs its umT5 text encoder; {download_hint(preset)}")
    layout = layout or detect_layout(preset, Path(folder))
    return load_umt5(Path(folder), layout=layout, dtype=dtype)


def load_pooled_encoder(preset: Preset, folder: Path | None, *, layout: str | None = None):
    """Kandinsky's CLIP encoder (fp32: small; its pooled vector is cast with the DiT's
    inputs), or None for presets without a pooled text vector."""
    if preset.text_encoder != "qwen2.5-vl+clip-l":
        return None
    from cineforge.weights.text_encoders import load_clip

    model, tokenizer = _text_sources(preset, folder, layout)[2:]
    return load_clip(model, tokenizer=tokenizer)


def _text_sources(
    preset: Preset, folder: Path | None, layout: str | None
) -> list[Path | str]:
    """Kandinsky's (Qwen model, Qwen tokenizer, CLIP model, CLIP tokenizer): the layout's
    folders where ``folder`` holds them, else the hub ids of ``preset.text_repos``."""
    repos = [preset.text_repos[0]] * 2 + [preset.text_repos[1]] * 2
    if folder is None:
        return repos
    layout = layout or detect_layout(preset, Path(folder))
    dirs = FAMILIES[preset.family][layout].text or (None,) * 4
    paths = [None if d is None else Path(folder) / d for d in dirs]
    return [p if p is not None and p.is_dir() else r for p, r in zip(paths, repos, strict=True)]


def load_pipeline_components(
    preset: Preset, folder: Path | None, *, dtype: torch.dtype = torch.float32
) -> Components:
    """Load DiT (``dtype``), VAE (fp32) and text encoder(s) of ``preset`` from ``folder``
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
        pooled_encoder=load_pooled_encoder(preset, folder, layout=layout),
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
