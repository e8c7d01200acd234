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
has the spatial locality NABLA relies on. ``demo model``: q, k, v of a self-attention layer
of the shipped demo DiT (4 heads x 64) on a real clip: a ShapesWorld clip rendered at the
size whose latent token grid is the benchmark's grid (32x32 tokens = 256x256 pixels; 32
latent frames = 125 frames), encoded by the demo VAE, noised to flow time 0.5, run through
the DiT with dense attention up to ``DEMO_LAYER``; tokens permuted into tile order. The demo
trained at 64x64 and 17 frames, so this also shows its q/k at sizes it never saw. A model
with a position table (the shipped demo) refuses grids larger than its table, so that row is
skipped unless ``--weights`` names a demo model with a position field (``position_field``),
which runs at any grid.

    python benchmarks/bench_nabla.py [--weights FOLDER]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError
from cineforge.models.nabla import NablaAttention, NablaGrid, tile_order

HEADS, DIM = 8, 64
GRIDS = ((4, 32, 32), (16, 32, 32), (32, 32, 32))  # token grids: 4k, 16k, 32k tokens
NABLA = NablaAttention(p=0.9, sta_window=(11, 3, 3))
CORRELATION = (4, 16, 16)  # smooth fields: one random value per 4 x 16 x 16 tokens, trilinear
KINDS = ("demo model", "smooth gain 1.5", "smooth gain 1.0", "random")
DEMO_LAYER = 4  # of 8: the fifth block's self-attention
DEMO_PROMPT = "a red circle moves to the right on a dark blue background"
SAMPLE_EVERY = 8  # relative error over every 8th query block (exact rows, 1/8 the cost)


