"""Items of different shapes for packed-forward tests (``forward_packed`` vs per item)."""

from __future__ import annotations

import torch
from torch import nn

from cineforge.families.wan.dit import WAN_DIT_TINY, pad_context

TOL = 1e-5
# An image, a 5-frame clip, a 3-frame clip of another aspect ratio, a small 2-frame clip;
# token grids (1, 4, 4), (5, 4, 4), (3, 4, 6), (2, 2, 3).
SHAPES = ((16, 1, 8, 8), (16, 5, 8, 8), (16, 3, 8, 12), (16, 2, 4, 6))
TEXT_TOKENS = (5, 16, 1, 9)  # before padding to text_len 16
TIMES = (0.9, 0.05, 0.5, 0.31)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` (initialised from seed 0) with every parameter perturbed, so that no zero
    output layer or unit norm hides a mistake; in eval mode."""
    model.init_weights(gen(0))
    g = gen(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def packed_inputs(pad: bool = True):
    """Latents, times and text states (padded to the tiny DiT's text_len, or trimmed)."""
    g = gen(2)
    latents = [torch.randn(s, generator=g) for s in SHAPES]
    contexts = [torch.randn(n, 32, generator=g) for n in TEXT_TOKENS]
    if pad:
        contexts = [pad_context(c[None], WAN_DIT_TINY.text_len)[0] for c in contexts]
    return latents, torch.tensor(TIMES), contexts


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def assert_packed_equals_per_item(model: nn.Module, pad: bool) -> None:
    latents, t, contexts = packed_inputs(pad)
    with torch.no_grad():
        packed = model.forward_packed(latents, t, contexts)
        alone = [model(x[None], t[i : i + 1], c[None])[0]
                 for i, (x, c) in enumerate(zip(latents, contexts, strict=True))]
    assert [p.shape for p in packed] == list(SHAPES)
    assert min(a.abs().max().item() for a in alone) > 0.5  # a real signal per item
    assert max_diff(packed, alone) <= TOL
