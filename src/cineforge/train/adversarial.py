"""What every adversarial objective of the trainer shares (LADD's heads, the VAE's critic).

Both players train in one backward pass: the discriminator scores a detached fake (its term
reaches only its own weights), and the generator's term runs the discriminator with its
weights detached (``frozen_call``), so that term reaches only the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def frozen_call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with its weights detached: gradients reach the inputs only."""
    params = {k: p.detach() for k, p in module.named_parameters()}
    return functional_call(module, params, args)


def adversarial_losses(real: list[torch.Tensor], fake: list[torch.Tensor],
                       fake_for_generator: list[torch.Tensor], kind: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_D, L_G)`` averaged over discriminators (scores of real, detached fake and fake
    through frozen weights), ``kind`` hinge::

        L_D = mean relu(1 - D(real)) + mean relu(1 + D(fake)),   L_G = -mean D(fake)

    or lsgan: ``L_D = mean (D(real) - 1)^2 + mean D(fake)^2``, ``L_G = mean (D(fake) - 1)^2``."""
    if kind == "hinge":
        d = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
        g = [-f.mean() for f in fake_for_generator]
    else:
        d = [(r - 1).square().mean() + f.square().mean() for r, f in zip(real, fake, strict=True)]
        g = [(f - 1).square().mean() for f in fake_for_generator]
    return torch.stack(d).mean(), torch.stack(g).mean()
