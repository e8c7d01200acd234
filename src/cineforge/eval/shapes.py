"""Shapes-world analyzer: colour, shape and motion of a clip's main object, from pixels only.

Does a generated clip follow its prompt? ``analyze_clip`` finds the main object (the colour
covering the most foreground over the clip, as in ``cineforge.data.shapes``) and measures it:

1. Background: per frame, a linear model ``a + b x + c y`` per channel fitted to the border
   pixels (two passes, dropping outliers where an object touches the border); this matches
   plain and gradient backgrounds. Frames are box-filtered 3x3 first against noise.
2. Foreground: pixels farther than ``max(20, 6 sigma)`` from the background (sigma: the noise
   of the border residuals). Each is explained as ``bg + alpha (palette colour - bg)``: the
   palette colour with the smallest residual labels it, so an anti-aliased edge pixel keeps
   its object's colour instead of looking like a blend.
3. Main object: the label with most solid (alpha >= 0.5) pixels over the clip; per frame the
   largest connected region of pixels of that label (or close to its colour line).
4. Colour: the palette colour nearest (CIELAB) to the median interior pixel over the clip.
5. Shape: each candidate is drawn (anti-aliased, box-filtered like the input) with the
   object's area and centroid; the one with the least L1 misfit, summed over up to 9 frames
   weighted by area, wins (frames cut by the border count little). Whole-shape templates
   stay reliable at 10 px where bounding-box fill ratios do not.
6. Motion: a horizontal reversal of at least 12 % of the width is a bounce; else a centroid
   displacement (least-squares line over the frames) of at least 12.5 % of the shorter side is
   one of 8 directions (45 degree sectors); else an area change by 1.8x is grow/shrink; else
   still. A single image is 'still'.
"""

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cineforge.data.shapes import COLOURS, FILL, SHAPES, parse_caption, shape_coverage
from cineforge.errors import CineforgeError

__all__ = ["Analysis", "analyze_clip", "prompt_agreement"]

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], np.float32)
_SECTORS = ("right", "up_right", "up", "up_left", "left", "down_left", "down", "down_right")


