"""Quality filters, run cheapest first; the first one that fails rejects the scene.

A filter is any object with ``reason`` (the reject reason it records), ``cost`` (its place in
the order) and ``__call__(frames) -> (metrics, passed)`` over uint8 RGB frames ``T, H, W, 3``
sampled from the scene. The built-in ones measure on the luma:

- ``MotionFilter`` (``static``): the share of pixels whose luma changes by more than
  ``delta`` between consecutive sampled frames.
- ``BlurFilter`` (``blurry``): edge sharpness in the spirit of CPBD's edge-width measure: at
  the strong edges (local maxima of the gradient where the 7x7 contrast exceeds 30 levels),
  the median of peak gradient / local contrast. An ideal step edge gives 0.5, a Gaussian blur
  of sigma ``s`` about ``0.4 / s``.
- ``TextFilter`` (``text``): the share of 8x8 blocks dense with Canny edges; overlaid text is
  the densest edge texture in a frame.
- ``TechnicalFilter`` (``low_quality``): resolution and RMS contrast.

Learned filters (aesthetic, watermark, ...) plug in as ``module:attribute`` names, see
``load_filter``; an attribute that is a class is instantiated without arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from cineforge.errors import CineforgeError


@runtime_checkable
class SceneFilter(Protocol):
    reason: str
    cost: float

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]: ...


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 ``T, H, W`` luma of uint8 RGB ``T, H, W, 3`` frames."""
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


@dataclass(frozen=True)
class MotionFilter:
    min_motion: float = 0.005
    delta: int = 12
    reason: str = "static"
    cost: float = 1.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        y = luma(frames).astype(np.int16)
        motion = float((np.abs(np.diff(y, axis=0)) > self.delta).mean()) if len(y) > 1 else 0.0
        return {"motion": motion}, motion >= self.min_motion


def _edge_sharpness(y: np.ndarray) -> float | None:
    f = y.astype(np.float32)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3) / 8
    mag = np.hypot(gx, gy)
    box = np.ones((7, 7), np.uint8)
    contrast = cv2.dilate(f, box) - cv2.erode(f, box)
    peak = mag >= cv2.dilate(mag, np.ones((3, 3), np.uint8))
    edges = peak & (contrast > 30) & (mag > 0.1 * contrast)
    if edges.sum() < 5:
        return None
    return float(np.median(mag[edges] / contrast[edges]))


@dataclass(frozen=True)
class BlurFilter:
    min_sharpness: float = 0.3
    reason: str = "blurry"
    cost: float = 2.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        values = [v for v in map(_edge_sharpness, luma(frames)) if v is not None]
        if not values:  # no edges at all: nothing to judge (flat scenes fail other filters)
            return {}, True
        sharpness = float(np.mean(values))
        return {"sharpness": sharpness}, sharpness >= self.min_sharpness


@dataclass(frozen=True)
class TextFilter:
    max_text_fraction: float = 0.2
    block: int = 8
    min_edge_density: float = 0.18
    reason: str = "text"
    cost: float = 3.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        b, shares = self.block, []
        for y in luma(frames):
            edges = cv2.Canny(y, 60, 150) > 0
            h, w = edges.shape[0] // b, edges.shape[1] // b
            if h == 0 or w == 0:
                return {}, True
            density = edges[: h * b, : w * b].reshape(h, b, w, b).mean(axis=(1, 3))
            shares.append(float((density > self.min_edge_density).mean()))
        fraction = float(np.mean(shares))
        return {"text_fraction": fraction}, fraction <= self.max_text_fraction


@dataclass(frozen=True)
class TechnicalFilter:
    min_side: int = 32
    min_contrast: float = 12.0  # RMS of the luma, 0..255
    reason: str = "low_quality"
    cost: float = 4.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        contrast = float(np.mean([y.std() for y in luma(frames)]))
        side = min(frames.shape[1:3])
        ok = side >= self.min_side and contrast >= self.min_contrast
        return {"contrast": contrast, "min_side": float(side)}, ok


def default_filters() -> list[SceneFilter]:
    return [MotionFilter(), BlurFilter(), TextFilter(), TechnicalFilter()]


def load_filter(spec: str) -> SceneFilter:
    """A filter from ``"package.module:name"``; a class is called with no arguments."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CineforgeError(f"filter {spec!r} must look like 'package.module:FilterName'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CineforgeError(f"cannot load filter {spec!r} ({exc}); check the name") from None
    flt = obj() if isinstance(obj, type) else obj
    if not isinstance(flt, SceneFilter):
        raise CineforgeError(
            f"{spec!r} is not a filter: it needs 'reason', 'cost' and __call__(frames)"
        )
    return flt


@dataclass(frozen=True)
class Verdict:
    metrics: dict[str, float]
    reason: str | None  # None: the scene passed every filter


def apply_filters(frames: np.ndarray, filters: Sequence[SceneFilter]) -> Verdict:
    """Run ``filters`` cheapest first and stop at the first that fails."""
    metrics: dict[str, float] = {}
    for flt in sorted(filters, key=lambda f: f.cost):
        values, passed = flt(frames)
        metrics.update(values)
        if not passed:
            return Verdict(metrics, flt.reason)
    return Verdict(metrics, None)
