"""Discrete-time (DDPM) v-prediction sampling as CogVideoX uses it: schedule and two solvers.

A model trained on integer timesteps t = 0 .. N-1 (N = 1000) sees ``x_t = sqrt(a_t) x0 +
sqrt(1 - a_t) eps`` with ``a_t`` the cumulative product of ``1 - beta`` and predicts
``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``, so ``x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v``.

CogVideoX's ``a_t`` (``cogvideox_alphas_cumprod``; the released scheduler configs and
diffusers' ``CogVideoXDDIMScheduler``), in float64:

1. betas "scaled linear": ``linspace(sqrt(0.00085), sqrt(0.012), N) ** 2``;
2. ``a = cumprod(1 - beta)``;
3. SNR shift by s (``snr_shift_scale``: 3.0 for CogVideoX-2B, 1.0 for 5B and 1.5):
   ``a <- a / (s + (1 - s) a)``, i.e. the signal-to-noise ratio ``a / (1 - a)`` divided by s;
4. zero terminal SNR (Lin et al. 2023): ``sqrt(a) <- (sqrt(a) - sqrt(a_last)) *
   sqrt(a_0) / (sqrt(a_0) - sqrt(a_last))``, so ``a_{N-1} = 0`` exactly (pure noise).

Sampling visits ``steps`` "trailing" timesteps, ``round(N - i N / steps) - 1`` for i = 0 ..
steps-1 (999 first). A step from timestep t goes to ``t - N // steps`` (``stride``; below 0
means the clean end, a = 1), which is the next visited timestep whenever steps divides N, as
the release configs use it (50 steps), and otherwise a few timesteps off it, as diffusers does.

Solvers are generators of ``SolverStep`` over ``predict(x, timesteps) -> v`` with
``timesteps`` a float32 ``(B,)`` tensor of the integer timesteps (the models' own
convention); guidance wraps ``predict``, never these loops:

- ``ddim_steps``: deterministic DDIM (eta 0), ``CogVideoXDDIMScheduler.step``;
- ``dpm_steps``: the stochastic second-order solver of ``CogVideoXDPMScheduler`` (SDE
  DPM-Solver++(2M), midpoint form) in log-SNR time ``lambda = log(sqrt(a / (1 - a)))``;
- ``renoise_steps``: Kandinsky 4.0 Flash's sampler (``kandinsky/t2v_pipeline.py``,
  ``diffusion_generate_renoise``): CogVideoX-5B's schedule (SNR shift 1) at 4 trailing
  timesteps, 999, 749, 499, 249 (``a_t`` = 0, 0.03317, 0.24236, 0.65419); from the current
  clean estimate ``x`` (first: any draw; ``a_999 = 0`` discards it) each step is
  ``x_t = sqrt(a_t) x + sqrt(1 - a_t) z`` with fresh noise ``z`` (``add_noise``, which casts
  ``a_t`` to the state's dtype first, as diffusers' does), then ``x = x0 from v(x_t, t)``;
  the last ``x`` is the sample, one model call per step, no guidance.

Coefficients are computed in float64 and applied to the float32 state, as diffusers does, so
a seed gives the same latents as diffusers' pipelines with these schedulers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cineforge.errors import CineforgeError
from cineforge.sampling.solvers import SolverStep

__all__ = [
    "DDPM_SOLVERS",
    "DDPMSchedule",
    "Predict",
    "cogvideox_alphas_cumprod",
    "cogvideox_schedule",
    "ddim_steps",
    "ddpm_steps",
    "dpm_steps",
    "FLASH_STEPS",
    "add_noise",
    "flash_ddpm_schedule",
    "renoise_steps",
    "trailing_timesteps",
    "x0_from_v",
]

Predict = Callable[[Tensor, Tensor], Tensor]
DDPM_SOLVERS = ("ddim", "dpm")


def cogvideox_alphas_cumprod(
    snr_shift_scale: float,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    rescale_zero_snr: bool = True,
) -> Tensor:
    """CogVideoX's cumulative ``a_t`` (float64, ``(num_train_timesteps,)``): scaled-linear
    betas, SNR divided by ``snr_shift_scale``, then zero terminal SNR (module docstring)."""
    if not snr_shift_scale > 0:
        raise CineforgeError(f"the SNR shift scale must be > 0, got {snr_shift_scale!r}; "
                             "use 1.0 for no shift", fields=("shift",))
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                           dtype=torch.float64) ** 2
    alphas = torch.cumprod(1.0 - betas, dim=0)
    s = snr_shift_scale
    alphas = alphas / (s + (1 - s) * alphas)
    if rescale_zero_snr:
        root = alphas.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        alphas = ((root - last) * (first / (first - last))) ** 2
    return alphas


def trailing_timesteps(steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """``steps`` decreasing int64 timesteps, ``round(N - i N / steps) - 1`` (999 first).

    Equal to diffusers' ``timestep_spacing="trailing"`` where that gives ``steps`` values;
    for the few counts where its float ``arange`` yields one more (a trailing -1, e.g. 61
    steps), the extra value is not taken."""
    if not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise CineforgeError(f"{{steps}} must be an integer in [1, {num_train_timesteps}], "
                             f"got {steps!r}", fields=("steps",))
    n = num_train_timesteps
    values = np.round(np.arange(n, 0, -n / steps))[:steps].astype(np.int64) - 1
    return torch.from_numpy(values)


@dataclass(frozen=True)
class DDPMSchedule:
    """``alphas_cumprod`` (float64, one per training timestep) and the visited ``timesteps``
    (int64, decreasing)."""

    alphas_cumprod: Tensor
    timesteps: Tensor

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def stride(self) -> int:
        """How far one step goes back in timesteps: ``N // steps``."""
        return self.num_train_timesteps // len(self.timesteps)

    def alpha(self, timestep: int) -> Tensor:
        """``a_t`` as a float64 scalar tensor; 1 before timestep 0 (the clean end)."""
        if timestep < 0:
            return torch.tensor(1.0, dtype=torch.float64)
        return self.alphas_cumprod[timestep]

    def fraction(self, timestep: int) -> float:
        """A timestep as a share of the training range, clipped at 0 (progress reports)."""
        return max(timestep, 0) / self.num_train_timesteps


