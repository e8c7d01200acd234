"""The distilled demo against its teacher on this CPU: end-to-end generation time per clip
(text encoding, denoising, decoding; loading excluded), measured side by side in one run.

    teacher  preset ``demo``: 20 UniPC steps, CFG 6 (cond and uncond in one batch)
    student  preset ``demo-flash``: 4 flash steps, no guidance (one DiT call per step)

    python benchmarks/bench_flash.py --flash-weights DIR [--repeats 5]

Quality is measured apart, by ``cineforge eval shapes --preset demo-flash -n 200``.
"""

from __future__ import annotations

import argparse
import time

import torch

from cineforge import load_pipeline

PROMPTS = (
    "a red circle moves to the right",
    "a blue square moves up over a dark background",
    "a green triangle falls down",
    "a yellow diamond moves to the left",
)


def seconds_per_clip(pipe, repeats: int) -> float:
    pipe(PROMPTS[0], seed=0)  # warm-up (first-call allocations)
    start = time.perf_counter()
    for i in range(repeats):
        pipe(PROMPTS[i % len(PROMPTS)], seed=i)
    return (time.perf_counter() - start) / repeats


def run(flash_weights: str, repeats: int = 5, printer=print) -> dict[str, float]:
    teacher = load_pipeline("demo", device="cpu")
    student = load_pipeline("demo-flash", weights=flash_weights, device="cpu")
    times = {}
    for name, pipe in (("demo", teacher), ("demo-flash", student)):
        s = pipe.preset.sampler
        times[name] = seconds_per_clip(pipe, repeats)
        printer(f"{name:11s} {s.steps:2d} {s.solver:5s} steps, CFG {s.guidance:g}: "
                f"{times[name]:.3f} s per clip")
    ratio = times["demo"] / times["demo-flash"]
    printer(f"speed-up {ratio:.1f}x on {torch.get_num_threads()} threads "
            f"(target >= 8x: {'met' if ratio >= 8 else 'NOT met'})")
    return {**times, "speedup": ratio}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flash-weights", required=True,
                        help="demo-flash weights folder (configs/demo/flash.yaml's export)")
    args = parser.parse_args()
    run(args.flash_weights, args.repeats)
