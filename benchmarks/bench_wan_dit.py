"""Wan 2.1 DiT forward: cineforge vs diffusers on the same weights and inputs (CPU, fp32).

One question: is our DiT forward at least as fast as the reference? Prints, per config,
the median forward time of both (interleaved runs after a warm-up), the ratio
ours / diffusers (<= 1.0 is the goal) and the achieved GFLOP/s from ``wan_dit_flops``.
The ratio is the median of per-pair ratios (each of our runs against the diffusers run
right after it), which is steadier than a ratio of medians on a shared machine.

    python benchmarks/bench_wan_dit.py
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from cineforge.families.wan.dit import (
    WAN_DIT_1_3B,
    WAN_DIT_TINY,
    WanDiT,
    WanDiTConfig,
    wan_dit_flops,
)
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS
from cineforge.weights.keymap import load_strict

# (name, config, latent shape B,C,T,H,W, text tokens)
CASES: tuple[tuple[str, WanDiTConfig, tuple[int, ...], int], ...] = (
    ("tiny", WAN_DIT_TINY, (1, 16, 5, 16, 16), 16),
    (
        "1.3B dims, 2 layers, 1024 tokens",
        dataclasses.replace(WAN_DIT_1_3B, num_layers=2),
        (1, 16, 4, 32, 32),
        512,
    ),
)


def _diffusers_model(c: WanDiTConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, text_dim=c.text_dim,
        freq_dim=c.freq_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm, qk_norm="rms_norm_across_heads", eps=c.eps,
    ).eval()


def _time(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_case(
    config: WanDiTConfig, latent_shape: tuple[int, ...], text_len: int, repeats: int
) -> dict[str, float]:
    """Median seconds of both forwards (interleaved), paired ratio, max abs diff and FLOPs."""
    ref = _diffusers_model(config)
    with torch.device("meta"):
        ours = WanDiT(config)
    load_strict(ours, WAN_DIT_FROM_DIFFUSERS.convert(ref.state_dict()))
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(latent_shape, generator=g)
    context = torch.randn(latent_shape[0], text_len, config.text_dim, generator=g)
    t = torch.full((latent_shape[0],), 0.7)

    def run_ours() -> torch.Tensor:
        return ours(x, t, context)

    def run_ref() -> torch.Tensor:
        return ref(x, t * config.timestep_scale, context, return_dict=False)[0]

    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    with torch.inference_mode():
        diff = (run_ours() - run_ref()).abs().max().item()  # also the warm-up
        for _ in range(repeats):
            times["ours"].append(_time(run_ours))
            times["diffusers"].append(_time(run_ref))
    return {
        "ours_s": statistics.median(times["ours"]),
        "diffusers_s": statistics.median(times["diffusers"]),
        "ratio": statistics.median(
            a / b for a, b in zip(times["ours"], times["diffusers"], strict=True)
        ),
        "max_abs_diff": diff,
        "flops": wan_dit_flops(config, latent_shape, text_len),
    }


def run(printer: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Run every case and print one table; returns the rows (for a combined benchmark)."""
    printer(f"Wan DiT forward, fp32, {torch.get_num_threads()} threads, median of interleaved runs")
    printer(
        f"{'case':36s} {'tokens':>6s} {'ours ms':>9s} {'diffusers ms':>12s} {'ratio':>6s} "
        f"{'ours GFLOP/s':>12s} {'diffusers GFLOP/s':>17s} {'max diff':>9s}"
    )
    rows = []
    for name, config, shape, text_len in CASES:
        repeats = 30 if config.dim < 256 else 5
        r = bench_case(config, shape, text_len, repeats)
        pt, ph, pw = config.patch_size
        tokens = shape[2] // pt * (shape[3] // ph) * (shape[4] // pw)
        printer(
            f"{name:36s} {tokens:6d} {r['ours_s'] * 1e3:9.1f} {r['diffusers_s'] * 1e3:12.1f} "
            f"{r['ratio']:6.2f} {r['flops'] / r['ours_s'] / 1e9:12.1f} "
            f"{r['flops'] / r['diffusers_s'] / 1e9:17.1f} {r['max_abs_diff']:9.1e}"
        )
        rows.append({"case": name, "tokens": tokens, **r})
    return rows


if __name__ == "__main__":
    run()
