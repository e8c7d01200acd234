"""Quality filters, run cheapest first; the first one that fails rejects the scene.

A filter is any object with ``reason`` (the reject reason it records), ``cost`` (its place in
the order) and ``__call__(frames) -> (metrics, passed)`` over uint8 RGB frames ``T, H, W, 3``
sampled from the scene. The default ones (``default_filters``), with thresholds from
``thresholds.yaml`` (which also gives the measurement on real footage behind each value):

- ``MotionFilter`` (``static``): the share of pixels whose luma changes by more than
  ``delta`` between consecutive sampled frames.
- ``SharpnessFilter`` (``blurry``): CPBD, the cumulative probability of blur detection
  (Narvekar & Karam, IEEE TIP 2011): the share of edge pixels whose edge width (the length of
  the monotone luma run through the pixel, across the edge) is below the just-noticeable blur
  width, 3 px at contrast > 50 levels else 5 px, i.e. ``1 - exp(-(w / w_jnb) ** 3.6) <= 0.63``.
- ``TextFilter`` (``text``): the share of the frame covered by text boxes of the PP-OCRv4
  detection network (``textdet``).
- ``TechnicalFilter`` (``low_quality``): resolution and RMS contrast.

The hand-made measures they replaced stay available for comparison (``BlurFilter``: the
median of peak gradient / local contrast at strong edges; ``EdgeTextFilter``: the share of
8x8 blocks dense with Canny edges); on real footage both reject clean scenes.

Learned filters (aesthetic, watermark, ...) plug in as ``module:attribute`` names, see
``load_filter``; an attribute that is a class is instantiated without arguments. A filter may
also declare ``limits``: ``{metric: (op, threshold)}`` with op ``>=`` or ``<=`` (what must
hold to pass); a rejection then records which metric broke which limit (``Verdict.failed``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"motion": (">=", self.min_motion)}


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


def _frame_mean(measure, frames: np.ndarray) -> float | None:
    """Mean of ``measure`` over the frames' luma where it gives a value, else None."""
    values = [v for v in map(measure, luma(frames)) if v is not None]
    return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class BlurFilter:
    min_sharpness: float = 0.3
    reason: str = "blurry"
    cost: float = 2.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        sharpness = _frame_mean(_edge_sharpness, frames)
        if sharpness is None:  # no edges at all: nothing to judge (flat scenes fail others)
            return {}, True
        return {"sharpness": sharpness}, sharpness >= self.min_sharpness

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"sharpness": (">=", self.min_sharpness)}


@dataclass(frozen=True)
class EdgeTextFilter:
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

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"text_fraction": ("<=", self.max_text_fraction)}


