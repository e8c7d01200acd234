"""``cineforge generate``: resolve options against the preset, load, run, write."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from cineforge.cli.options import GenerateOptions, check_prompt
from cineforge.errors import CineforgeError
from cineforge.io.video import from_uint8_frames, read_video, write_video
from cineforge.pipelines.common import VideoRequest
from cineforge.pipelines.select import check_preset_request, pipeline_for
from cineforge.weights.loader import load_pipeline_components
from cineforge.weights.offload import make_placement
from cineforge.weights.presets import get_preset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_STRENGTH = 0.7  # video-to-video: share of the steps run from the noised video


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CineforgeError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CineforgeError(
            "--device cuda asked for, but no CUDA GPU is visible; use --device cpu"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # bf16 matmul on CPU is ~500x slower than fp32 (DESIGN.md)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def build_request(opts: GenerateOptions) -> VideoRequest:
    preset = get_preset(opts.preset)
    width, height = opts.size or (preset.width, preset.height)
    s = preset.sampler
    return VideoRequest(
        prompt=check_prompt(opts.prompt),
        negative=s.negative if opts.negative is None else opts.negative,
        width=width,
        height=height,
        frames=preset.frames if opts.frames is None else opts.frames,
        steps=s.steps if opts.steps is None else opts.steps,
        guidance=s.guidance if opts.guidance is None else opts.guidance,
        shift=s.shift if opts.shift is None else opts.shift,
        solver=opts.solver or s.solver,
        frame_noise_share=s.frame_noise_share if opts.frame_noise is None else opts.frame_noise,
        seed=opts.seed,
        strength=init_strength(opts),
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
    check_preset_request(preset, request, init_video=opts.video is not None)
    init = (None if opts.video is None
            else load_init_video(opts.video, request, preset.vae.temporal_ratio))
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    components = load_pipeline_components(preset, opts.weights, dtype=dtype)
    pipe = pipeline_for(
        preset, components, placement=make_placement(opts.offload, device), dtype=dtype
    )
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.n = done
        bar.refresh()

    try:
        video = pipe(request, progress=progress, vae_tile=opts.vae_tile, init_video=init)
    finally:
        for bar in bars.values():
            bar.close()
    return write_video(opts.out, video[0], fps=opts.fps or preset.fps)
