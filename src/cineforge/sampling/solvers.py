"""Flow-matching solvers over a velocity callable, written as generators of steps.

A velocity is ``velocity(x, t) -> v`` with ``x`` the current state (any shape, batch first)
and ``t`` a float32 tensor of shape ``(B,)`` on ``x.device`` holding the flow time in [0, 1]
(1 = noise) of every sample; ``v`` estimates ``noise - x0`` (so ``x0 = x_t - t * v``). Models
trained on 0..1000 timesteps multiply by 1000 at their own boundary.

Each solver yields a :class:`SolverStep` after every step; :func:`sample` runs one to the end.
Guidance, offloading and parallelism wrap the velocity callable, never these loops.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from cineforge.errors import CineforgeError
from cineforge.sampling.schedules import euler_schedule, flash_schedule, unipc_schedule

__all__ = [
    "Solver",
    "SolverStep",
    "Velocity",
    "euler_steps",
    "flash_steps",
    "get_solver",
    "frame_noise",
    "initial_noise",
    "sample",
    "solver_steps",
    "unipc_steps",
]

Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SolverStep:
    """One finished step: the velocity was evaluated at time ``t``; ``x`` is the new state at
    ``t_next``; ``x0`` is the clean-sample prediction ``x_t - t * v`` from that evaluation."""

    index: int
    total: int
    t: float
    t_next: float
    x: Tensor
    x0: Tensor


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    *,
    frame_share: float = 0.0,
) -> Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` (a CPU generator), then moved
    to ``device`` and ``dtype``: the same seed gives the same noise on every device.
    ``frame_share``: the part of the noise's variance common to all frames (``frame_noise``),
    for models trained that way; 0 gives i.i.d. noise."""
    if generator.device.type != "cpu":
        raise CineforgeError(
            f"initial_noise needs a CPU torch.Generator, got one on {generator.device}; "
            "create it with torch.Generator().manual_seed(seed)"
        )
    return frame_noise(tuple(shape), generator, frame_share).to(device=device, dtype=dtype)


def frame_noise(shape: tuple[int, ...], generator: torch.Generator,
                frame_share: float = 0.0) -> Tensor:
    """Float32 noise of ``shape`` (``..., T, H, W``), each element N(0, 1), with correlation
    ``frame_share`` between frames: ``sqrt(1 - s) own + sqrt(s) common``, where ``common`` is
    one draw shared by the T frames (the "mixed noise" prior of PYoCo, Ge et al. 2023). At high
    noise the layout then starts out the same in every frame, and the model learns how frames
    differ instead of reconciling independent draws. ``frame_share == 0`` draws exactly
    ``torch.randn(shape)``."""
    if not 0.0 <= frame_share < 1.0:
        raise CineforgeError(f"frame noise share must be in [0, 1), got {frame_share}")
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if frame_share == 0.0 or len(shape) < 3:
        return noise
    common = torch.randn((*shape[:-3], 1, *shape[-2:]), generator=generator)
    return math.sqrt(1.0 - frame_share) * noise + math.sqrt(frame_share) * common


