"""The pipeline of a preset's family: Wan -> ``TextToVideo``, Kandinsky 5 -> ``Kandinsky5``."""

from __future__ import annotations

import torch

from cineforge.errors import CineforgeError
from cineforge.pipelines.common import FlowPipeline, VideoRequest
from cineforge.pipelines.kandinsky5 import Kandinsky5
from cineforge.pipelines.t2v import TextToVideo
from cineforge.weights.presets import Preset

KANDINSKY5_FAMILIES = {"kandinsky5": True, "kandinsky5-image": False}  # family -> video


def pipeline_class(preset: Preset) -> type[FlowPipeline]:
    return Kandinsky5 if preset.family in KANDINSKY5_FAMILIES else TextToVideo


def check_preset_request(preset: Preset, request: VideoRequest, *,
                         init_video: bool = False) -> None:
    """Raise a CineforgeError for a request ``preset``'s models cannot honour (no loading);
    ``init_video``: the request starts from a video (video-to-video)."""
    cls = pipeline_class(preset)
    if init_video and not cls.video_to_video:
        raise CineforgeError(f"preset {preset.name!r} ({preset.family}) has no video-to-video; "
                             "drop --video, or use a Wan preset such as 'demo'")
    if cls is Kandinsky5:
        video = KANDINSKY5_FAMILIES[preset.family]
        Kandinsky5.check_request(request, preset.dit, preset.vae, video=video)
    else:
        TextToVideo.check_request(request, preset.dit, preset.vae)


def pipeline_for(
    preset: Preset, components, *, placement=None, dtype: torch.dtype = torch.float32
) -> FlowPipeline:
    """The pipeline that runs ``preset``'s loaded ``components``."""
    if pipeline_class(preset) is Kandinsky5:
        return Kandinsky5(components, video=KANDINSKY5_FAMILIES[preset.family],
                          placement=placement, dtype=dtype)
    return TextToVideo(components, placement=placement, dtype=dtype)