def cogvideox_schedule(
    steps: int, snr_shift_scale: float, *, num_train_timesteps: int = 1000
) -> DDPMSchedule:
    """The schedule CogVideoX samples with: its ``a_t`` and ``steps`` trailing timesteps."""
    return DDPMSchedule(cogvideox_alphas_cumprod(snr_shift_scale, num_train_timesteps),
                        trailing_timesteps(steps, num_train_timesteps))


def x0_from_v(x: Tensor, v: Tensor, alpha: Tensor | float) -> Tensor:
    """The clean sample a v-prediction implies: ``sqrt(a) x - sqrt(1 - a) v``."""
    alpha = float(alpha)
    return alpha**0.5 * x - (1 - alpha) ** 0.5 * v


def _predict_at(predict: Predict, x: Tensor, timestep: int) -> Tensor:
    t = torch.full((x.shape[0],), float(timestep), dtype=torch.float32, device=x.device)
    return predict(x, t).to(x.dtype)


def ddim_steps(predict: Predict, x: Tensor, schedule: DDPMSchedule) -> Iterator[SolverStep]:
    """Deterministic DDIM from ``x`` (pure noise at the first timestep):

        x0 = sqrt(a_t) x - sqrt(1 - a_t) v
        x <- sqrt((1 - a_p) / (1 - a_t)) x + (sqrt(a_p) - sqrt(a_t (1 - a_p) / (1 - a_t))) x0

    with ``p = t - stride`` (a_p = 1 below 0)."""
    total = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps.tolist()):
        prev = t - schedule.stride
        a_t, a_p = schedule.alpha(t), schedule.alpha(prev)
        x0 = x0_from_v(x, _predict_at(predict, x, t), a_t)
        keep = ((1 - a_p) / (1 - a_t)) ** 0.5
        x = float(keep) * x + float(a_p**0.5 - a_t**0.5 * keep) * x0
        yield SolverStep(i, total, schedule.fraction(t), schedule.fraction(prev), x, x0)


def _log_snr(alpha: Tensor) -> Tensor:
    """``lambda = log(sqrt(a / (1 - a)))``: -inf at a = 0 (noise), +inf at a = 1 (clean)."""
    return torch.log(torch.sqrt(alpha / (1 - alpha)))


