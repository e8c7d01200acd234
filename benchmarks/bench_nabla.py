"""NABLA (P 0.9 + STA 11x3x3, compiled flex) vs dense SDPA: speed and error, CPU fp32.

One question: how much faster than dense attention is the NABLA backend at 4k, 16k and 32k
tokens (1 x 8 heads x 64 dims, video-shaped token grids in 1x8x8 tile order), and how far is
its output from dense? Per size and input kind it prints the dense SDPA time, the NABLA
backend time (block map + BlockMask + compiled flex, as a model pays it), the share of key
blocks kept, the speed-up, and the relative error ||nabla - dense|| / ||dense||. Compile time
(first call at a new shape minus a steady call) is reported separately.

Inputs: ``random`` (i.i.d. normal q, k, v: block means are near zero, the block scores are
almost uniform, so P = 0.9 keeps ~90 % of blocks: the worst case), and ``smooth gain g``
(structured: q and k are RMS-normalised smooth random fields over the (T, H, W) grid, shared
between q and k plus independent noise, times a gain g; v is another smooth field), which
has the spatial locality NABLA relies on. A trained model's q/k/v is still to be added.

    python benchmarks/bench_nabla.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cineforge.models.nabla import NablaAttention, NablaGrid, tile_order

HEADS, DIM = 8, 64
GRIDS = ((4, 32, 32), (16, 32, 32), (32, 32, 32))  # token grids: 4k, 16k, 32k tokens
NABLA = NablaAttention(p=0.9, sta_window=(11, 3, 3))
CORRELATION = (4, 16, 16)  # smooth fields: one random value per 4 x 16 x 16 tokens, trilinear
KINDS = ("smooth gain 1.5", "smooth gain 1.0", "random")
SAMPLE_EVERY = 8  # relative error over every 8th query block (exact rows, 1/8 the cost)


def _smooth_field(grid: tuple[int, int, int], g: torch.Generator) -> torch.Tensor:
    """(HEADS, T, H, W, DIM) field: coarse normal noise upsampled trilinearly."""
    coarse = [max(n // c, 1) for n, c in zip(grid, CORRELATION, strict=True)]
    lo = torch.randn(1, HEADS * DIM, *coarse, generator=g)
    f = F.interpolate(lo, size=grid, mode="trilinear", align_corners=False)
    return f.reshape(HEADS, DIM, *grid).permute(0, 2, 3, 4, 1)


def make_qkv(kind: str, grid: tuple[int, int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v (1, HEADS, L, DIM) in tile order."""
    g = torch.Generator().manual_seed(seed)
    L = grid[0] * grid[1] * grid[2]
    if kind == "random":
        return tuple(torch.randn(1, HEADS, L, DIM, generator=g) for _ in range(3))
    gain = float(kind.rsplit(" ", 1)[1])
    perm = tile_order(*grid)

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(HEADS, L, DIM)[:, perm].unsqueeze(0).contiguous()

    def rms_norm(x: torch.Tensor) -> torch.Tensor:
        return x * x.pow(2).mean(-1, keepdim=True).rsqrt()

    shared = _smooth_field(grid, g)
    q = rms_norm(shared + 0.3 * torch.randn(shared.shape, generator=g)) * gain
    k = rms_norm(shared + 0.3 * torch.randn(shared.shape, generator=g)) * gain
    return tokens(q), tokens(k), tokens(_smooth_field(grid, g))


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _sampled_rows(L: int, block: int) -> torch.Tensor:
    """Tokens of every SAMPLE_EVERY-th query block: dense rows are exact for them."""
    starts = torch.arange(0, L, block * SAMPLE_EVERY)
    return (starts[:, None] + torch.arange(block)).reshape(-1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def bench_size(grid: tuple[int, int, int], printer: Callable[[str], None]) -> list[dict]:
    """Dense timed once (its time does not depend on the values); NABLA timed per input kind,
    the first kind called twice (compile or recompile at this shape, then a steady call)."""
    rows = []
    nabla_grid = NablaGrid(*grid)
    _, t_dense = _timed(lambda: F.scaled_dot_product_attention(*make_qkv("random", grid)))
    for i, kind in enumerate(KINDS):
        q, k, v = make_qkv(kind, grid)
        t_first = 0.0
        if i == 0:
            _, t_first = _timed(lambda q=q, k=k, v=v: NABLA(q, k, v, mask=nabla_grid))
        sparse, t_nabla = _timed(lambda q=q, k=k, v=v: NABLA(q, k, v, mask=nabla_grid))
        _, t_map = _timed(lambda q=q, k=k: NABLA.block_map(q, k, nabla_grid))
        kept = NABLA.block_map(q, k, nabla_grid).float().mean().item()
        sel = _sampled_rows(q.shape[2], NABLA.block_size)
        err = _rel_err(sparse[:, :, sel], F.scaled_dot_product_attention(q[:, :, sel], k, v))
        row = dict(tokens=q.shape[2], kind=kind, dense_s=t_dense, nabla_s=t_nabla, map_s=t_map,
                   compile_s=max(t_first - t_nabla, 0.0), kept=kept, speedup=t_dense / t_nabla,
                   rel_err=err)
        rows.append(row)
        printer(f"{row['tokens']:6d} {kind:16s} {t_dense:8.3f} {t_nabla:8.3f} {t_map:7.3f} "
                f"{kept:6.1%} {row['speedup']:7.2f}x {err:8.2%} {row['compile_s']:9.1f}")
    return rows


def run(printer: Callable[[str], None] = print) -> list[dict]:
    printer(f"NABLA p={NABLA.p} sta={NABLA.sta_window} tile={NABLA.tile} vs dense SDPA; "
            f"1 x {HEADS} heads x {DIM} dims, fp32, {torch.get_num_threads()} threads")
    printer(f"{'tokens':>6s} {'input':16s} {'dense s':>8s} {'nabla s':>8s} {'map s':>7s} "
            f"{'kept':>6s} {'speedup':>8s} {'rel err':>8s} {'compile s':>9s}")
    rows = []
    for grid in GRIDS:
        rows += bench_size(grid, printer)
    return rows


if __name__ == "__main__":
    run()
