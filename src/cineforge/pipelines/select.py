"""The pipeline of a preset's family: Wan -> ``TextToVideo``, Kandinsky 5 -> ``Kandinsky5``."""

from __future__ import annotations

import torch

from cineforge.pipelines.common import FlowPipeline, VideoRequest
from cineforge.pipelines.kandinsky5 import Kandinsky5
from cineforge.pipelines.t2v import TextToVideo
from cineforge.weights.presets import Preset

KANDINSKY5_FAMILIES = {"kandinsky5": True, "kandinsky5-image": False}  # family -> video


def check_preset_request(preset: Preset, request: VideoRequest) -> None:
    """Raise a CineforgeError for a request ``preset``'s models cannot honour (no loading)."""
    if preset.family in KANDINSKY5_FAMILIES:
        video = KANDINSKY5_FAMILIES[preset.family]
        Kandinsky5.check_request(request, preset.dit, preset.vae, video=video)
    else:
        TextToVideo.check_request(request, preset.dit, preset.vae)


def pipeline_for(
    preset: Preset, components, *, placement=None, dtype: torch.dtype = torch.float32
) -> FlowPipeline:
    """The pipeline that runs ``preset``'s loaded ``components``."""
    if preset.family in KANDINSKY5_FAMILIES:
        return Kandinsky5(components, video=KANDINSKY5_FAMILIES[preset.family],
                          placement=placement, dtype=dtype)
    return TextToVideo(components, placement=placement, dtype=dtype)
