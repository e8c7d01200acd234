"""Training throughput with sequence packing on vs off, for a mixed image + video stream.

One question: how many real latent tokens per second does a DiT training step (forward,
backward, AdamW) process when a step's items are packed into one sequence, compared with
the two ways of batching them without packing? All three modes train the same items per
step (the packs of a ``TokenPacker`` over one seeded stream of images 16x1x8x8 = 16 tokens
and clips 16x5x8x8 = 80 tokens) from the same initial weights; only the execution differs:

- ``packed``: ``WanDiT.forward_packed``, one sequence, block-diagonal attention masks;
- ``bucketed``: the step's items grouped by latent shape, one ``forward`` per group (what the
  trainer does with ``flow.packing: false``; no padding, but one call per shape);
- ``padded``: every item zero-padded to the step's largest latent (images to 5 frames), one
  ``forward`` of the whole batch, loss masked to the real elements (padding changes what the
  model computes for the padded items: a cost baseline only).

Tokens/s counts real tokens only (median over steps). Modes run interleaved (step by step)
after a warm-up; the printed speed-up is the median of per-step ratios, steadier than a
ratio of medians on a shared machine.

    python benchmarks/bench_packing.py
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from cineforge.families.wan.dit import WanDiT, WanDiTConfig
from cineforge.models.packing import patch_tokens
from cineforge.train.packing import TokenPacker, fill_ratio

CONFIG = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=4, freq_dim=256,
                      text_dim=384, text_len=32)
SHAPES = ((16, 1, 8, 8), (16, 5, 8, 8))  # image, clip
IMAGE_FRACTION = 0.5
BUDGET = 512  # latent tokens per step
LOOKAHEAD = 16
ROUNDS = 8  # timed steps per mode (interleaved), after WARMUP steps each
WARMUP = 2

Item = tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]  # x0, noise, t, context


def make_steps(n: int, seed: int = 0) -> tuple[list[list[Item]], float]:
    """``n`` packed steps of random items from a seeded mixed stream, and their fill ratio."""
    g = torch.Generator().manual_seed(seed)
    shapes: list[tuple[int, ...]] = []

    def draw() -> int:
        shapes.append(SHAPES[0] if torch.rand((), generator=g) < IMAGE_FRACTION else SHAPES[1])
        return len(shapes) - 1

    packer = TokenPacker(draw, lambda i: patch_tokens(shapes[i], CONFIG.patch_size), BUDGET,
                         lookahead=LOOKAHEAD)
    packs = [packer.next_pack() for _ in range(n)]
    counts = [patch_tokens(s, CONFIG.patch_size) for s in shapes]
    steps = [[(torch.randn(shapes[i], generator=g), torch.randn(shapes[i], generator=g),
               float(torch.rand((), generator=g)),
               torch.randn(CONFIG.text_len, CONFIG.text_dim, generator=g)) for i in pack]
             for pack in packs]
    return steps, fill_ratio(packs, counts, BUDGET)


def _flow(item: Item) -> tuple[torch.Tensor, torch.Tensor]:
    x0, noise, t, _ = item
    return (1 - t) * x0 + t * noise, noise - x0


def loss_packed(model: WanDiT, items: list[Item]) -> torch.Tensor:
    pairs = [_flow(item) for item in items]
    preds = model.forward_packed([p[0] for p in pairs], torch.tensor([i[2] for i in items]),
                                 [i[3] for i in items])
    errors = [(pred - v).square().sum() for pred, (_, v) in zip(preds, pairs, strict=True)]
    return sum(errors) / sum(i[0].numel() for i in items)


def loss_bucketed(model: WanDiT, items: list[Item]) -> torch.Tensor:
    groups: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        groups.setdefault(tuple(item[0].shape), []).append(item)
    total = torch.zeros(())
    for group in groups.values():
        pairs = [_flow(item) for item in group]
        x = torch.stack([p[0] for p in pairs])
        v = torch.stack([p[1] for p in pairs])
        pred = model(x, torch.tensor([i[2] for i in group]), torch.stack([i[3] for i in group]))
        total = total + (pred - v).square().sum()
    return total / sum(i[0].numel() for i in items)


def loss_padded(model: WanDiT, items: list[Item]) -> torch.Tensor:
    frames = max(i[0].shape[1] for i in items)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, frames - x.shape[1]))

    pairs = [_flow(item) for item in items]
    x = torch.stack([pad(p[0]) for p in pairs])
    v = torch.stack([pad(p[1]) for p in pairs])
    real = torch.stack([pad(torch.ones_like(p[0])) for p in pairs])
    pred = model(x, torch.tensor([i[2] for i in items]), torch.stack([i[3] for i in items]))
    return ((pred - v).square() * real).sum() / real.sum()


MODES: dict[str, Callable[[WanDiT, list[Item]], torch.Tensor]] = {
    "packed": loss_packed, "bucketed": loss_bucketed, "padded": loss_padded,
}


def _train_step(model: WanDiT, optimizer: torch.optim.Optimizer,
                loss_fn: Callable[[WanDiT, list[Item]], torch.Tensor], items: list[Item]) -> float:
    start = time.perf_counter()
    loss = loss_fn(model, items)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(printer: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Train each mode on the same steps, interleaved; print one table; return its rows."""
    torch.manual_seed(0)
    base = WanDiT(CONFIG).init_weights(torch.Generator().manual_seed(0))
    steps, fill = make_steps(WARMUP + ROUNDS)
    models = {name: copy.deepcopy(base) for name in MODES}
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    steppers = {name: partial(_train_step, models[name], optims[name], fn)
                for name, fn in MODES.items()}
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for n, items in enumerate(steps):
        for name, step in steppers.items():
            seconds = step(items)
            if n >= WARMUP:
                times[name].append(seconds)

    real = [sum(patch_tokens(i[0].shape, CONFIG.patch_size) for i in items)
            for items in steps[WARMUP:]]
    computed = {
        "packed": real,
        "bucketed": real,
        "padded": [len(items) * max(patch_tokens(i[0].shape, CONFIG.patch_size) for i in items)
                   for items in steps[WARMUP:]],
    }
    printer(f"DiT training step (fwd + bwd + AdamW), fp32, {torch.get_num_threads()} threads; "
            f"dim {CONFIG.dim}, {CONFIG.num_layers} layers, text {CONFIG.text_len}x"
            f"{CONFIG.text_dim}; budget {BUDGET} tokens, pack fill {fill:.3f}, "
            f"{ROUNDS} interleaved steps after {WARMUP} warm-up")
    printer(f"{'mode':10s} {'ms/step':>8s} {'real tok/s':>10s} {'computed tok':>12s} "
            f"{'packed speed-up':>15s}")
    rows = []
    for name in MODES:
        ms = statistics.median(times[name]) * 1e3
        tokens_per_s = statistics.median(n / s for n, s in zip(real, times[name], strict=True))
        speedup = statistics.median(
            b / a for a, b in zip(times["packed"], times[name], strict=True))
        printer(f"{name:10s} {ms:8.1f} {tokens_per_s:10.0f} "
                f"{sum(computed[name]) / sum(real):11.2f}x {speedup:14.2f}x")
        rows.append({"mode": name, "ms_per_step": ms, "tokens_per_s": tokens_per_s,
                     "computed_over_real": sum(computed[name]) / sum(real),
                     "packed_speedup": speedup, "fill": fill})
    dense, per_item = _attention_pairs(steps[WARMUP:])
    printer(f"packed attention is dense over the pack (masked): {dense / per_item:.1f}x the "
            "query-key pairs of per-item attention (self + cross); a backend that skips "
            "cross-item blocks (flash varlen, flex) removes that cost")
    return rows


def _attention_pairs(steps: list[list[Item]]) -> tuple[int, int]:
    """Query-key pairs of self + cross attention, summed over steps: dense over each pack
    vs. within items only."""
    dense = per_item = 0
    for items in steps:
        lengths = [patch_tokens(i[0].shape, CONFIG.patch_size) for i in items]
        texts = [i[3].shape[0] for i in items]
        dense += sum(lengths) * (sum(lengths) + sum(texts))
        per_item += sum(n * (n + m) for n, m in zip(lengths, texts, strict=True))
    return dense, per_item


if __name__ == "__main__":
    run()
