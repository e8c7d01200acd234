"""``cineforge generate``: options -> the preset's request, the output path, the device and
the memory the request needs, all checked before any loading -> ``cineforge.load_pipeline``
-> the video file."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cineforge.api import check_memory, load_pipeline, resolve_device, resolve_dtype
from cineforge.cli.options import GenerateOptions, check_prompt
from cineforge.errors import CineforgeError
from cineforge.families.registry import get_preset
from cineforge.io.video import check_fps, check_output_path, from_uint8_frames, read_video
from cineforge.pipelines.common import VideoRequest, check_vae_tile, prepare_image

DEFAULT_STRENGTH = 0.7  # video-to-video: share of the steps run from the noised video


def build_request(opts: GenerateOptions) -> VideoRequest:
    preset = get_preset(opts.preset)
    width, height = opts.size or (None, None)
    return preset.request(
        check_prompt(opts.prompt), negative=opts.negative, width=width, height=height,
        frames=opts.frames, steps=opts.steps, guidance=opts.guidance,
        guidance_2=opts.guidance_2, shift=opts.shift,
        solver=opts.solver, frame_noise_share=opts.frame_noise, seed=opts.seed,
        strength=init_strength(opts), guidance_until=opts.guidance_until, cache=opts.cache,
        cache_threshold=opts.cache_threshold, image=opts.image,
    )


def init_strength(opts: GenerateOptions) -> float:
    if opts.video is None:
        if opts.strength is not None:
            raise CineforgeError("--strength needs --video (the video to start from)")
        return 1.0
    return DEFAULT_STRENGTH if opts.strength is None else opts.strength


def load_init_video(path: Path, r: VideoRequest, temporal_ratio: int) -> torch.Tensor:
    """The first ``r.frames`` frames of the video at ``path`` as a 1, 3, T, H, W tensor in
    [-1, 1]; its size must be the request's (frame counts step by the VAE's ``temporal_ratio``)."""
    frames, _ = read_video(path)
    t, h, w = frames.shape[:3]
    if (w, h) != (r.width, r.height):
        raise CineforgeError(f"--video {path} is {w}x{h}, the output {r.width}x{r.height}; "
                             f"pass --size {w}x{h} or resize the video")
    if t < r.frames:
        raise CineforgeError(f"--video {path} has {t} frames, fewer than --frames {r.frames}; "
                             f"pass --frames {1 + (t - 1) // temporal_ratio * temporal_ratio} or a "
                             "longer video")
    return from_uint8_frames(frames[: r.frames])[None]


def run_generate(opts: GenerateOptions) -> list[Path]:
    preset = get_preset(opts.preset)
    request = build_request(opts)  # validate everything before loading GBs of weights
    preset.family.check_request(preset, request, init_video=opts.video is not None)
    check_output_path(opts.out)
    if opts.fps is not None:
        check_fps(opts.fps)
    check_vae_tile(opts.vae_tile, preset.vae.spatial_ratio)
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    offload = None if opts.offload == "none" else opts.offload
    check_memory(preset, request, device=device, dtype=dtype, offload=offload,
                 vae_tile=opts.vae_tile)
    init = (None if opts.video is None
            else load_init_video(opts.video, request, preset.vae.temporal_ratio))
    if request.image is not None:  # read and fit the first frame once, before loading
        image, note = prepare_image(request.image, request.width, request.height)
        if note:
            print(f"--image {opts.image}: {note}", file=sys.stderr)
        request = dataclasses.replace(request, image=image)
    pipe = load_pipeline(preset, opts.weights, device=device, dtype=dtype, offload=offload,
                         lora=tuple(opts.lora))
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.n = done
        bar.refresh()

    try:
        video = pipe.generate(request, progress=progress, vae_tile=opts.vae_tile,
                              init_video=init)
    finally:
        for bar in bars.values():
            bar.close()
    return video.save(opts.out, fps=opts.fps)