def _schedule(sigmas: Tensor, times: Tensor | None) -> tuple[Tensor, Tensor]:
    """Check a schedule; ``times`` defaults to the sigmas the steps start from."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise CineforgeError(
            f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}; "
            "build one with cineforge.sampling.flow_sigmas(steps, shift)"
        )
    sigmas = sigmas.detach().float().cpu()
    times = sigmas[:-1] if times is None else times.detach().float().cpu()
    if times.shape != (len(sigmas) - 1,):
        raise CineforgeError(
            f"times must hold one value per step ({len(sigmas) - 1}), got {tuple(times.shape)}"
        )
    return sigmas, times


def _velocity_at(velocity: Velocity, x: Tensor, t: Tensor) -> Tensor:
    """Evaluate the velocity with ``t`` broadcast to one float32 time per sample."""
    t_batch = t.to(x.device).expand(x.shape[0]).contiguous()
    return velocity(x, t_batch).to(x.dtype)


def euler_steps(
    velocity: Velocity, x: Tensor, sigmas: Tensor, times: Tensor | None = None
) -> Iterator[SolverStep]:
    """Euler: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, times_i)``.

    Matches diffusers' ``FlowMatchEulerDiscreteScheduler.step`` exactly (float32).
    """
    sigmas, times = _schedule(sigmas, times)
    total = len(times)
    for i in range(total):
        v = _velocity_at(velocity, x, times[i])
        x0 = x - sigmas[i] * v
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        yield SolverStep(i, total, float(sigmas[i]), float(sigmas[i + 1]), x, x0)


def flash_steps(
    velocity: Velocity, x: Tensor, sigmas: Tensor, times: Tensor | None = None, *,
    noise: Callable[[tuple[int, ...]], Tensor] | None = None,
) -> Iterator[SolverStep]:
    """Re-noising few-step sampling (Kandinsky 4.0 Flash, in flow time): each step predicts
    ``x0 = x_t - t * v(x_t, t)`` and moves to the next time with fresh noise,
    ``x = (1 - t_next) x0 + t_next * noise(x.shape)``, instead of keeping the first draw; the
    last step returns ``x0``. Distilled models are trained on exactly this (``train.distill``).
    ``noise(shape)`` gives a fresh float32 draw (the pipeline draws it from the request's seed,
    so runs reproduce)."""
    if noise is None:
        raise CineforgeError("the flash solver re-noises every step and needs noise=, a "
                             "callable giving fresh noise of a given shape")
    sigmas, times = _schedule(sigmas, times)
    total = len(times)
    for i in range(total):
        v = _velocity_at(velocity, x, times[i])
        x0 = x - sigmas[i] * v
        t_next = sigmas[i + 1]
        x = x0 if t_next == 0 else (1 - t_next) * x0 + t_next * noise(tuple(x0.shape)).to(x0)
        yield SolverStep(i, total, float(sigmas[i]), float(t_next), x, x0)


def _log_snr(sigmas: Tensor) -> Tensor:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; +inf at sigma = 0."""
    return torch.log(1 - sigmas) - torch.log(sigmas)


def _exponential_step(
    x: Tensor, m0: Tensor, residual, sigmas: Tensor, lambdas: Tensor, i: int, j: int
) -> Tensor:
    """Data-prediction exponential integrator from sigma_i to sigma_j (UniPC, B(h) = e^-h - 1):
    ``x_j = sigma_j / sigma_i * x - alpha_j * (e^-h - 1) * (m0 + residual)``, h = lambda_j -
    lambda_i; ``residual`` is the higher-order correction built from x0 differences."""
    phi = torch.expm1(lambdas[i] - lambdas[j])
    return sigmas[j] / sigmas[i] * x - (1 - sigmas[j]) * phi * (m0 + residual)


def _ratio(lambdas: Tensor, a: int, b: int, c: int) -> Tensor:
    """Step ratio r = (lambda_a - lambda_b) / (lambda_c - lambda_b) of a multistep formula."""
    return (lambdas[a] - lambdas[b]) / (lambdas[c] - lambdas[b])


