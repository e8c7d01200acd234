"""What do step caching and guidance economy buy on the demo model, and what do they cost?

One run of the embedded ``demo`` preset at its defaults (20 UniPC steps, CFG 6) on the CPU:
the uncached clip first, then each setting on the same prompt and seed. For each: denoising
time and its speed-up over the uncached run, DiT calls and the samples they ran (calls x
batch), and PSNR of the decoded clip against the uncached one (pixels in [-1, 1],
peak-to-peak 2; inf = identical). On a shared or busy CPU, ``--threads 1`` keeps the times
comparable.

    python benchmarks/bench_caching.py [--steps N] [--prompt TEXT] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time
from unittest import mock

import torch

import cineforge.pipelines.common as common
from cineforge import load_pipeline

SETTINGS = (  # (label, request fields)
    *((f"tea {t}", {"cache": "tea", "cache_threshold": t}) for t in (0.05, 0.1, 0.2, 0.4)),
    *((f"mag {t}", {"cache": "mag", "cache_threshold": t}) for t in (0.02, 0.05, 0.1, 0.2)),
    ("guidance until 0.5", {"guidance_until": 0.5}),
    ("guidance until 0.25", {"guidance_until": 0.25}),
    ("tea 0.1 + until 0.5", {"cache": "tea", "cache_threshold": 0.1, "guidance_until": 0.5}),
)


def psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((video - reference) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def run(steps: int | None = None, prompt: str = "a red circle moves to the right over a dark "
        "blue background", printer=print) -> list[tuple[str, float, list[int], float]]:
    pipe = load_pipeline("demo", device="cpu")
    forwards: list[int] = []
    pipe.runner.dit.register_forward_hook(lambda m, args, out: forwards.append(len(args[0])))
    base = pipe.request(prompt, steps=steps)
    pipe.generate(pipe.request(prompt, steps=1))  # warm-up (first-call allocations)

    def measure(**fields) -> tuple[torch.Tensor, float, list[int]]:
        forwards.clear()
        clock: dict[str, float] = {}

        def progress(stage: str, done: int, total: int) -> None:
            clock.setdefault(f"{stage} {done}", time.perf_counter())

        video = pipe.generate(pipe.request(prompt, steps=steps, **fields), progress=progress)
        denoise = clock["decode 0"] - clock["denoise 0"]
        return video.pixels, denoise, list(forwards)

    reference, base_s, base_forwards = measure()
    rows = [("uncached, batched CFG", base_s, base_forwards, math.inf)]
    # the two-forward form of the same guidance: what batching saves
    with mock.patch.object(common, "batchable", lambda cond, uncond: False):
        video, seconds, n = measure()
    rows.append(("CFG as two forwards", seconds, n, psnr(video, reference)))
    for label, fields in SETTINGS:
        video, seconds, n = measure(**fields)
        rows.append((label, seconds, n, psnr(video, reference)))
    video, seconds, n = measure()  # the timing noise of this machine
    rows.append(("uncached again", seconds, n, psnr(video, reference)))

    printer(f"demo, {base.steps} {base.solver} steps, CFG {base.guidance}, "
            f"{base.width}x{base.height}x{base.frames}, {torch.get_num_threads()} threads")
    printer(f"{'setting':<24}{'denoise s':>10}{'speed-up':>10}{'DiT calls':>10}"
            f"{'samples':>8}{'PSNR dB':>9}")
    for label, seconds, n, quality in rows:
        printer(f"{label:<24}{seconds:>10.2f}{base_s / seconds:>9.2f}x{len(n):>10}"
                f"{sum(n):>8}{quality:>9.1f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    parser.add_argument("--prompt", default="a red circle moves to the right over a dark blue "
                        "background")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.steps, args.prompt)
