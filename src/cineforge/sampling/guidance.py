"""Classifier-free guidance as a wrapper around velocity callables.

``v = v_uncond + scale * (v_cond - v_uncond)``; scale 1 is the conditional velocity alone and
skips the unconditional evaluation. The result is again a ``velocity(x, t)`` for any solver.

Guidance truncation (``until``): guidance only at flow times ``t >= until``, i.e. the first,
noisiest steps where the layout forms; later steps evaluate the conditional model alone
(one forward instead of two).
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from cineforge.errors import CineforgeError
from cineforge.sampling.solvers import Velocity

__all__ = ["batchable", "classifier_free_guidance", "guided_velocity"]


def _mix(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    return v_uncond + scale * (v_cond - v_uncond)


def classifier_free_guidance(
    velocity_cond: Velocity, velocity_uncond: Velocity, scale: float
) -> Velocity:
    """Guided velocity from two callables (each with its conditioning already bound)."""
    if scale == 1:
        return velocity_cond

    def guided(x: Tensor, t: Tensor) -> Tensor:
        return _mix(velocity_cond(x, t), velocity_uncond(x, t), scale)

    return guided


def batchable(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> bool:
    """Whether cond and uncond can run as one batch (``guided_velocity(batched=True)``)."""
    try:
        _concat_conditioning(cond, uncond)
    except CineforgeError:
        return False
    return True


def _concat_conditioning(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """Stack cond over uncond along the batch for every tensor; other values must agree."""
    if cond.keys() != uncond.keys():
        raise CineforgeError(
            f"conditional and unconditional inputs differ in names: {sorted(cond)} vs "
            f"{sorted(uncond)}; pass the same keyword arguments for both"
        )
    both = {}
    for name, c in cond.items():
        u = uncond[name]
        if not isinstance(c, Tensor):
            if c is not u and c != u:
                raise CineforgeError(
                    f"non-tensor input {name!r} differs between cond and uncond; batched "
                    "guidance needs it equal, or use batched=False"
                )
            both[name] = c
        elif c.shape[1:] != u.shape[1:]:
            raise CineforgeError(
                f"{name!r} has shape {tuple(c.shape)} (cond) vs {tuple(u.shape)} (uncond); pad "
                "both to the same length or use batched=False"
            )
        else:
            both[name] = torch.cat([c, u])
    return both


def guided_velocity(
    model: Callable[..., Tensor],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    scale: float,
    *,
    batched: bool = True,
    until: float | None = None,
) -> Velocity:
    """Guided velocity over ``model(x, t, **conditioning) -> v``.

    ``batched=True`` runs cond and uncond in one call on a doubled batch (``[x; x]``, ``[t; t]``,
    each conditioning tensor ``[cond; uncond]``), faster on accelerators; ``batched=False``
    makes two calls. Both give the same result. Scale 1 calls the conditional model only.
    ``until``: guide only where ``t >= until`` (flow time), elsewhere call the conditional
    model alone; None guides everywhere.
    """

    def conditional(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, **cond)

    def unconditional(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, **uncond)

    if scale == 1 or not batched:
        guided = classifier_free_guidance(conditional, unconditional, scale)
    else:
        both = _concat_conditioning(cond, uncond)

        def guided(x: Tensor, t: Tensor) -> Tensor:
            v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
            return _mix(v_cond, v_uncond, scale)

    if until is None or scale == 1:
        return guided

    def truncated(x: Tensor, t: Tensor) -> Tensor:
        return guided(x, t) if float(t.max()) >= until else conditional(x, t)

    return truncated