@dataclass(frozen=True)
class Analysis:
    """What the analyzer saw. Names are 'none' when no object was found; confidences are
    margins in [0, 1] (0: on a decision boundary). Displacement is in pixels (y down)."""

    found: bool
    colour: str
    shape: str
    motion: str
    colour_confidence: float = 0.0
    shape_confidence: float = 0.0
    motion_confidence: float = 0.0
    frames_found: int = 0
    displacement: tuple[float, float] = (0.0, 0.0)
    area_ratio: float = 1.0
    bounce_amplitude: float = 0.0


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box filter over H, W of ``T, H, W, C`` (edges replicated)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _background(x: np.ndarray, border: int = 2) -> tuple[np.ndarray, float]:
    """Per-frame linear background fitted on the border, and the border noise sigma."""
    _, h, w, _ = x.shape
    ring = np.ones((h, w), bool)
    ring[border:-border, border:-border] = False
    yy, xx = np.nonzero(ring)
    design = np.stack([np.ones_like(xx), xx / w - 0.5, yy / h - 0.5], 1)  # N, 3
    values = x[:, ring].astype(np.float64)  # T, N, 3
    keep = np.ones(values.shape[:2])
    for _ in range(2):  # weighted least squares per frame, then drop the outliers
        weighted = keep[:, :, None] * design  # T, N, 3
        gram = weighted.transpose(0, 2, 1) @ design
        coef = np.linalg.solve(gram + 1e-9 * np.eye(3), weighted.transpose(0, 2, 1) @ values)
        res = values - design @ coef  # T, N, C
        dist = np.linalg.norm(res, axis=-1)
        keep = (dist <= np.maximum(12.0, 3.0 * np.median(dist, 1, keepdims=True))).astype(float)
    gx = (np.arange(w) / w - 0.5)[None, None, :, None]
    gy = (np.arange(h) / h - 0.5)[None, :, None, None]
    c = coef[:, :, None, None, :].astype(np.float32)  # T, 3, 1, 1, C
    bg = c[:, 0] + gx * c[:, 1] + gy * c[:, 2]
    sigma = 1.4826 * float(np.median(np.abs(res[keep > 0])))
    return bg, sigma


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected regions within each frame of ``T, H, W``: a region id per pixel, -1 off."""
    n = mask.size
    lab = np.where(mask, np.arange(n).reshape(mask.shape), n)
    while True:
        new = lab.copy()
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], lab[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], lab[:, :, 1:], out=new[:, :, :-1])
        new[~mask] = n
        flat = new.ravel()
        on = flat < n
        flat[on] = flat[flat[on]]  # jump to the label's own label
        if np.array_equal(new, lab):
            return np.where(mask, lab, -1)
        lab = new


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..255 -> CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


def _object_masks(x: np.ndarray):
    """Main-object mask and its normalised coverage alpha (T, H, W), and the smoothed frames."""
    smooth = _box3(x)
    bg, sigma = _background(smooth)
    diff = smooth - bg
    fg = np.linalg.norm(diff, axis=-1) > max(20.0, 6.0 * sigma)
    d = diff[fg]  # N, 3: unmix only the foreground
    vec = _PALETTE[:, None, :] - bg[fg][None]  # K, N, 3
    alpha = np.clip(np.einsum("nc,knc->kn", d, vec) / np.maximum((vec * vec).sum(-1), 1.0),
                    0.0, 1.2)
    res = np.linalg.norm(d[None] - alpha[..., None] * vec, axis=-1)  # K, N
    label = res.argmin(0)
    solid = alpha[label, np.arange(len(label))] >= 0.5
    counts = np.bincount(label[solid], minlength=len(_NAMES))
    k = int(counts.argmax())
    if counts[k] == 0:
        return None
    member = np.zeros_like(fg)
    member[fg] = (label == k) | (res[k] < 0.25 * np.linalg.norm(vec[k], axis=-1))
    regions = _components(member)
    t, h, w = fg.shape
    min_area = max(6.0, 12.0 * h * w / 4096)
    mask = np.zeros_like(fg)
    for i in range(t):
        ids, sizes = np.unique(regions[i][regions[i] >= 0], return_counts=True)
        if len(ids) and sizes.max() >= min_area:
            mask[i] = regions[i] == ids[sizes.argmax()]
    a = np.zeros(fg.shape, np.float32)
    a[fg] = alpha[k]
    a[~mask] = 0.0
    for i in range(t):  # a shade lighter or darker than the palette still counts as covered
        if mask[i].any():
            a[i] = np.clip(a[i] / max(np.percentile(a[i][mask[i]], 90), 0.3), 0.0, 1.0)
    return mask, a, smooth


def _colour(mask: np.ndarray, a: np.ndarray, smooth: np.ndarray) -> tuple[str, float]:
    inner = mask.copy()
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    inner &= a >= 0.8
    pixels = smooth[inner] if inner.sum() >= 4 else smooth[mask]
    d = np.linalg.norm(_lab(_PALETTE) - _lab(np.median(pixels, axis=0)), axis=-1)
    first, second = np.sort(d)[:2]
    return _NAMES[int(d.argmin())], float(1.0 - first / max(second, 1e-6))


def _template_errors(a: np.ndarray) -> np.ndarray:
    """L1 misfit per shape of one frame's coverage ``a`` (H, W), relative to its area: each
    shape is drawn with the same area and centroid, and box-filtered like the input."""
    ys, xs = np.nonzero(a)
    y0, x0 = max(ys.min() - 3, 0), max(xs.min() - 3, 0)
    a = a[y0:ys.max() + 4, x0:xs.max() + 4]  # a window around the object
    h, w = a.shape
    area = float(a.sum())
    cx = (a.sum(0) * (np.arange(w) + 0.5)).sum() / area
    cy = (a.sum(1) * (np.arange(h) + 0.5)).sum() / area
    errors = np.empty(len(SHAPES))
    for i, shape in enumerate(SHAPES):
        size = math.sqrt(area / FILL[shape])
        lift = size / 6 if shape == "triangle" else 0.0  # its centroid is below the bbox centre
        rows, cols, patch = shape_coverage(shape, cx, cy - lift, size, h, w)
        template = np.zeros((h + 2, w + 2), np.float32)  # zero border: the 3x3 box below
        template[1:-1, 1:-1][rows, cols] = patch
        r = template[:-2] + template[1:-1] + template[2:]
        errors[i] = np.abs((r[:, :-2] + r[:, 1:-1] + r[:, 2:]) / 9.0 - a).sum() / area
    return errors


def _shape(mask: np.ndarray, a: np.ndarray) -> tuple[str, float]:
    """The shape whose templates fit best over the frames (area-weighted); cut-off frames
    count little."""
    total, weight_sum = np.zeros(len(SHAPES)), 0.0
    step = max(1, len(mask) // 9)  # at most ~9 frames
    for m, al in zip(mask[::step], a[::step], strict=True):
        area = float(al.sum())
        if area < 6:
            continue
        touches = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
        weight = area * (0.01 if touches else 1.0)
        total += weight * _template_errors(al)
        weight_sum += weight
    if weight_sum == 0:
        return "none", 0.0
    first, second = np.sort(total)[:2]
    return SHAPES[int(total.argmin())], float(1.0 - first / max(second, 1e-9))


def _fit_change(t: np.ndarray, v: np.ndarray, span: float) -> float:
    """Change of v over ``span`` frames along the least-squares line through (t, v)."""
    if len(t) < 2:
        return 0.0
    return float(np.polyfit(t, v, 1)[0] * span)


def _motion(mask: np.ndarray, a: np.ndarray) -> tuple[str, float, tuple, float, float]:
    t_all, h, w = mask.shape
    frames = np.nonzero(mask.any(axis=(1, 2)) & (a.sum(axis=(1, 2)) > 0))[0]  # no 0/0 centroid
    if t_all == 1 or len(frames) < 2:
        return "still", 1.0 if t_all == 1 else 0.0, (0.0, 0.0), 1.0, 0.0
    yy, xx = np.mgrid[0:h, 0:w]
    area = a[frames].sum(axis=(1, 2))
    cx = (a[frames] * xx).sum(axis=(1, 2)) / area
    cy = (a[frames] * yy).sum(axis=(1, 2)) / area
    sx = cx if len(cx) < 3 else np.concatenate([cx[:1], np.median(
        np.stack([cx[:-2], cx[1:-1], cx[2:]]), 0), cx[-1:]])
    amp = max(min(sx.max() - sx[0], sx.max() - sx[-1]), min(sx[0] - sx.min(), sx[-1] - sx.min()))
    bounce_thr, move_thr, size_thr = 0.12 * w, 0.125 * min(h, w), math.log(1.8)
    span = t_all - 1
    dx, dy = _fit_change(frames, cx, span), _fit_change(frames, cy, span)
    log_ratio = _fit_change(frames, np.log(np.maximum(area, 1e-3)), span)
    dist = math.hypot(dx, dy)
    if amp >= bounce_thr:
        motion, conf = "bounce", min(1.0, amp / bounce_thr - 1.0)
    elif dist >= move_thr:
        angle = math.degrees(math.atan2(-dy, dx)) % 360
        sector = int(((angle + 22.5) % 360) // 45)
        off = abs(((angle - 45 * sector + 180) % 360) - 180)
        motion, conf = _SECTORS[sector], min(dist / move_thr - 1.0, 1.0 - off / 22.5)
    elif abs(log_ratio) >= size_thr:
        motion = "grow" if log_ratio > 0 else "shrink"
        conf = min(1.0, abs(log_ratio) / size_thr - 1.0, 1.0 - dist / move_thr)
    else:
        motion = "still"
        conf = min(1.0 - dist / move_thr, 1.0 - abs(log_ratio) / size_thr, 1.0 - amp / bounce_thr)
    return motion, max(0.0, float(conf)), (dx, dy), float(math.exp(log_ratio)), float(amp)


def analyze_clip(frames: np.ndarray) -> Analysis:
    """Analyse uint8 frames ``T, H, W, 3`` (or one image ``H, W, 3``). From a model's
    ``3, T, H, W`` tensor in [-1, 1]: ``((x + 1) * 127.5).round().byte().permute(1, 2, 3, 0)``."""
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 8:
        raise CineforgeError(f"expected uint8 frames T,H,W,3 of at least 8x8, got {x.dtype} "
                             f"{x.shape}; convert [-1, 1] videos with (x + 1) * 127.5")
    found = _object_masks(x.astype(np.float32))
    if found is None or not found[0].any():
        return Analysis(False, "none", "none", "none")
    mask, a, smooth = found
    colour, colour_conf = _colour(mask, a, smooth)
    shape, shape_conf = _shape(mask, a)
    motion, motion_conf, disp, ratio, amp = _motion(mask, a)
    return Analysis(True, colour, shape, motion, colour_conf, shape_conf, motion_conf,
                    int(mask.any(axis=(1, 2)).sum()), disp, ratio, amp)


def prompt_agreement(frames: np.ndarray, caption: str) -> dict[str, bool | None]:
    """Per attribute of the prompt's main object: does the clip show it? None where the
    prompt does not name it."""
    want = parse_caption(caption)
    got = analyze_clip(frames)
    return {key: None if want[key] is None else getattr(got, key) == want[key]
            for key in ("colour", "shape", "motion")}


ATTRIBUTES = ("colour", "shape", "motion")


@dataclass(frozen=True)
class ShapesScore:
    """Share of clips whose main object shows the prompt's colour, shape and motion (and,
    for image-to-video, the mean PSNR in dB of frame 0 against the given first frame).
    ``mistakes[attribute]`` counts each wrong reading as ``(asked, read)``: which shapes a
    model draws as which ('none' where no object was found)."""

    n: int
    colour: float
    shape: float
    motion: float
    all_three: float
    frame0_psnr: float | None = None
    mistakes: dict[str, Counter] = field(default_factory=dict, compare=False)


def score_clips(clips, specs) -> ShapesScore:
    """Compare ``analyze_clip`` of each clip (uint8 ``T,H,W,3``) with its spec's main object."""
    mistakes: dict[str, Counter] = {k: Counter() for k in ATTRIBUTES}
    n = all_three = 0
    for frames, spec in zip(clips, specs, strict=True):
        got = analyze_clip(frames)
        wrong = [(k, getattr(spec.main, k), getattr(got, k)) for k in ATTRIBUTES
                 if getattr(spec.main, k) != getattr(got, k)]
        for k, asked, read in wrong:
            mistakes[k][asked, read] += 1
        all_three += not wrong
        n += 1
    if n == 0:
        raise CineforgeError("no clips to score; ask for at least one prompt (-n 1)")
    shares = ((n - mistakes[k].total()) / n for k in ATTRIBUTES)
    return ShapesScore(n, *shares, all_three / n, mistakes=mistakes)
