"""Wan 2.2 A14B's mixture of two experts: two Wan 14B DiTs, one per noise range.

The release (``wan/text2video.py``, ``wan/image2video.py``) denoises with the high-noise
expert while the timestep ``t = 1000 * sigma`` is at or above ``boundary * 1000`` (0.875 for
T2V, 0.9 for I2V) and with the low-noise expert below it, each with its own guidance scale;
diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` do the same with ``transformer``,
``transformer_2`` and ``boundary_ratio``. The experts share one architecture (``WanDiT``);
the official files keep them in ``high_noise_model/`` and ``low_noise_model/``, diffusers in
``transformer/`` and ``transformer_2/``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cineforge.families.family import WeightFile
from cineforge.families.wan.dit import WanDiT, WanDiTConfig
from cineforge.weights.files import read_safetensors
from cineforge.weights.keymap import KeyMap

EXPERTS = ("high_noise_model", "low_noise_model")


@dataclass(frozen=True, kw_only=True)
class WanExpertsConfig(WanDiTConfig):
    """Both experts' DiT config and the switch: flow time ``t >= boundary`` is high noise."""

    boundary: float = 0.875

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.boundary < 1:
            raise ValueError(f"boundary must be in (0, 1), got {self.boundary}")

    @property
    def expert(self) -> WanDiTConfig:
        return WanDiTConfig(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(WanDiTConfig)})


class WanExperts(nn.Module):
    """``high_noise_model`` and ``low_noise_model``; ``forward`` runs the one for ``t``."""

    def __init__(self, config: WanExpertsConfig):
        super().__init__()
        self.config = config
        self.high_noise_model = WanDiT(config.expert)
        self.low_noise_model = WanDiT(config.expert)

    def expert(self, t: float) -> WanDiT:
        return self.high_noise_model if t >= self.config.boundary else self.low_noise_model

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                **image) -> torch.Tensor:
        """``WanDiT.forward`` of the expert for ``t`` (one flow time for the whole batch)."""
        times = torch.as_tensor(t).reshape(-1)
        if (times != times[0]).any():
            raise ValueError("WanExperts.forward takes one flow time per call")
        return self.expert(float(times[0]))(x, t, context, **image)


def experts_keymap(base: KeyMap) -> KeyMap:
    """``base`` (one DiT's map) for keys prefixed by an expert's name, kept as our prefix."""
    if base.transforms:
        raise ValueError("experts_keymap takes key maps without transforms")

    def shifted(template: str | None) -> str | None:
        if template is None:
            return None
        return r"\1." + re.sub(r"\\(\d+)", lambda m: f"\\{int(m[1]) + 1}", template)

    prefix = "(" + "|".join(EXPERTS) + r")\."
    return KeyMap(f"{base.name} (two experts)",
                  rules=tuple((prefix + pattern, shifted(t)) for pattern, t in base.rules))


@dataclass(frozen=True)
class ExpertFiles(WeightFile):
    """The two experts' files, ``folder/<subdir>/<stem>`` for each ``(subdir, expert)`` of
    ``parts``, read as one state dict with the expert's name before every key."""

    parts: tuple[tuple[str, str], ...] = ()

    def read(self, folder: Path, preset) -> dict[str, torch.Tensor]:
        hub_repo = getattr(preset, self.repo)
        state = {}
        for subdir, expert in self.parts:
            part = read_safetensors(Path(folder) / subdir, self.stem, hub_repo=hub_repo)
            state.update({f"{expert}.{k}": v for k, v in part.items()})
        return state