def _corrector_weights(h: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """UniC-2 weights (rho_prev, rho_now) for a step of size h with ratio r (bh2): the
    solution of [[1, 1], [r, 1]] rho = [b1, b2], b_k from the phi-functions of -h."""
    phi = torch.expm1(-h)
    b1 = (phi / -h - 1) / phi
    b2 = ((phi / -h - 1) / -h - 0.5) * 2 / phi
    rho_prev = (b1 - b2) / (1 - r)
    return rho_prev, b1 - rho_prev


def unipc_steps(
    velocity: Velocity, x: Tensor, sigmas: Tensor, times: Tensor | None = None
) -> Iterator[SolverStep]:
    """UniPC for flow matching: order-2 predictor, order-2 corrector, B(h) = bh2, first and
    last step at order 1 (``lower_order_final``), as in Wan 2.1 and diffusers'
    ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)``.

    Each step evaluates the velocity once, at the predicted state; the corrector then refines
    that state with the new x0 before the next prediction. Yielded ``x`` is the predicted
    (not yet corrected) state, the same tensor diffusers' ``step`` returns. The solver works
    in log(alpha / sigma), so sigmas are capped at 1 - 1e-6 (as ``unipc_schedule`` builds them).
    """
    sigmas, times = _schedule(sigmas, times)
    sigmas = sigmas.clamp(max=1 - 1e-6)
    lambdas = _log_snr(sigmas)
    total = len(times)
    m_prev2 = m_prev = x_prev = None  # x0 predictions of the two previous steps; state before
    for i in range(total):
        m = x - sigmas[i] * _velocity_at(velocity, x, times[i])
        if i == 1:  # UniC-1 after the first (order 1) step
            x = _exponential_step(x_prev, m_prev, 0.5 * (m - m_prev), sigmas, lambdas, i - 1, i)
        elif i > 1:  # UniC-2
            r = _ratio(lambdas, i - 2, i - 1, i)
            rho_prev, rho_now = _corrector_weights(lambdas[i] - lambdas[i - 1], r)
            residual = rho_prev * (m_prev2 - m_prev) / r + rho_now * (m - m_prev)
            x = _exponential_step(x_prev, m_prev, residual, sigmas, lambdas, i - 1, i)
        residual = 0.0
        if 0 < i < total - 1:  # UniP-2 with its fixed weight 1/2
            residual = 0.5 * (m_prev - m) / _ratio(lambdas, i - 1, i, i + 1)
        x_prev, m_prev2, m_prev = x, m_prev, m
        x = _exponential_step(x, m, residual, sigmas, lambdas, i, i + 1)
        yield SolverStep(i, total, float(sigmas[i]), float(sigmas[i + 1]), x, m)


@dataclass(frozen=True)
class Solver:
    """A named solver: its step generator and the schedule it is used with by default."""

    name: str
    steps: Callable[..., Iterator[SolverStep]]
    schedule: Callable[..., tuple[Tensor, Tensor]]
    fresh_noise: bool = False  # ``steps`` takes ``noise=``, a callable giving fresh draws


_SOLVERS = {
    "euler": Solver("euler", euler_steps, euler_schedule),
    "unipc": Solver("unipc", unipc_steps, unipc_schedule),
    "flash": Solver("flash", flash_steps, flash_schedule, fresh_noise=True),
}


def get_solver(name: str) -> Solver:
    """The solver registered as ``name`` ("euler", "unipc", "flash")."""
    if name not in _SOLVERS:
        raise CineforgeError(
            f"unknown solver {name!r}; choose one of {', '.join(sorted(_SOLVERS))}"
        )
    return _SOLVERS[name]


def sample(
    velocity: Velocity,
    x: Tensor,
    sigmas: Tensor,
    times: Tensor | None = None,
    *,
    solver: str = "euler",
    noise: Callable[[tuple[int, ...]], Tensor] | None = None,
) -> Tensor:
    """Run ``solver`` from ``x`` (the state at ``sigmas[0]``) to the end; return the last state.
    ``noise``: fresh draws for solvers that re-noise (``Solver.fresh_noise``)."""
    for step in solver_steps(get_solver(solver), velocity, x, sigmas, times, noise=noise):
        x = step.x
    return x


def solver_steps(
    solver: Solver, velocity: Velocity, x: Tensor, sigmas: Tensor, times: Tensor | None = None,
    *, noise: Callable[[tuple[int, ...]], Tensor] | None = None,
) -> Iterator[SolverStep]:
    """``solver.steps`` with ``noise`` passed to the solvers that re-noise."""
    if solver.fresh_noise:
        return solver.steps(velocity, x, sigmas, times, noise=noise)
    return solver.steps(velocity, x, sigmas, times)
