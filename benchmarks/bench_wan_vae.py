"""Wan 2.1 VAE decode: ours vs diffusers' AutoencoderKLWan, time and peak memory.

One question: does our streaming decoder run at least as fast as diffusers' with less
memory, and does its memory stay flat as the video gets longer?

Both models have the official channel widths (base_dim 96, dim_mult 1-2-4-4, two residual
blocks per stage) and the same random weights (diffusers' seeded init, copied into ours
through ``WAN_VAE_FROM_DIFFUSERS``); fp32 on CPU, batch 1, the same latents.

Everything runs in one fresh subprocess, so nothing the caller did to its heap counts, and
with glibc malloc serving each allocation above 64 KiB by its own mmap
(``MALLOC_MMAP_THRESHOLD_=65536``, which also switches off the adaptive threshold): freed
tensors go back to the kernel at once and the resident set size (RSS) follows live memory.
Both models are loaded and warmed up (two latent frames: every chunk shape of the walk).

Peak memory (torch keeps no CPU allocator statistics): before each measured decode the
kernel's RSS high-water mark is reset to the current RSS (``5`` written to
``/proc/self/clear_refs``); after it, ``VmHWM - VmRSS_before`` from ``/proc/self/status``
is the extra resident memory at the decode's worst moment, its output included.

Time: the two decoders alternate, so both see the same machine load; the best wall time and
the best CPU time (``time.process_time``, all threads) of each are reported. On a shared
machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAD_TO_HEAD = (3, 16)  # latent frames, latent size: 9 frames at 128x128
ROUNDS = 2
LENGTHS = ((9, 8), (17, 8))  # 33 and 65 frames at 64x64, ours only
IMPLS = ("ours", "diffusers")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _decoders(impls: tuple[str, ...]):
    """Decode functions of raw latents ``z`` for the implementations named, same weights."""
    import torch
    from diffusers import AutoencoderKLWan

    from cineforge.families.wan.vae import WAN_VAE_2_1, WanVAE
    from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS
    from cineforge.weights.keymap import load_strict

    torch.manual_seed(0)
    ref = AutoencoderKLWan().eval()
    out = {}
    if "ours" in impls:
        with torch.device("meta"):
            ours = WanVAE(WAN_VAE_2_1)
        load_strict(ours, WAN_VAE_FROM_DIFFUSERS.convert(ref.state_dict()))
        ours.eval()
        mean = torch.tensor(WAN_VAE_2_1.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(WAN_VAE_2_1.latents_std).view(1, -1, 1, 1, 1)
        out["ours"] = lambda z: ours.decode((z - mean) / std)  # ours takes normalised latents
    if "diffusers" in impls:
        out["diffusers"] = lambda z: ref.decode(z).sample
    return out


def _latents(frames: int, size: int):
    import torch

    return torch.randn(1, 16, frames, size, size, generator=torch.Generator().manual_seed(1))


def _measure(decode, z, outputs: list | None = None) -> dict:
    import time

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark to the current RSS
    before = _status_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    out = decode(z)
    result = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "peak_mib": (_status_kib("VmHWM") - before) / 1024,
        "output_mib": out.numel() * out.element_size() / 2**20,
    }
    if outputs is not None:
        outputs.append(out)
    return result


def _measure_all() -> dict:
    import torch

    decoders = _decoders(IMPLS)
    z = _latents(*HEAD_TO_HEAD)
    small = [_latents(*case) for case in LENGTHS]
    result: dict = {"head_to_head": {name: [] for name in IMPLS}}
    with torch.no_grad():
        for decode in decoders.values():  # warm-up: every chunk shape
            decode(z[:, :, :2])
        outputs: list = []
        for i in range(ROUNDS):
            for name, decode in decoders.items():
                kept = outputs if i == 0 else None
                result["head_to_head"][name].append(_measure(decode, z, kept))
        result["max_abs_diff"] = (outputs[0] - outputs[1]).abs().max().item()
        del outputs
        decoders["ours"](small[0][:, :, :2])
        result["lengths"] = [_measure(decoders["ours"], s) for s in small]
    return result


def run(printer=print) -> dict:
    """Measure in a fresh subprocess, print a table, return the numbers."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])

    runs = result["head_to_head"]

    def row(label: str, key: str, pick, fmt: str) -> None:
        ours, theirs = (pick(r[key] for r in runs[name]) for name in IMPLS)
        printer(f"{label:<26}{ours:>10{fmt}}{theirs:>11{fmt}}{ours / theirs:>9.2f}x")

    frames, size = HEAD_TO_HEAD
    n, px = 1 + 4 * (frames - 1), 8 * size
    printer(f"Wan 2.1 VAE decode of {n} frames at {px}x{px}: official widths, random weights,")
    printer(f"fp32 CPU, batch 1, {os.cpu_count()} cores, default torch threads")
    printer(f"{'':<26}{'ours':>10}{'diffusers':>11}{'ratio':>10}")
    row(f"wall time s (best of {ROUNDS})", "wall_s", min, ".2f")
    row(f"CPU time s (best of {ROUNDS})", "cpu_s", min, ".2f")
    row("peak memory MiB (max)", "peak_mib", max, ".0f")
    printer(f"outputs agree to max |diff| {result['max_abs_diff']:.1e}")
    printer("ours, peak decode memory by video length at 64x64:")
    lengths = result["lengths"]
    for (f, _), m in zip(LENGTHS, lengths, strict=True):
        printer(
            f"  {1 + 4 * (f - 1):>3} frames: {m['peak_mib']:6.0f} MiB "
            f"(output itself {m['output_mib']:.1f} MiB), {m['wall_s']:.1f} s"
        )
    printer(f"  65 / 33 frames: {lengths[1]['peak_mib'] / lengths[0]['peak_mib']:.2f}x")
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(_measure_all()))
    else:
        run()
