"""Local / global attention (1 x 2 x 2 groups) vs dense SDPA: time at 16k and 64k tokens.

One question: how much faster than dense joint attention over ``[video, text]`` is the
``local_global`` backend, as a Kandinsky 4 block calls it (heads of 64 dims, 224 text tokens
joined into every group)? Per size it prints, side by side, the dense SDPA time, the local
and the global call (gather into groups, one batched SDPA, gather back), the speed-up of
each, and the share of dense attention's score FLOPs the groups compute
(``G * (L / G + M)^2 / (L + M)^2``). Inputs are random: the time does not depend on them.

    python benchmarks/bench_local_global.py          # CPU; about a minute or two

The 64k row is one call each (dense takes tens of seconds on a CPU); the 16k row the best
of three.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cineforge.models.local_global import AttentionGroups, LocalGlobalAttention

HEADS, DIM, TEXT = 4, 64, 224
GRIDS = ((16, 32, 32), (16, 64, 64))  # token grids: 16k and 64k video tokens
BACKEND = LocalGlobalAttention((1, 2, 2))


def _best(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up: the group plan (cached per grid), allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    print(f"{torch.get_num_threads()} threads, fp32, {HEADS} heads x {DIM}, {TEXT} text tokens, "
          f"groups {BACKEND.groups}")
    print(f"{'tokens':>8} {'dense s':>9} {'local s':>9} {'global s':>9} "
          f"{'local x':>8} {'global x':>9} {'score share':>12}")
    g = torch.Generator().manual_seed(0)
    for grid in GRIDS:
        video = grid[0] * grid[1] * grid[2]
        q, k, v = (torch.randn(1, HEADS, video + TEXT, DIM, generator=g) for _ in range(3))
        repeats = 3 if video <= 16384 else 1
        dense = _best(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), repeats)
        grouped = {}
        for kind in ("local", "global"):
            mask = AttentionGroups(kind, (grid,), (TEXT,))
            grouped[kind] = _best(lambda q=q, k=k, v=v, m=mask: BACKEND(q, k, v, mask=m),
                                  repeats)
        groups = BACKEND.groups[0] * BACKEND.groups[1] * BACKEND.groups[2]
        share = groups * (video / groups + TEXT) ** 2 / (video + TEXT) ** 2
        print(f"{video:>8} {dense:>9.2f} {grouped['local']:>9.2f} {grouped['global']:>9.2f} "
              f"{dense / grouped['local']:>7.2f}x {dense / grouped['global']:>8.2f}x "
              f"{share:>11.1%}")


if __name__ == "__main__":
    main()
