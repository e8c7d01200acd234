"""Text area from a real text detector: PP-OCRv4's detection network (DB, differentiable
binarisation), run with onnxruntime on the CPU.

The network maps a ``1, 3, H, W`` image (BGR, ``x / 255 * 2 - 1``, sides multiples of 32) to a
``1, 1, H, W`` text probability map. Boxes follow DB's post-processing: pixels above
``thresh`` 0.3 (dilated by 2x2) form regions; a region's minimum-area rectangle is kept when
its mean probability reaches ``box_thresh`` 0.5 and it is grown by ``area * 1.6 / perimeter``
on every side ("unclip", the shrink the network was trained to undo). The measure is the share
of the frame those rectangles cover.

The weights are the ``ch_PP-OCRv4_det_infer.onnx`` file shipped in the ``rapidocr-onnxruntime``
wheel (4.7 MB, Apache-2.0). Only the file is used: install the wheel with
``pip install --no-deps rapidocr-onnxruntime`` (its own dependencies include the GUI OpenCV wheel,
which clashes with the headless one) and ``onnxruntime``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from cineforge.errors import CineforgeError

MODEL_PACKAGE = "rapidocr_onnxruntime"
MODEL_FILE = "models/ch_PP-OCRv4_det_infer.onnx"


def model_path() -> Path:
    """The detection model inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if path is None or not path.is_file():
        raise CineforgeError(
            "the text filter needs the PP-OCR detection model; install it with "
            "`pip install --no-deps rapidocr-onnxruntime onnxruntime`"
        )
    return path


class TextDetector:
    """``detector(frame) -> (boxes, fraction)`` for a uint8 RGB frame ``H, W, 3``: rotated
    boxes (``cv2.boxPoints`` corners in frame pixels) and the share of the frame they cover.
    ``max_side``: the frame is scaled so its long side is at most this before detection."""

    def __init__(self, max_side: int = 640, thresh: float = 0.3, box_thresh: float = 0.5,
                 unclip_ratio: float = 1.6, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise CineforgeError("the text filter needs onnxruntime; pip install onnxruntime"
                                 ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path()), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.max_side, self.thresh = max_side, thresh
        self.box_thresh, self.unclip_ratio = box_thresh, unclip_ratio

    def probability(self, frame: np.ndarray) -> np.ndarray:
        """The network's text probability map, float32 at the frame's size."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        rh, rw = (max(32, round(s * scale / 32) * 32) for s in (h, w))
        x = cv2.resize(frame[..., ::-1], (rw, rh), interpolation=cv2.INTER_AREA)
        x = (x.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
        prob = self.session.run(None, {self.input: x})[0][0, 0]
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    def __call__(self, frame: np.ndarray) -> tuple[list[np.ndarray], float]:
        prob = self.probability(frame)
        binary = cv2.dilate((prob > self.thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        covered = np.zeros(prob.shape, np.uint8)
        boxes = []
        for contour in contours:
            (cx, cy), (bw, bh), angle = cv2.minAreaRect(contour)
            if min(bw, bh) < 3:
                continue
            region = np.zeros(prob.shape, np.uint8)
            cv2.drawContours(region, [contour], -1, 1, -1)
            if prob[region > 0].mean() < self.box_thresh:
                continue
            grow = bw * bh * self.unclip_ratio / (2 * (bw + bh))  # area * r / perimeter
            box = cv2.boxPoints(((cx, cy), (bw + 2 * grow, bh + 2 * grow), angle))
            boxes.append(box)
            cv2.fillPoly(covered, [np.round(box).astype(np.int32)], 1)
        return boxes, float(covered.mean())
