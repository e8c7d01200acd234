"""Does a model use each word of its prompt? Flow loss with a swapped attribute.

``cineforge eval shapes`` samples clips and reads them back, which needs a model good enough
to draw; this needs no sampling. For held-in shapes-world prompts, each ground-truth clip is
encoded by the model's VAE, noised at flow times t with fixed noise, and the DiT's flow loss
(``|v - (noise - x0)|^2``) is taken with the true caption and with captions that change one
attribute of the main object (its colour to another colour, its shape to another shape, its
motion to the opposite one: left <-> right, grow <-> shrink, ...), all worded alike
(``recaption``). The relative loss increase per attribute and t says how much the model relies
on that word: near 0 % the word is ignored, whatever the sampler does with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cineforge.data.shapes import (
    COLOURS,
    OPPOSITE_MOTION,
    SHAPES,
    ClipSpec,
    recaption,
    render,
    to_video_tensor,
)
from cineforge.errors import CineforgeError
from cineforge.sampling import frame_noise

SWAPPED = ("colour", "shape", "motion")
TIMES = (0.5, 0.7, 0.9, 0.98)


@dataclass(frozen=True)
class TextUse:
    """``loss[t]``: mean flow loss with the true captions; ``increase[attribute][t]``: relative
    loss increase (0.1 = +10 %) with that attribute swapped; ``motion_increase[motion][t]``:
    the motion swap's increase on the clips asked for that motion alone (a word the model
    ignores shows near 0 % there while the average over all motions does not)."""

    n: int
    times: tuple[float, ...]
    loss: tuple[float, ...]
    increase: dict[str, tuple[float, ...]]
    motion_increase: dict[str, tuple[float, ...]]


def swapped_captions(specs: Sequence[ClipSpec]) -> dict[str, list[str]]:
    """The true caption and one per swapped attribute, for each spec (worded alike)."""
    out: dict[str, list[str]] = {"true": [], **{k: [] for k in SWAPPED}}
    colours = tuple(COLOURS)
    for i, spec in enumerate(specs):
        m = spec.main
        out["true"].append(recaption(spec, seed=i))
        other = colours[(colours.index(m.colour) + 1 + i % (len(colours) - 1)) % len(colours)]
        out["colour"].append(recaption(spec, seed=i, colour=other))
        other = SHAPES[(SHAPES.index(m.shape) + 1 + i % (len(SHAPES) - 1)) % len(SHAPES)]
        out["shape"].append(recaption(spec, seed=i, shape=other))
        out["motion"].append(recaption(spec, seed=i, motion=OPPOSITE_MOTION[m.motion]))
    return out


@torch.no_grad()
def text_use(pipe, specs: Sequence[ClipSpec], times: Sequence[float] = TIMES, *,
             seed: int = 0, batch: int = 8, frame_noise_share: float = 0.0) -> TextUse:
    """Measure ``TextUse`` of ``pipe`` (a ``TextToVideo``) on the clips of ``specs`` at flow
    ``times``; the noise is drawn from ``seed``, with the model's ``frame_noise_share``."""
    if not specs:
        raise CineforgeError("no prompts to measure; ask for at least one (-n 1)")
    captions = swapped_captions(specs)
    states = {k: pipe.encode_text(v, "", 1.0)[0] for k, v in captions.items()}
    x0 = torch.cat([pipe.vae.encode(torch.stack([to_video_tensor(render(s)) for s in
                                                 specs[i : i + batch]]))
                    for i in range(0, len(specs), batch)])
    g = torch.Generator().manual_seed(seed)
    noise = frame_noise((len(times), *x0.shape), g, frame_noise_share)
    per_clip = {k: torch.zeros(len(times), len(specs)) for k in captions}  # flow loss
    with pipe.placement.use(pipe.dit) as dit:
        device = next(dit.parameters()).device
        for j, t in enumerate(times):
            target = noise[j] - x0
            xt = (1 - t) * x0 + t * noise[j]
            for i in range(0, len(specs), batch):
                x = xt[i : i + batch].to(device, pipe.dtype)
                tt = torch.full((len(x),), float(t), device=device)
                for k, context in states.items():
                    v = dit(x, tt, context[i : i + batch].to(device, pipe.dtype)).float().cpu()
                    err = (v - target[i : i + batch]) ** 2
                    per_clip[k][j, i : i + len(x)] = err.mean(dim=tuple(range(1, err.ndim)))
    true = per_clip["true"].double()

    def relative(swapped: torch.Tensor, clips: torch.Tensor) -> tuple[float, ...]:
        return tuple((swapped[:, clips].double().sum(1) / true[:, clips].sum(1) - 1).tolist())

    every = torch.ones(len(specs), dtype=torch.bool)
    increase = {k: relative(per_clip[k], every) for k in SWAPPED}
    motions = [s.main.motion for s in specs]
    motion_increase = {
        m: relative(per_clip["motion"], torch.tensor([x == m for x in motions]))
        for m in sorted(set(motions))
    }
    return TextUse(len(specs), tuple(times), tuple(true.mean(1).tolist()), increase,
                   motion_increase)
