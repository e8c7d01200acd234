"""The options of ``cineforge generate``, declared once as a dataclass."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from cineforge.data.shapes import LAYOUTS
from cineforge.errors import CineforgeError

DEFAULT_PRESET = "demo"


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    preset: str = DEFAULT_PRESET
    weights: Path | None = None
    out: Path = Path("video.mp4")
    frames: int | None = None  # None: the preset's default
    size: tuple[int, int] | None = None  # (width, height)
    steps: int | None = None
    guidance: float | None = None
    guidance_2: float | None = None  # two-expert presets: the low-noise expert's guidance
    shift: float | None = None
    solver: str | None = None
    frame_noise: float | None = None
    negative: str | None = None
    seed: int = 0
    fps: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"
    vae_tile: int | None = None
    lora: tuple[tuple[Path, float], ...] = ()  # (file, scale), applied in order
    video: Path | None = None  # video-to-video: the init video
    image: Path | None = None  # image-to-video: the first frame
    strength: float | None = None  # share of the steps run from it (default 0.7 with --video)
    guidance_until: float | None = None  # share of the steps with guidance (default 1)
    cache: str | None = None  # step cache (default none)
    cache_threshold: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateOptions:
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 832x480, got {text!r}") from None
    return w, h


def parse_lora(text: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (file, scale); the scale defaults to 1."""
    head, _, tail = text.rpartition(":")
    if not head:
        return Path(text), 1.0
    try:
        scale = float(tail)
    except ValueError:
        return Path(text), 1.0  # a colon in the file name, no scale
    if not math.isfinite(scale):
        raise argparse.ArgumentTypeError(f"the scale of --lora {text!r} must be finite")
    return Path(head), scale


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="model preset (cineforge presets)")
    p.add_argument("--weights", type=Path, help="folder with the preset's weights")
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("video.mp4"),
        help="output file: .mp4, .webm, .gif or .png (frames as out_0000.png ...); an "
             "existing file is replaced only once the new one is complete",
    )
    p.add_argument("--frames", type=int, help="number of frames, 4k+1 (1 = an image)")
    p.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, multiples of 16")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--guidance-2", type=float,
                   help="two-expert presets (Wan 2.2 A14B): the low-noise expert's guidance "
                        "(default: the preset's)")
    p.add_argument("--shift", type=float, help="flow-matching timestep shift")
    p.add_argument("--solver", choices=("unipc", "euler", "flash", "ddim", "dpm"),
                   help="sampler (default: the preset's; flash: re-noising, for few-step "
                   "distilled models; ddim, dpm: CogVideoX's)")
    add_frame_noise_argument(p)
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same video)")
    p.add_argument("--fps", type=int,
                   help="frames per second of the output file (> 0; default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="weights dtype of the DiT and text encoder (VAE stays fp32)",
    )
    p.add_argument(
        "--offload",
        default="none",
        choices=("none", "model", "block"),
        help="CPU offloading for small GPUs: per model or per DiT block",
    )
    p.add_argument("--vae-tile", type=int,
                   help="decode in spatial tiles of this many pixels (whole VAE cells, e.g. 256)")
    p.add_argument("--lora", type=parse_lora, action="append", default=[],
                   metavar="FILE[:SCALE]",
                   help="merge this LoRA (.safetensors; diffusers, kohya or official-name keys) "
                        "into the DiT at SCALE (default 1); repeat to stack several")
    p.add_argument("--video", type=Path,
                   help="video-to-video: start from this video's first --frames frames (at the "
                        "output size), noised by --strength")
    p.add_argument("--image", type=Path,
                   help="image-to-video: the first frame (an image of another size is scaled "
                        "to cover the output size and centre-cropped)")
    p.add_argument("--strength", type=float,
                   help="with --video: share of the steps run from the noised video, in (0, 1]; "
                        "lower keeps more of it (default 0.7)")
    p.add_argument("--guidance-until", type=float,
                   help="share of the steps (the first ones) run with guidance, in [0, 1]; the "
                        "others run the conditional model alone (default 1)")
    p.add_argument("--cache", choices=("none", "tea", "mag"),
                   help="step cache: reuse the last velocity while the input (tea) or the "
                        "calibrated velocity magnitude (mag) changes little (default none)")
    p.add_argument("--cache-threshold", type=float,
                   help="the cache's skip threshold, >= 0; higher skips more (default 0: none)")


def add_frame_noise_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame-noise", type=float,
                   help="share of the initial noise common to all frames, as the model was "
                        "trained (flow.frame_noise_share; default: the preset's)")


def check_prompt(prompt: str) -> str:
    if not prompt or not prompt.strip():
        raise CineforgeError(
            'the prompt is empty; describe the video, e.g. "a red circle moves right"'
        )
    return prompt.strip()


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=("shapes", "text-use", "vae", "wording"),
                   help="shapes: generate and read back colour/shape/motion; text-use: flow-loss "
                        "increase when one attribute of the caption is swapped (no sampling); "
                        "vae: read them back from the VAE's reconstructions of ground-truth "
                        "clips, with PSNR and edge energy; wording: how much of each attribute "
                        "the text encoder carries in the held-out words (a probe, no DiT)")
    p.add_argument("--preset", default="demo", help="model preset")
    p.add_argument("--weights", type=Path, help="weights folder (default: the preset's own)")
    p.add_argument("-n", type=int, default=200, help="prompts per split")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the preset's)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the preset's)")
    add_frame_noise_argument(p)
    p.add_argument("--batch", type=int, default=8, help="clips generated at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the random-weight model")
    p.add_argument("--mistakes", action="store_true",
                   help="shapes: also print the most frequent wrong readings per attribute "
                        "(e.g. 'diamond -> circle: 19')")
    p.add_argument("--layout", choices=LAYOUTS, default="free",
                   help="text-use, vae and --strength: where the ground-truth clips put their "
                        "main object; match the world the model trained on")
    p.add_argument("--object-scale", type=float, default=1.0,
                   help="the same: their object sizes (data.object_scale; the demo trained at "
                        "1.25 from stage l on)")
    p.add_argument("--first-frame", action="store_true",
                   help="shapes, image-to-video presets: start each clip from its ground-truth "
                        "first frame (world: --layout) and add frame 0's PSNR against it")
    p.add_argument("--strength", type=float, default=1.0,
                   help="shapes: start from each prompt's ground-truth clip, noised so that this "
                        "share of the steps runs (video-to-video); below 1 it shows where along "
                        "the sampling path the model loses each attribute (default 1: from noise)")
