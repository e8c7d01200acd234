"""Quality filters: each measure on planted defects, cheapest-first early exit, plug-ins."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from cineforge.data.curate.filters import (
    BlurFilter,
    EdgeTextFilter,
    MotionFilter,
    SharpnessFilter,
    TechnicalFilter,
    TextFilter,
    apply_filters,
    default_filters,
    load_filter,
)
from cineforge.errors import CineforgeError
from curate_corpus import blurred, clip, with_text

GOOD = clip(5)[::3]  # 12 frames, as the stage samples them


def test_motion_separates_static_from_moving():
    metrics, ok = MotionFilter()(GOOD)
    assert ok and metrics["motion"] > 0.05
    still = np.repeat(GOOD[:1], 12, axis=0)
    assert MotionFilter()(still) == ({"motion": 0.0}, False)


def test_sharpness_of_step_edges_and_blur():
    step = np.zeros((2, 64, 64, 3), np.uint8)
    step[:, :, 32:] = 200
    metrics, ok = BlurFilter()(step)
    assert ok and metrics["sharpness"] == pytest.approx(0.5, abs=0.01)  # ideal step edge
    metrics, ok = BlurFilter()(blurred(step, sigma=2.0))
    assert not ok and metrics["sharpness"] == pytest.approx(0.4 / 2.0, abs=0.03)
    assert BlurFilter()(GOOD)[1] and not BlurFilter()(blurred(GOOD))[1]
    flat = np.full((2, 64, 64, 3), 90, np.uint8)
    assert BlurFilter()(flat) == ({}, True)  # nothing to judge


def test_cpbd_on_rendered_shapes_and_blur():
    metrics, ok = SharpnessFilter()(GOOD)
    assert ok and metrics["cpbd"] > 0.5
    metrics, ok = SharpnessFilter()(blurred(GOOD, sigma=1.5))
    assert not ok and metrics["cpbd"] < 0.1
    flat = np.full((2, 64, 64, 3), 90, np.uint8)
    assert SharpnessFilter()(flat) == ({}, True)


def test_edge_text_fraction():
    metrics, ok = EdgeTextFilter()(GOOD)
    assert ok and metrics["text_fraction"] < 0.1
    metrics, ok = EdgeTextFilter()(with_text(GOOD))
    assert not ok and metrics["text_fraction"] > 0.5


def test_detected_text_area():
    pytest.importorskip("onnxruntime")
    metrics, ok = TextFilter()(GOOD)
    assert ok and metrics["text_area"] == 0.0
    metrics, ok = TextFilter()(with_text(GOOD))
    assert not ok and metrics["text_area"] > 0.2


def test_technical_quality():
    assert TechnicalFilter()(GOOD)[1]
    washed = (GOOD // 16 + 120).astype(np.uint8)
    metrics, ok = TechnicalFilter()(washed)
    assert not ok and metrics["contrast"] < 12
    assert not TechnicalFilter()(GOOD[:, :16, :16])[1]  # too small


@dataclass
class Watermark:
    """A stand-in for a learned filter: counts its calls, rejects every scene."""

    reason: str = "watermark"
    cost: float = 10.0
    calls: list = field(default_factory=list)

    def __call__(self, frames):
        self.calls.append(len(frames))
        return {"watermark_prob": 0.9}, False


def test_cheapest_first_and_early_exit():
    learned = Watermark()
    still = np.repeat(GOOD[:1], 12, axis=0)
    verdict = apply_filters(still, [learned, *default_filters()])
    assert verdict.reason == "static" and verdict.metrics == {"motion": 0.0}
    assert learned.calls == []  # never reached
    verdict = apply_filters(GOOD, [learned, *default_filters()])
    assert verdict.reason == "watermark" and learned.calls == [12]
    assert set(verdict.metrics) == {"motion", "cpbd", "text_area", "contrast",
                                    "min_side", "watermark_prob"}
    assert apply_filters(GOOD, default_filters()).reason is None


def test_load_filter_plugins():
    assert isinstance(load_filter("cineforge.data.curate.filters:MotionFilter"), MotionFilter)
    plugin = load_filter(f"{__name__}:Watermark")
    assert plugin.reason == "watermark"
    with pytest.raises(CineforgeError, match="module:FilterName"):
        load_filter("no_colon")
    with pytest.raises(CineforgeError, match="cannot load"):
        load_filter("cineforge.data.curate.filters:Nope")
    with pytest.raises(CineforgeError, match="not a filter"):
        load_filter("cineforge.data.curate.filters:luma")