def _smooth_field(grid: tuple[int, int, int], g: torch.Generator) -> torch.Tensor:
    """(HEADS, T, H, W, DIM) field: coarse normal noise upsampled trilinearly."""
    coarse = [max(n // c, 1) for n, c in zip(grid, CORRELATION, strict=True)]
    lo = torch.randn(1, HEADS * DIM, *coarse, generator=g)
    f = F.interpolate(lo, size=grid, mode="trilinear", align_corners=False)
    return f.reshape(HEADS, DIM, *grid).permute(0, 2, 3, 4, 1)


class _Captured(Exception):
    def __init__(self, qkv: tuple[torch.Tensor, ...]) -> None:
        self.qkv = qkv


@torch.no_grad()
def demo_qkv(grid: tuple[int, int, int], seed: int = 0,
             weights: str | None = None) -> tuple[torch.Tensor, ...]:
    """q, k, v (1, 4, L, 64) of the demo DiT's block ``DEMO_LAYER`` (weights: the embedded
    ones, or the folder ``weights``) on a clip whose token grid is ``grid``, in tile order.
    Raises CineforgeError without the weights or where the model refuses the grid."""
    from cineforge.data.shapes import ShapesWorld, ShapesWorldConfig
    from cineforge.families.family import load_components
    from cineforge.families.registry import get_preset

    preset = get_preset("demo")
    pipe = preset.family.make_pipeline(load_components(preset, weights))
    _, ph, pw = preset.dit.patch_size
    s, r = preset.vae.spatial_ratio, preset.vae.temporal_ratio
    world = ShapesWorld(ShapesWorldConfig(height=grid[1] * ph * s, width=grid[2] * pw * s,
                                          frames=1 + (grid[0] - 1) * r, image_fraction=0.0,
                                          split="heldout", seed=seed))
    latents = pipe.vae.encode(world[0]["video"][None])
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * latents + 0.5 * torch.randn(latents.shape, generator=g)
    context = pipe.encode_text([DEMO_PROMPT], "", 1.0)[0]

    def capture(q, k, v, mask=None):
        raise _Captured((q, k, v))

    block = pipe.dit.blocks[DEMO_LAYER].self_attn
    block.attention = capture
    try:
        pipe.dit(x, torch.tensor([0.5]), context)
    except _Captured as hit:
        perm = tile_order(*grid)
        return tuple(t[:, :, perm].contiguous() for t in hit.qkv)
    raise RuntimeError("the capture hook did not fire")


def make_qkv(kind: str, grid: tuple[int, int, int], seed: int = 0,
             weights: str | None = None) -> tuple[torch.Tensor, ...]:
    """q, k, v (1, HEADS, L, DIM) in tile order (``demo model``: the demo's 4 heads)."""
    if kind == "demo model":
        return demo_qkv(grid, seed, weights)
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


def oracle_share(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, p: float,
                 block: int) -> float:
    """Mean share of key blocks that hold mass ``p`` of the exact attention of the query
    blocks ``rows`` (whole blocks), fewest blocks first; one head at a time."""
    shares = []
    for h in range(q.shape[1]):
        probs = torch.softmax(q[0, h, rows] @ k[0, h].transpose(0, 1) / q.shape[-1] ** 0.5, -1)
        mass = probs.reshape(len(rows) // block, block, -1, block).sum(-1).mean(1)
        top = mass.sort(-1, descending=True).values.cumsum(-1)
        shares.append(((top < p).sum(-1) + 1).float().mean() / mass.shape[-1])
    return float(torch.stack(shares).mean())


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def bench_size(grid: tuple[int, int, int], printer: Callable[[str], None],
               weights: str | None = None) -> list[dict]:
    """Dense timed once per head count (its time does not depend on the values); NABLA timed
    per input kind, called twice at each new head count (compile or recompile at this shape,
    then a steady call). The ``demo model`` kind is skipped, with a note, without its weights."""
    rows = []
    nabla_grid = NablaGrid(*grid)
    dense: dict[int, float] = {}
    compiled: set[int] = set()
    for kind in KINDS:
        try:
            q, k, v = make_qkv(kind, grid, weights=weights)
        except CineforgeError as exc:
            printer(f"{grid[0] * grid[1] * grid[2]:6d} {kind:16s} skipped: {exc}")
            continue
        if q.shape[1] not in dense:
            _, dense[q.shape[1]] = _timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                q, k, v))
        t_dense, t_first = dense[q.shape[1]], 0.0
        if q.shape[1] not in compiled:  # compile (or recompile) at this shape, untimed
            _, t_first = _timed(lambda q=q, k=k, v=v: NABLA(q, k, v, mask=nabla_grid))
            compiled.add(q.shape[1])
        sparse, t_nabla = _timed(lambda q=q, k=k, v=v: NABLA(q, k, v, mask=nabla_grid))
        _, t_map = _timed(lambda q=q, k=k: NABLA.block_map(q, k, nabla_grid))
        kept = NABLA.block_map(q, k, nabla_grid).float().mean().item()
        sel = _sampled_rows(q.shape[2], NABLA.block_size)
        err = _rel_err(sparse[:, :, sel], F.scaled_dot_product_attention(q[:, :, sel], k, v))
        oracle = oracle_share(q, k, sel, NABLA.p, NABLA.block_size)
        row = dict(tokens=q.shape[2], kind=kind, heads=q.shape[1], dense_s=t_dense,
                   nabla_s=t_nabla, map_s=t_map, compile_s=max(t_first - t_nabla, 0.0),
                   kept=kept, oracle=oracle, speedup=t_dense / t_nabla, rel_err=err)
        rows.append(row)
        printer(f"{row['tokens']:6d} {kind:16s} {q.shape[1]:5d} {t_dense:8.3f} {t_nabla:8.3f} "
                f"{t_map:7.3f} {kept:6.1%} {oracle:6.1%} {row['speedup']:7.2f}x {err:8.2%} "
                f"{row['compile_s']:9.1f}")
    return rows


def run(printer: Callable[[str], None] = print, weights: str | None = None) -> list[dict]:
    printer(f"NABLA p={NABLA.p} sta={NABLA.sta_window} tile={NABLA.tile} vs dense SDPA; "
            f"1 x {HEADS} heads (demo: 4) x {DIM} dims, fp32, {torch.get_num_threads()} threads")
    printer(f"{'tokens':>6s} {'input':16s} {'heads':>5s} {'dense s':>8s} {'nabla s':>8s} "
            f"{'map s':>7s} {'kept':>6s} {'oracle':>6s} {'speedup':>8s} {'rel err':>8s} "
            f"{'compile s':>9s}")
    rows = []
    for grid in GRIDS:
        rows += bench_size(grid, printer, weights)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="demo weights folder for the 'demo model' row "
                        "(default: the embedded demo)")
    run(weights=parser.parse_args().weights)
