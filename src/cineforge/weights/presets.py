"""Named presets: an official release name -> model configs, sampler defaults, weight source.

Presets are data. A variant is ``dataclasses.replace`` of another, never a re-typed block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cineforge.errors import CineforgeError
from cineforge.models.wan_dit import WAN_DIT_1_3B, WAN_DIT_14B, WAN_DIT_TINY, WanDiTConfig
from cineforge.models.wan_vae import WAN_VAE_2_1, WAN_VAE_TINY, WanVAEConfig


@dataclass(frozen=True)
class SamplerDefaults:
    steps: int
    guidance: float
    shift: float
    solver: str = "unipc"
    negative: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    family: str  # selects model classes, key maps and file layouts in cineforge.weights.loader
    dit: WanDiTConfig
    vae: WanVAEConfig
    text_encoder: str  # "umt5-xxl" | "minilm"
    width: int
    height: int
    frames: int
    fps: int
    sampler: SamplerDefaults
    hub_repo: str | None = None  # official release (the layout its files follow)
    diffusers_repo: str | None = None  # the same weights in diffusers layout
    embedded: str | None = None  # weights ship inside the package: cineforge/assets/<name>

    def __post_init__(self) -> None:
        if self.width % 16 or self.height % 16 or (self.frames - 1) % 4:
            raise ValueError(f"preset {self.name}: default size/frames violate 16 / 4k+1")
        if self.dit.text_dim != TEXT_ENCODER_DIMS[self.text_encoder]:
            raise ValueError(f"preset {self.name}: DiT text_dim != {self.text_encoder} width")


TEXT_ENCODER_DIMS = {"umt5-xxl": 4096, "minilm": 384}

# Wan 2.1's recommended negative prompt is long and Chinese; this is our short English one.
WAN_NEGATIVE = (
    "blurry, low quality, worst quality, static, still picture, overexposed, jpeg artifacts, "
    "deformed, distorted, subtitles, watermark, messy background"
)

WAN21_T2V_1_3B = Preset(
    name="wan2.1-t2v-1.3b",
    summary="Wan 2.1 text-to-video 1.3B, 480p",
    family="wan2.1",
    dit=WAN_DIT_1_3B,
    vae=WAN_VAE_2_1,
    text_encoder="umt5-xxl",
    width=832,
    height=480,
    frames=81,
    fps=16,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=3.0, negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.1-T2V-1.3B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
)

WAN21_T2V_14B = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-14b",
    summary="Wan 2.1 text-to-video 14B, 720p",
    dit=WAN_DIT_14B,
    width=1280,
    height=720,
    sampler=dataclasses.replace(WAN21_T2V_1_3B.sampler, shift=5.0),
    hub_repo="Wan-AI/Wan2.1-T2V-14B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
)

# Random-weight sized for tests and CI: the Wan architecture at toy width, fed by the
# embedded MiniLM text encoder so the whole CLI path runs offline in well under a second.
WAN21_T2V_TINY = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-tiny",
    summary="Wan 2.1 architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN_DIT_TINY, text_dim=384, text_len=77),
    vae=WAN_VAE_TINY,
    text_encoder="minilm",
    width=64,
    height=64,
    frames=9,
    sampler=SamplerDefaults(steps=4, guidance=5.0, shift=3.0),
    hub_repo=None,
    diffusers_repo=None,
)

PRESETS: dict[str, Preset] = {
    p.name: p for p in (WAN21_T2V_1_3B, WAN21_T2V_14B, WAN21_T2V_TINY)
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise CineforgeError(
            f"unknown preset {name!r}; run `cineforge presets` to list them ({', '.join(PRESETS)})"
        ) from None