def dpm_steps(
    predict: Predict, x: Tensor, schedule: DDPMSchedule, noise: Callable[[], Tensor]
) -> Iterator[SolverStep]:
    """CogVideoX's DPM solver (``CogVideoXDPMScheduler.step`` in its pipeline's loop).

    With ``h = lambda_p - lambda_t`` and ``z = noise()`` (a fresh standard normal tensor
    shaped like ``x``) each step is

        x <- sqrt((1 - a_p) / (1 - a_t)) e^-h x + sqrt(a_p) (1 - e^-2h) D
             + sqrt(1 - a_p) sqrt(1 - e^-2h) z

    where D = x0 on the first and the last step, and otherwise the second-order
    ``D = (1 + 1 / 2r) x0 - 1 / 2r x0_prev`` with ``r = (lambda_t - lambda_b) / h`` and b the
    previously visited timestep. A second-order step draws ``noise()`` twice and uses the
    second draw, as diffusers does (so a seed gives its latents). The first step (a_t = 0) is
    ``sqrt(a_p) x0 + sqrt(1 - a_p) z``; the last (a_p = 1) returns x0.
    """
    timesteps = schedule.timesteps.tolist()
    total = len(timesteps)
    x0_prev = None
    for i, t in enumerate(timesteps):
        prev = t - schedule.stride
        a_t, a_p = schedule.alpha(t), schedule.alpha(prev)
        x0 = x0_from_v(x, _predict_at(predict, x, t), a_t)
        lam, lam_p = _log_snr(a_t), _log_snr(a_p)
        h = lam_p - lam
        keep = float(((1 - a_p) / (1 - a_t)) ** 0.5 * torch.exp(-h))
        gain = float(-torch.expm1(-2 * h) * a_p**0.5)
        spread = float((1 - a_p) ** 0.5 * (1 - torch.exp(-2 * h)) ** 0.5)
        z = noise()
        if x0_prev is None or prev < 0:
            denoised = x0
        else:
            r = (lam - _log_snr(schedule.alpha(timesteps[i - 1]))) / h
            denoised = float(1 + 1 / (2 * r)) * x0 - float(1 / (2 * r)) * x0_prev
            z = noise()
        x = keep * x + gain * denoised + spread * z
        x0_prev = x0
        yield SolverStep(i, total, schedule.fraction(t), schedule.fraction(prev), x, x0)


def ddpm_steps(
    solver: str,
    predict: Predict,
    x: Tensor,
    schedule: DDPMSchedule,
    noise: Callable[[], Tensor] | None = None,
) -> Iterator[SolverStep]:
    """The steps of ``solver`` ("ddim" or "dpm"; "dpm" needs ``noise``)."""
    if solver == "ddim":
        return ddim_steps(predict, x, schedule)
    if solver == "dpm":
        if noise is None:
            raise CineforgeError("the dpm solver draws noise at every step: pass noise=")
        return dpm_steps(predict, x, schedule, noise)
    raise CineforgeError(f"unknown {{solver}} {solver!r} for this discrete-time model; "
                         f"use one of {', '.join(DDPM_SOLVERS)}", fields=("solver",))


# --------------------------------------------------------------------- Kandinsky 4.0 Flash

FLASH_STEPS = 4  # the release hard-codes them: the generator is distilled at these timesteps
FLASH_SNR_SHIFT = 1.0  # CogVideoX-5B's scheduler, which the release loads


def flash_ddpm_schedule(steps: int = FLASH_STEPS) -> DDPMSchedule:
    """CogVideoX-5B's ``a_t`` and ``steps`` trailing timesteps (999, 749, 499, 249 for 4)."""
    return cogvideox_schedule(steps, FLASH_SNR_SHIFT)


def add_noise(x: Tensor, noise: Tensor, alpha: Tensor) -> Tensor:
    """``sqrt(a) x + sqrt(1 - a) noise``, ``a`` cast to x's dtype first (diffusers')."""
    a = alpha.to(x.dtype)
    return a.sqrt() * x + (1 - a).sqrt() * noise


def renoise_steps(
    predict: Predict, x: Tensor, schedule: DDPMSchedule,
    noise: Callable[[tuple[int, ...]], Tensor],
) -> Iterator[SolverStep]:
    """Kandinsky 4.0 Flash (module docstring): one ``SolverStep`` per timestep of
    ``schedule``; ``predict(x_t, t) -> v`` gets the integer timesteps as a float32 ``(B,)``
    tensor; ``step.x`` and ``step.x0`` are the new clean estimate, ``step.t`` the timestep
    as a share of the training range, ``step.t_next`` the next one's (0 after the last)."""
    timesteps = schedule.timesteps.tolist()
    for i, t in enumerate(timesteps):
        alpha = schedule.alpha(t)
        x_t = add_noise(x, noise(tuple(x.shape)).to(x), alpha)
        times = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
        x = x0_from_v(x_t, predict(x_t, times).to(x.dtype), alpha)
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        yield SolverStep(i, len(timesteps), schedule.fraction(t), schedule.fraction(t_next),
                         x, x)