def edge_widths(y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Width (pixels) and height (luma levels) of the edge through each ``edges`` pixel,
    measured along rows: the monotone run of ``y`` that contains the pixel's step to the right.
    Pixels on a flat step (no change to the right) are skipped."""
    f = y.astype(np.int16)
    step = np.sign(np.diff(f, axis=1)).ravel()  # rows of W - 1 steps, flattened
    n = f.shape[1] - 1
    starts = np.ones(step.shape, bool)
    starts[1:] = step[1:] != step[:-1]
    starts[::n] = True  # runs never cross rows
    run = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:] - 1, step.size - 1]
    r0, x0 = np.divmod(first, n)
    r1, x1 = np.divmod(last, n)
    height = np.abs(f[r1, x1 + 1] - f[r0, x0])
    rows, cols = np.nonzero(edges[:, :n])
    k = rows * n + cols
    k = k[step[k] != 0]
    return (last - first + 1)[run[k]], height[run[k]]


def cpbd(y: np.ndarray, *, min_height: int = 10, min_edges: int = 20) -> float | None:
    """CPBD of a uint8 luma image, or None with fewer than ``min_edges`` edge pixels. Canny
    edges are measured across their direction: rows for mostly vertical edges, columns (the
    transposed image) for mostly horizontal ones; edges under ``min_height`` levels (noise,
    coding ripples) are left out."""
    gx = np.abs(cv2.Sobel(y, cv2.CV_32F, 1, 0))
    gy = np.abs(cv2.Sobel(y, cv2.CV_32F, 0, 1))
    edges = cv2.Canny(y, 50, 150) > 0
    w1, h1 = edge_widths(y, edges & (gx >= gy))
    w2, h2 = edge_widths(np.ascontiguousarray(y.T), np.ascontiguousarray((edges & (gy > gx)).T))
    width, height = np.concatenate([w1, w2]), np.concatenate([h1, h2])
    keep = height >= min_height
    width, height = width[keep].astype(np.float64), height[keep]
    if len(width) < min_edges:
        return None
    jnb = np.where(height > 50, 3.0, 5.0)
    return float(((1 - np.exp(-((width / jnb) ** 3.6))) <= 0.63).mean())


@dataclass(frozen=True)
class SharpnessFilter:
    min_cpbd: float = 0.1
    reason: str = "blurry"
    cost: float = 2.0

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        value = _frame_mean(cpbd, frames)
        if value is None:  # no edges at all: nothing to judge (flat scenes fail others)
            return {}, True
        return {"cpbd": value}, value >= self.min_cpbd

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"cpbd": (">=", self.min_cpbd)}


@dataclass(frozen=True)
class TextFilter:
    """Text area from the PP-OCRv4 detector over ``frames`` evenly spaced frames (mean)."""

    max_text_area: float = 0.015
    frames: int = 4
    max_side: int = 640
    reason: str = "text"
    cost: float = 3.0
    _detector: list = field(default_factory=list, repr=False, compare=False)

    def detector(self):
        if not self._detector:  # built on first use: the model loads in ~0.1 s
            from cineforge.data.curate.textdet import TextDetector

            self._detector.append(TextDetector(max_side=self.max_side))
        return self._detector[0]

    def __call__(self, frames: np.ndarray) -> tuple[dict[str, float], bool]:
        picks = np.unique(np.linspace(0, len(frames) - 1, min(self.frames, len(frames)))
                          .round().astype(int))
        area = float(np.mean([self.detector()(frames[i])[1] for i in picks]))
        return {"text_area": area}, area <= self.max_text_area

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"text_area": ("<=", self.max_text_area)}


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

    @property
    def limits(self) -> dict[str, tuple[str, float]]:
        return {"min_side": (">=", float(self.min_side)), "contrast": (">=", self.min_contrast)}


THRESHOLDS = Path(__file__).with_name("thresholds.yaml")


def thresholds(path: str | Path = THRESHOLDS) -> dict[str, dict[str, float]]:
    """The filters' thresholds file: ``{filter: {setting: value}}``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CineforgeError(f"cannot read the thresholds file {path} ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CineforgeError(f"{path} must map each filter to its settings")
    return data


def default_filters(path: str | Path = THRESHOLDS) -> list[SceneFilter]:
    """Motion, sharpness (CPBD), text (PP-OCR) and technical filters set from ``path``."""
    t = thresholds(path)
    try:
        return [MotionFilter(**t["motion"]), SharpnessFilter(**t["sharpness"]),
                TextFilter(**t["text"]), TechnicalFilter(**t["technical"])]
    except (KeyError, TypeError) as exc:
        raise CineforgeError(f"{path}: bad or missing filter settings ({exc}); compare it "
                             "with the thresholds.yaml shipped with cineforge") from None


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
class Limit:
    """The check a rejected scene failed: ``value op threshold`` did not hold."""

    metric: str | None
    value: float | None
    op: str | None
    threshold: float | None


@dataclass(frozen=True)
class Verdict:
    metrics: dict[str, float]
    reason: str | None  # None: the scene passed every filter
    failed: Limit | None = None  # set with reason: the broken limit, as far as known


def passes(value: float, op: str, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    raise CineforgeError(f"unknown limit operator {op!r}; use '>=' or '<='")


def broken_limit(flt: SceneFilter, values: dict[str, float]) -> Limit:
    """The first declared limit of ``flt`` that ``values`` break; for a filter without
    limits, its first metric with no threshold."""
    limits: dict[str, tuple[str, float]] = getattr(flt, "limits", None) or {}
    for name, (op, threshold) in limits.items():
        if name in values and not passes(values[name], op, threshold):
            return Limit(name, float(values[name]), op, float(threshold))
    name = next(iter(values), None)
    return Limit(name, None if name is None else float(values[name]), None, None)


def apply_filters(frames: np.ndarray, filters: Sequence[SceneFilter]) -> Verdict:
    """Run ``filters`` cheapest first and stop at the first that fails."""
    metrics: dict[str, float] = {}
    for flt in sorted(filters, key=lambda f: f.cost):
        values, passed = flt(frames)
        metrics.update(values)
        if not passed:
            return Verdict(metrics, flt.reason, broken_limit(flt, values))
    return Verdict(metrics, None)
