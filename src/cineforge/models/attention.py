"""One attention entry point, many backends, chosen once by name.

Every model calls ``attention(q, k, v, ...)`` through a backend looked up with
``get_attention_backend(name)`` when the model is built. Shapes are ``B, H, L, D``.
Dense SDPA is always available; sparse backends (NABLA, local/global) register here.
Sequence parallelism wraps the returned callable from outside, never inside a model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cineforge.models.local_global import LocalGlobalAttention
from cineforge.models.nabla import NablaAttention

AttentionFn = Callable[..., torch.Tensor]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense scaled-dot-product attention. ``mask`` is boolean (True = attend) or additive."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_BACKENDS: dict[str, AttentionFn] = {
    "sdpa": sdpa_attention,
    "nabla": NablaAttention(),  # block-sparse for calls whose mask is a NablaGrid; see nabla.py
    # grouped for calls whose mask is an AttentionGroups (1 x 2 x 2 groups); see local_global.py
    "local_global": LocalGlobalAttention(),
}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    _BACKENDS[name] = fn


def attention_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_attention_backend(name: str) -> AttentionFn:
    """Return the backend called ``name``; raise on an unknown name instead of falling back."""
    try:
        return _BACKENDS[name]
    except KeyError:
        from cineforge.errors import CineforgeError

        raise CineforgeError(
            f"unknown attention backend {name!r}; choose one of {attention_backends()}"
        ) from None
