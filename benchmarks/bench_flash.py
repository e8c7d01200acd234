"""The distilled demo against its teacher on this CPU: end-to-end generation time per clip
(text encoding, denoising, decoding; loading excluded), measured side by side in one run.

    teacher  preset ``demo``: 20 UniPC steps, CFG 6 (cond and uncond in one batch)
    student  preset ``demo-flash``: 4 flash steps, no guidance (one DiT call per step)

    python benchmarks/bench_flash.py --flash-weights DIR [--repeats 7] [--threads N]

Quality is measured apart, by ``cineforge eval shapes --preset demo-flash -n 200``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cineforge import load_pipeline

PROMPTS = (
    "a red circle moves to the right",
    "a blue square moves up over a dark background",
    "a green triangle falls down",
    "a yellow diamond moves to the left",
)


STAGES = ("text", "denoise", "decode")  # text: encoding and checks, up to the first step


def _seconds(pipe, prompt: str, seed: int) -> dict[str, float]:
    """Seconds of one clip, in all and per stage (read off the pipeline's progress reports)."""
    marks: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, time.perf_counter())

    start = time.perf_counter()
    pipe(prompt, seed=seed, progress=progress)
    end = time.perf_counter()
    return {"total": end - start, "text": marks["denoise"] - start,
            "denoise": marks["decode"] - marks["denoise"], "decode": end - marks["decode"]}


def run(flash_weights: str, repeats: int = 7, printer=print) -> dict[str, float]:
    """Median seconds per clip of each preset, the two timed in turns (clip i of the teacher,
    then clip i of the student), so that a busy moment of the machine hits both alike."""
    pipes = {"demo": load_pipeline("demo", device="cpu"),
             "demo-flash": load_pipeline("demo-flash", weights=flash_weights, device="cpu")}
    for pipe in pipes.values():
        pipe(PROMPTS[0], seed=0)  # warm-up (first-call allocations)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pipes}
    for i in range(repeats):
        for name, pipe in pipes.items():
            runs[name].append(_seconds(pipe, PROMPTS[i % len(PROMPTS)], i))
    times = {name: {part: statistics.median(r[part] for r in values)
                    for part in ("total", *STAGES)} for name, values in runs.items()}
    for name, pipe in pipes.items():
        s, t = pipe.preset.sampler, times[name]
        stages = ", ".join(f"{part} {1000 * t[part]:.0f} ms" for part in STAGES)
        printer(f"{name:11s} {s.steps:2d} {s.solver:5s} steps, CFG {s.guidance:g}: "
                f"{t['total']:.3f} s per clip ({stages}; medians of {repeats})")
    ratio = times["demo"]["total"] / times["demo-flash"]["total"]
    denoise = times["demo"]["denoise"] / times["demo-flash"]["denoise"]
    printer(f"speed-up {ratio:.1f}x end to end, {denoise:.1f}x in the denoising, on "
            f"{torch.get_num_threads()} threads (target >= 8x end to end: "
            f"{'met' if ratio >= 8 else 'NOT met'})")
    return {**{name: t["total"] for name, t in times.items()}, "speedup": ratio,
            "denoise_speedup": denoise}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--flash-weights", required=True,
                        help="demo-flash weights folder (configs/demo/flash.yaml's export)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.flash_weights, args.repeats)
