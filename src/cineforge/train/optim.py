"""Optimiser, learning-rate schedule, EMA weights, norms and activation checkpointing.

Everything here acts on a model from outside; models only declare contracts
(``offload_blocks``) that these functions read.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cineforge.errors import CineforgeError
from cineforge.train.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and conv kernels (ndim >= 2), not on biases, norm
    gains or other vectors. A model may declare ``lr_scales`` ({submodule name: factor}): the
    parameters under that submodule train at ``factor`` times the learning rate (e.g. a
    distillation's fresh discriminator heads beside a pretrained student)."""
    scales: dict[str, float] = getattr(model, "lr_scales", {})
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner = _owner(name, scales)
        scale = 1.0 if owner is None else scales[owner]
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    return torch.optim.AdamW(
        [{"params": params, "lr": config.lr * scale,
          "weight_decay": config.weight_decay if decayed else 0.0}
         for (scale, decayed), params in sorted(groups.items(), key=lambda kv: (kv[0][0] != 1,
                                                                                 not kv[0][1]))],
        lr=config.lr, betas=config.betas, eps=config.eps,
    )


def _owner(name: str, submodules) -> str | None:
    """The one of ``submodules`` (names) that parameter ``name`` lies under, or None."""
    return next((m for m in submodules if name == m or name.startswith(m + ".")), None)


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``config.lr`` at 0-based ``step``: linear warmup over ``warmup`` steps,
    then constant or a half cosine down to ``min_lr_ratio`` at ``total_steps``."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup) / max(1, total_steps - config.warmup))
    low = config.min_lr_ratio
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(lr_factor, config=config, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


class EMA:
    """An fp32 copy of a model whose floating weights follow ``ema = d * ema + (1 - d) * w``.

    The decay ramps up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average forgets the random initialisation quickly in short runs. Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).float().requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = list(self.model.parameters())
        live = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - d)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


def grad_norm_(model: nn.Module, max_norm: float) -> float:
    """L2 norm of the gradients before clipping; clips to ``max_norm`` if > 0.

    A model may declare ``adversaries`` (submodule names): players that train against the
    rest (a distillation's discriminator heads, a VAE's critic). Each is clipped on its own
    and the rest together, so that a critic's large gradients do not scale the generator's
    down. The norm returned is the rest's (the whole model's when none is declared)."""
    limit = max_norm if max_norm > 0 else math.inf
    apart: tuple[str, ...] = tuple(getattr(model, "adversaries", ()))
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in ("", *apart)}
    for name, p in model.named_parameters():
        if p.grad is not None:
            groups[_owner(name, apart) or ""].append(p)
    norms = {owner: float(torch.nn.utils.clip_grad_norm_(params, limit))
             for owner, params in groups.items() if params}
    return norms.get("", 0.0)


@torch.no_grad()
def weight_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.float()) for p in model.parameters()])
    ))


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each repeated block's activations in the backward pass.

    Reads the model's ``offload_blocks`` (the name of its ``nn.ModuleList`` of blocks) and
    wraps every block's ``forward`` in ``torch.utils.checkpoint`` (non-reentrant), so module
    names and state-dict keys are unchanged. Returns the number of blocks wrapped.
    """
    name = getattr(model, "offload_blocks", None)
    if name is None:
        raise CineforgeError(
            f"{type(model).__name__} declares no offload_blocks, so activation checkpointing "
            "has no blocks to wrap; set activation_checkpointing: false"
        )
    blocks = getattr(model, name)
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)
