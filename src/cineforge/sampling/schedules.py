"""Flow-matching schedules: the noise level sigma of the state before each solver step.

Flow matching interpolates ``x_t = (1 - t) * x0 + t * noise`` with t in [0, 1] (1 = noise); a
schedule is the decreasing list of times the solver visits, ``sigmas`` (N + 1 values, last 0),
plus ``times`` (N values): the t handed to the velocity model at each step. For Euler the two
agree; diffusers' UniPC hands its model integer timesteps, so there ``times`` are those
integers / 1000. The schedules reproduce diffusers 0.42.1 exactly (float32 results equal), so
official Wan / CogVideoX / Kandinsky settings sample as their reference pipelines do.
"""

import numpy as np
import torch
from torch import Tensor

from cineforge.errors import CineforgeError

__all__ = ["euler_schedule", "flow_sigmas", "shift_time", "unipc_schedule"]


def shift_time(t, shift: float):
    """The resolution time shift ``t' = shift * t / (1 + (shift - 1) * t)``; shift > 1 spends
    more steps at high noise. Works on floats, numpy arrays and tensors (keeps their dtype)."""
    return shift * t / (1 + (shift - 1) * t)


def _check(steps: int, shift: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise CineforgeError(f"sampling steps must be an integer >= 1, got {steps!r}; pass e.g. 30")
    if not shift > 0:
        raise CineforgeError(f"time shift must be > 0, got {shift!r}; use 1.0 for no shift")


def flow_sigmas(steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000) -> Tensor:
    """Euler schedule, float32 ``(steps + 1,)`` from 1 down to 0.

    Equal to diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps)
    .sigmas``, which shifts twice: the smallest training time 1 / num_train_timesteps is shifted
    (in float32) to give the end of a linspace of timesteps, and that linspace is shifted
    again (in float64). With shift 3 and 4 steps the timesteps are [1000, 857.69, 602.15, 8.93].
    """
    _check(steps, shift)
    n = num_train_timesteps
    ends = shift_time(torch.tensor([float(n), 1.0]) / n, shift)  # training sigmas max / min
    sigma_max, sigma_min = ends.tolist()
    timesteps = np.linspace(sigma_max * n, sigma_min * n, steps)
    sigmas = torch.from_numpy(shift_time(timesteps / n, shift)).float()
    return torch.cat([sigmas, torch.zeros(1)])


def euler_schedule(
    steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000
) -> tuple[Tensor, Tensor]:
    """``(sigmas, times)`` for the Euler solver: ``flow_sigmas`` and the model times, which are
    the same sigmas without the final 0 (diffusers passes the model ``sigma * 1000``)."""
    sigmas = flow_sigmas(steps, shift, num_train_timesteps=num_train_timesteps)
    return sigmas, sigmas[:-1].clone()


def flash_schedule(
    steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000
) -> tuple[Tensor, Tensor]:
    """``(sigmas, times)`` of few-step re-noising samplers (``flash_steps``): ``steps`` evenly
    spaced times from 1 down, shifted, then 0; with 4 steps and shift 1, 1, .75, .5, .25 (the
    flow-time analogue of Kandinsky 4.0 Flash's 999, 749, 499, 249), with shift 3 1, .9, .75,
    .5. The model sees the times themselves; a distilled model is trained at exactly these."""
    _check(steps, shift)
    del num_train_timesteps  # the times are the sigmas, not a discretised grid
    sigmas = shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()
    return sigmas, sigmas[:-1].clone()


def unipc_schedule(
    steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000
) -> tuple[Tensor, Tensor]:
    """``(sigmas, times)`` for UniPC, as diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True,
    flow_shift=shift, prediction_type="flow_prediction").set_timesteps(steps)`` builds them.

    sigmas: float32 ``(steps + 1,)``: ``linspace(1, 1/num_train_timesteps, steps + 1)`` without
    its last value, shifted once (float64), the first value moved from 1 to 1 - 1e-6 (the
    solver takes log(1 - sigma)), then a final 0 appended. This differs from ``flow_sigmas``.
    times: float32 ``(steps,)``: diffusers' ``scheduler.timesteps`` are ``sigma * 1000``
    truncated to int64 (999 for the first step); times are those integers / num_train_timesteps.
    """
    _check(steps, shift)
    n = num_train_timesteps
    sigmas = shift_time(np.linspace(1.0, 1.0 / n, steps + 1)[:-1], shift)
    if abs(sigmas[0] - 1.0) < 1e-6:
        sigmas[0] -= 1e-6
    timesteps = torch.from_numpy((sigmas * n).astype(np.int64))
    sigmas = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])
    return sigmas, timesteps.float() / n
