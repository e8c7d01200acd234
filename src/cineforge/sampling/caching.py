"""Step caching: wrappers of a velocity callable that skip some of its evaluations.

Both caches decide at each call ``velocity(x, t)`` whether to evaluate the model or to return
the velocity of the last evaluated step again; the solver still receives a velocity at every
step. A skip saves the whole (guided) evaluation: the DiT's forward for cond and uncond.

Both papers cache a *residual* inside the DiT (output of the last block minus input of the
first) and measure a signal inside it. Here they see only ``x``, ``t`` and the velocity, so
they are output-level approximations of them, with one ``threshold`` each:

- ``TeaCache`` (after Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache"):
  measures the relative L1 change of the velocity's input from one step to the next,
  ``mean|x_i - x_{i-1}| / mean|x_{i-1}|``, summed over the steps since the last evaluated one
  (the paper: the change of the timestep-modulated input of the first block, rescaled by a
  fitted polynomial). It skips while that sum stays below ``threshold``.
- ``MagCache`` (after Ma et al. 2025, "Magnitude-aware Cache"): reads a calibrated curve of
  the velocity's magnitude, ``mean|v|`` against flow time ``t``, recorded in one full run
  (``MagnitudeLog``) and stored per preset. The magnitude ratio of a skipped step to the last
  evaluated one, ``gamma = m(t_i) / m(t_c)``, estimates how much the velocity has changed;
  the error ``|1 - gamma|`` is summed over the skipped steps and the step is skipped while
  that sum stays below ``threshold`` and at most ``MAX_SKIPS`` steps in a row are skipped
  (the paper: the ratio of residual norms per step, same accumulation).

Threshold 0 never skips (both sums are >= 0 and a skip needs them below the threshold), so the
result is bitwise that of the wrapped velocity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cineforge.errors import CineforgeError
from cineforge.sampling.solvers import Velocity

__all__ = ["CACHES", "MAX_SKIPS", "MagCache", "MagnitudeLog", "TeaCache", "make_cache"]

CACHES = ("none", "tea", "mag")
MAX_SKIPS = 3  # MagCache: steps skipped in a row at most (the paper's K)


class _StepCache:
    """Evaluate ``velocity`` or reuse its last output; counts ``evaluated`` and ``skipped``."""

    def __init__(self, velocity: Velocity, threshold: float):
        self.velocity, self.threshold = velocity, threshold
        self.evaluated = self.skipped = 0
        self.last: Tensor | None = None  # the last evaluated velocity
        self.error = 0.0  # the signal summed since then

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.last is not None:
            error = self.error + self.change(x, t)
            if error < self.threshold and self.may_skip():
                self.error, self.skipped = error, self.skipped + 1
                return self.last
        self.last = self.velocity(x, t)
        self.error, self.evaluated = 0.0, self.evaluated + 1
        self.evaluated_at(x, t)
        return self.last

    def change(self, x: Tensor, t: Tensor) -> float:
        raise NotImplementedError

    def may_skip(self) -> bool:
        return True

    def evaluated_at(self, x: Tensor, t: Tensor) -> None:
        pass


class TeaCache(_StepCache):
    """Skip while the relative L1 change of ``x`` since the last evaluation stays below
    ``threshold`` (see the module docstring)."""

    x_previous: Tensor  # the input of the previous call

    def change(self, x: Tensor, t: Tensor) -> float:
        before, self.x_previous = self.x_previous, x
        return float((x - before).abs().mean() / before.abs().mean().clamp_min(1e-12))

    def evaluated_at(self, x: Tensor, t: Tensor) -> None:
        self.x_previous = x


class MagCache(_StepCache):
    """Skip while the summed ``|1 - m(t) / m(t_c)|`` of a calibrated magnitude curve stays
    below ``threshold`` (see the module docstring). ``magnitudes``: ``(t, mean|v|)`` pairs."""

    def __init__(self, velocity: Velocity, threshold: float,
                 magnitudes: Sequence[tuple[float, float]], max_skips: int = MAX_SKIPS):
        super().__init__(velocity, threshold)
        curve = sorted((float(t), float(m)) for t, m in magnitudes)
        if len(curve) < 2 or any(m <= 0 for _, m in curve):
            raise CineforgeError("a MagCache calibration needs at least two (t, magnitude) "
                                 "pairs with magnitudes > 0; record one with MagnitudeLog")
        self.times = torch.tensor([t for t, _ in curve], dtype=torch.float64)
        self.magnitudes = torch.tensor([m for _, m in curve], dtype=torch.float64)
        self.max_skips, self.run = max_skips, 0
        self.m_last = 1.0

    def magnitude(self, t: Tensor) -> float:
        """The calibrated ``mean|v|`` at flow time ``t``, linearly interpolated (held flat
        beyond the calibrated times)."""
        s = min(max(float(t.max()), float(self.times[0])), float(self.times[-1]))
        i = min(int(torch.searchsorted(self.times, torch.tensor(s, dtype=torch.float64))),
                len(self.times) - 1)
        if i == 0 or self.times[i] == s:
            return float(self.magnitudes[i])
        t0, t1 = float(self.times[i - 1]), float(self.times[i])
        m0, m1 = float(self.magnitudes[i - 1]), float(self.magnitudes[i])
        return m0 + (m1 - m0) * (s - t0) / (t1 - t0)

    def change(self, x: Tensor, t: Tensor) -> float:
        return abs(1 - self.magnitude(t) / self.m_last)

    def may_skip(self) -> bool:
        self.run += 1
        return self.run <= self.max_skips

    def evaluated_at(self, x: Tensor, t: Tensor) -> None:
        self.m_last, self.run = self.magnitude(t), 0


class MagnitudeLog:
    """Records ``(t, mean|v|)`` of every call of ``velocity``: MagCache's calibration."""

    def __init__(self, velocity: Velocity):
        self.velocity = velocity
        self.records: list[tuple[float, float]] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        v = self.velocity(x, t)
        self.records.append((float(t.max()), float(v.float().abs().mean())))
        return v


def make_cache(
    name: str, threshold: float, magnitudes: Sequence[tuple[float, float]] = ()
) -> Callable[[Velocity], Velocity] | None:
    """The wrapper ``velocity -> cached velocity`` of cache ``name`` ("none": None)."""
    if name == "none":
        return None
    if name == "tea":
        return lambda velocity: TeaCache(velocity, threshold)
    if name == "mag":
        return lambda velocity: MagCache(velocity, threshold, magnitudes)
    raise CineforgeError(f"unknown {{cache}} {name!r}; use one of {', '.join(CACHES)}",
                         fields=("cache",))
