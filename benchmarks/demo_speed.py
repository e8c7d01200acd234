"""How fast is the shipped demo model on this CPU? Generation time of the default clip (model
loading reported separately) and training throughput with packing on vs off.

The model is the embedded ``demo`` preset (``cineforge/assets/demo``, fp16 files loaded to
fp32), run with its own sampler defaults, as ``cineforge generate`` runs it.

    python benchmarks/demo_speed.py [--steps N] [--skip-training]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from cineforge import load_pipeline


def run(steps: int | None = None, printer=print) -> dict[str, float]:
    start = time.perf_counter()
    pipe = load_pipeline("demo", device="cpu")
    load_s = time.perf_counter() - start
    s, parts = pipe.preset.sampler, pipe.runner
    steps = steps or s.steps
    request = pipe.request("a red circle moves to the right over a dark blue background",
                           steps=steps)
    pipe.generate(dataclasses.replace(request, steps=1))  # warm-up (first-call allocations)
    stages: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    start = last[0] = time.perf_counter()
    video = pipe.generate(request, progress=progress).pixels
    total = time.perf_counter() - start
    printer(
        f"demo model: DiT {sum(p.numel() for p in parts.dit.parameters()) / 1e6:.1f}M, "
        f"VAE {sum(p.numel() for p in parts.vae.parameters()) / 1e6:.1f}M params; "
        f"{torch.get_num_threads()} threads"
    )
    printer(f"load (fp16 files -> fp32, incl. MiniLM): {load_s:6.2f} s")
    printer(
        f"generate {tuple(video.shape)} in {steps} {s.solver} steps, CFG {s.guidance}: "
        f"{total:6.2f} s "
        f"(text+denoise {stages.get('denoise', 0.0):.2f} s, "
        f"decode {stages.get('decode', 0.0):.2f} s)"
    )
    printer(f"target < 10 s: {'met' if total < 10 else 'NOT met'}")
    return {"load_s": load_s, "generate_s": total}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    run(args.steps)
    if not args.skip_training:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_packing

        print()
        bench_packing.run()
