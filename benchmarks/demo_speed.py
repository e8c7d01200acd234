"""How fast is the demo-size model on this CPU? Generation time of the default clip (model
loading reported separately) and training throughput with packing on vs off.

The demo architecture comes from configs/demo_dit.yaml and configs/demo_vae.yaml; weights are
random (speed does not depend on their values), saved as fp16 safetensors and loaded back
the way the shipped model will be.

    python benchmarks/demo_speed.py [--steps 20] [--skip-training]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from cineforge.models.wan_dit import WanDiT
from cineforge.models.wan_vae import WanVAE
from cineforge.pipelines.t2v import TextToVideo, VideoRequest
from cineforge.train.config import load_config
from cineforge.train.dit_task import dit_config
from cineforge.train.vae_task import vae_config
from cineforge.weights.loader import load_pipeline_components, save_components
from cineforge.weights.presets import WAN21_T2V_TINY

ROOT = Path(__file__).resolve().parents[1]


def demo_preset():
    dit = load_config(ROOT / "configs/demo_dit.yaml").model
    vae = load_config(ROOT / "configs/demo_vae.yaml").model
    return dataclasses.replace(
        WAN21_T2V_TINY,
        name="demo-size",
        dit=dit_config(dit.name, dit.overrides),
        vae=vae_config(vae.name, vae.overrides),
        width=64,
        height=64,
        frames=17,
    )


def run(steps: int = 20, printer=print) -> dict[str, float]:
    preset = demo_preset()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_components(tmp, dit=WanDiT(preset.dit), vae=WanVAE(preset.vae), dtype=torch.float16)
        start = time.perf_counter()
        parts = load_pipeline_components(preset, Path(tmp))
        load_s = time.perf_counter() - start
    pipe = TextToVideo(parts)
    request = VideoRequest(
        prompt="a red circle moves to the right over a dark blue background",
        width=64,
        height=64,
        frames=17,
        steps=steps,
        guidance=4.0,
        shift=1.0,
    )
    pipe(dataclasses.replace(request, steps=1))  # warm-up (first-call allocations)
    stages: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    start = last[0] = time.perf_counter()
    video = pipe(request, progress=progress)
    total = time.perf_counter() - start
    printer(
        f"demo-size model: DiT {sum(p.numel() for p in parts.dit.parameters()) / 1e6:.1f}M, "
        f"VAE {sum(p.numel() for p in parts.vae.parameters()) / 1e6:.1f}M params; "
        f"{torch.get_num_threads()} threads"
    )
    printer(f"load (fp16 files -> fp32, incl. MiniLM): {load_s:6.2f} s")
    printer(
        f"generate {tuple(video.shape)} in {steps} steps with CFG: {total:6.2f} s "
        f"(text+denoise {stages.get('denoise', 0.0):.2f} s, "
        f"decode {stages.get('decode', 0.0):.2f} s)"
    )
    printer(f"target < 10 s: {'met' if total < 10 else 'NOT met'}")
    return {"load_s": load_s, "generate_s": total}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    run(args.steps)
    if not args.skip_training:
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_packing

        print()
        bench_packing.run()
