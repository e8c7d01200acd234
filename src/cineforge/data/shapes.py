"""Shapes world: procedurally rendered clips of coloured shapes with exact captions.

The demo text-to-video model trains on this data on a CPU, and ``cineforge.eval.shapes``
checks from pixels alone whether a generated clip follows its prompt. A clip shows one or two
objects (circle, square, triangle with its apex up, diamond) in one of seven colours, moving
left/right/up/down, along a diagonal, bouncing horizontally off the side walls, growing,
shrinking or standing still, over a plain or gradient background of a named colour. Edges are
anti-aliased (4x4 supersampling, then a box filter).

The MAIN object is ``spec.objects[0]``: it is mentioned first in the caption, drawn in front,
and has at least twice the mean area of the other object, so the caption, the rendering and
the analyzer agree on which object a prompt is about.

Held-out combinations (never in the 'train' split, on any object; the 'heldout' split draws its
main object only from them): the (colour, shape) pairs purple triangle, orange circle and cyan
square (3 of 28) and the (shape, motion) pairs circle bouncing, square growing, triangle moving
down-left and diamond moving up (4 of 48); 61 of the 336 (colour, shape, motion) triples.

Captions come from fixed templates (wording 'template', the default) or from the caption grammar
of ``cineforge.data.shapes_grammar`` (wording 'varied': synonyms and paraphrases; wording
'heldout', for prompts only: wordings never used in training).

Item ``i`` of a ``ShapesWorld`` depends on (seed, split, i) alone, so a trainer resumes at any
data position. Sizes are in pixels at 64 px and scale with ``min(height, width) / 64``, and
with ``object_scale`` (default 1; at most 1.25, where the longest paths still fit the frame).
"""

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cineforge.data import shapes_grammar
from cineforge.errors import CineforgeError

__all__ = [
    "BACKGROUNDS", "COLOURS", "FILL", "HELDOUT_COLOUR_SHAPE", "HELDOUT_SHAPE_MOTION", "LAYOUTS",
    "MOTIONS", "SHAPES", "TINY_SHAPES_WORLD", "WORDINGS", "Background", "ClipSpec", "ObjectSpec",
    "ShapesWorld", "ShapesWorldConfig", "check_object_scale", "check_subset", "check_wording",
    "combinations", "heldin_prompts",
    "heldout_prompts",
    "is_heldout", "object_track", "parse_caption", "render", "sample_spec", "shape_coverage",
    "to_video_tensor",
]

COLOURS = {  # hues 0, 32, 54, 129, 183, 227, 274 degrees
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
    "green": (40, 190, 60), "cyan": (40, 210, 220), "blue": (50, 90, 240),
    "purple": (150, 60, 220),
}
BACKGROUNDS = {
    "black": (12, 12, 14), "white": (240, 240, 236), "gray": (118, 118, 118),
    "dark blue": (22, 30, 72), "beige": (222, 206, 170),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DIRECTIONS = {  # unit steps in image axes (y grows downwards)
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "up_left": (-1, -1), "up_right": (1, -1), "down_left": (-1, 1), "down_right": (1, 1),
}
MOTIONS = (*DIRECTIONS, "bounce", "grow", "shrink", "still")
HELDOUT_COLOUR_SHAPE = frozenset({("purple", "triangle"), ("orange", "circle"), ("cyan", "square")})
HELDOUT_SHAPE_MOTION = frozenset({
    ("circle", "bounce"), ("square", "grow"), ("triangle", "down_left"), ("diamond", "up"),
})
LAYOUTS = ("free", "centred")
WORDINGS = ("template", "varied", "heldout")  # 'heldout': evaluation prompts only
OBJECT_SCALES = (0.5, 1.25)  # object_scale range: above 1.25 the longest paths leave the frame
_SECONDARY_MOTIONS = (*DIRECTIONS, "bounce", "still")  # no size change: main stays bigger
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}  # area / size^2


@dataclass(frozen=True)
class ObjectSpec:
    """One object. Position (x, y) is the centre of its bounding box in pixels at frame 0,
    ``size`` its bounding-box side; velocities are pixels per frame."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    motion: str
    x: float
    y: float
    size_start: float
    size_end: float
    vx: float = 0.0
    vy: float = 0.0
    size_word: str = ""  # "", "small", "large" or "big", as the caption says


@dataclass(frozen=True)
class Background:
    name: str
    rgb_start: tuple[int, int, int]
    rgb_end: tuple[int, int, int]
    gradient: str = "none"  # "none", "vertical" (top to bottom) or "horizontal"


@dataclass(frozen=True)
class ClipSpec:
    """Everything about a clip; ``render(spec)`` draws it. ``frames == 1`` is an image."""

    height: int
    width: int
    frames: int
    objects: tuple[ObjectSpec, ...]
    background: Background
    caption: str

    @property
    def main(self) -> ObjectSpec:
        return self.objects[0]


def is_heldout(colour: str, shape: str, motion: str) -> bool:
    return (colour, shape) in HELDOUT_COLOUR_SHAPE or (shape, motion) in HELDOUT_SHAPE_MOTION


def combinations(split: str, *, image: bool = False) -> list[tuple[str, str, str]]:
    """All (colour, shape, motion) triples of a split, in a fixed order (images: motion still)."""
    _check_split(split)
    motions = ("still",) if image else MOTIONS
    want = split == "heldout"
    triples = [(c, s, m) for c in COLOURS for s in SHAPES for m in motions]
    return [t for t in triples if is_heldout(*t) == want]


def check_subset(what: str, chosen: tuple[str, ...] | None, universe) -> None:
    """Refuse a curriculum knob (``backgrounds``, ``motions``) that is empty or names values
    outside ``universe``; ``None`` (unset) means all."""
    if chosen is not None and (not chosen or any(c not in universe for c in chosen)):
        raise CineforgeError(f"{what} must name some of {tuple(universe)}, got "
                             f"{tuple(chosen)}; leave it unset for all")


def check_object_scale(what: str, scale: float) -> None:
    lo, hi = OBJECT_SCALES
    if not lo <= scale <= hi:
        raise CineforgeError(f"{what} must be in [{lo}, {hi}], got {scale}: above {hi} the "
                             "longest motion paths no longer fit the frame")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise CineforgeError(f"unknown shapes-world layout {layout!r}; use one of {LAYOUTS}")


def check_wording(what: str, wording: str, training: bool = False) -> None:
    """Refuse an unknown caption wording; a training world never takes 'heldout'."""
    allowed = WORDINGS[:2] if training else WORDINGS
    if wording not in allowed:
        hint = (" (held-out wordings are for evaluation prompts only)"
                if wording == "heldout" else "")
        raise CineforgeError(f"{what} must be one of {allowed}, got {wording!r}{hint}")


def _check_split(split: str) -> None:
    if split not in ("train", "heldout"):
        raise CineforgeError(f"unknown shapes-world split {split!r}; use 'train' or 'heldout'")


# ----------------------------------------------------------------------------- geometry


def object_track(obj: ObjectSpec, frames: int, width: int) -> tuple[np.ndarray, ...]:
    """Centre x, centre y and size per frame (float64 arrays of length ``frames``). A bouncing
    object reflects off the side walls: its path folds into the range where it fits."""
    t = np.arange(frames, dtype=np.float64)
    frac = t / max(frames - 1, 1)
    size = obj.size_start + (obj.size_end - obj.size_start) * frac
    x, y = obj.x + obj.vx * t, obj.y + obj.vy * t
    if obj.motion == "bounce":
        lo, hi = obj.size_start / 2 + 1, width - obj.size_start / 2 - 1
        p = np.mod(x - lo, 2 * (hi - lo))
        x = lo + np.where(p > hi - lo, 2 * (hi - lo) - p, p)
    return x, y, size


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Whether offsets (dx, dy) from the bbox centre fall inside a shape of half-side r."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise CineforgeError(f"unknown shape {shape!r}; use one of {SHAPES}")


def shape_coverage(shape, cx, cy, size, height, width, ss=4):
    """Anti-aliased coverage of a shape whose bbox is centred at (cx, cy) (pixel units, pixel
    (0, 0) spans [0, 1]^2): (row slice, column slice, alpha patch in [0, 1])."""
    r = size / 2
    x0, x1 = max(int(math.floor(cx - r)), 0), min(int(math.ceil(cx + r)), width)
    y0, y1 = max(int(math.floor(cy - r)), 0), min(int(math.ceil(cy + r)), height)
    if x1 <= x0 or y1 <= y0:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0))
    xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss - cx
    ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss - cy
    hit = _inside(shape, xs[None, :], ys[:, None], r)
    alpha = hit.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    return slice(y0, y1), slice(x0, x1), alpha


def _background_image(bg: Background, height: int, width: int) -> np.ndarray:
    a, b = np.asarray(bg.rgb_start, np.float32), np.asarray(bg.rgb_end, np.float32)
    if bg.gradient == "vertical":
        w = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    elif bg.gradient == "horizontal":
        w = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    else:
        w = np.zeros((1, 1, 1), np.float32)
    return np.broadcast_to(a + (b - a) * w, (height, width, 3)).copy()


def render(spec: ClipSpec) -> np.ndarray:
    """uint8 frames ``T, H, W, 3``; objects drawn back to front (the main object last)."""
    bg = _background_image(spec.background, spec.height, spec.width)
    out = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    tracks = [object_track(o, spec.frames, spec.width) for o in spec.objects]
    h, w = spec.height, spec.width
    for t in range(spec.frames):
        img = bg.copy()
        for obj, (xs, ys, sizes) in reversed(list(zip(spec.objects, tracks, strict=True))):
            rows, cols, a = shape_coverage(obj.shape, xs[t], ys[t], sizes[t], h, w)
            a = a[..., None].astype(np.float32)
            img[rows, cols] += a * (np.asarray(obj.rgb, np.float32) - img[rows, cols])
        out[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def to_video_tensor(frames: np.ndarray):
    """uint8 ``T, H, W, 3`` -> float32 torch tensor ``3, T, H, W`` in [-1, 1]."""
    import torch  # kept out of module import: the analyzer and spec sampling need no torch

    x = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
    return torch.from_numpy(x / np.float32(127.5) - np.float32(1.0))


# ----------------------------------------------------------------------------- sampling


def _rgb_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _gradient_end(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The other end of a gradient: 30 % towards black for light colours, white for dark."""
    light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 128
    target = 0 if light else 255
    return tuple(int(round(c + 0.3 * (target - c))) for c in rgb)


def _contrasts(colour: str, bg_name: str, min_distance: float = 90.0) -> bool:
    rgb, base = COLOURS[colour], BACKGROUNDS[bg_name]
    return min(_rgb_distance(rgb, base), _rgb_distance(rgb, _gradient_end(base))) >= min_distance


def _sample_background(rng: np.random.Generator, colours: list[str],
                       allowed: tuple[str, ...] | None = None) -> Background:
    names = [n for n in (allowed or BACKGROUNDS) if all(_contrasts(c, n) for c in colours)]
    name = names[rng.integers(len(names))]
    gradient = ("none", "vertical", "horizontal")[rng.choice(3, p=(0.5, 0.25, 0.25))]
    a, b = BACKGROUNDS[name], _gradient_end(BACKGROUNDS[name])
    if gradient == "none":
        return Background(name, a, a)
    return Background(name, *((a, b) if rng.random() < 0.5 else (b, a)), gradient=gradient)


def _place(rng, motion, size_start, size_end, frames, height, width, layout="free"):
    """Start centre and velocity so that the whole path stays inside the frame (1 px margin).
    'free': anywhere the path fits; 'centred': the path's midpoint within 8 % of the side from
    the frame centre, straight paths 40-50 % of the side long (diagonals 30-40 % per axis)."""
    r = max(size_start, size_end) / 2 + 1
    steps = max(frames - 1, 1)
    jitter = 0.08 * min(height, width)
    if motion == "bounce":  # one reflection, each leg 40-60 % of the travel
        span = width - 2 * r
        travel, first = rng.uniform(1.0, 1.3) * span, rng.uniform(0.4, 0.6)
        heading = 1 if rng.random() < 0.5 else -1
        x = width - r - first * travel if heading > 0 else r + first * travel
        y = (height / 2 + rng.uniform(-jitter, jitter) if layout == "centred"
             else rng.uniform(r, height - r))
        return x, y, heading * travel / steps, 0.0
    ux, uy = DIRECTIONS.get(motion, (0, 0))
    if layout == "centred":
        if ux and uy:  # 45 degrees
            dist_x = dist_y = rng.uniform(0.3, 0.4) * min(height, width)
        else:
            dist = rng.uniform(0.4, 0.5)
            dist_x, dist_y = dist * width * abs(ux), dist * height * abs(uy)

        def start(side: int, unit: int, length: float) -> float:  # clamped so the path fits
            mid = side / 2 + rng.uniform(-jitter, jitter)
            return float(np.clip(mid - unit * length / 2, r + length * (unit < 0),
                                 side - r - length * (unit > 0)))

        x, y = start(width, ux, dist_x), start(height, uy, dist_y)
        return x, y, ux * dist_x / steps, uy * dist_y / steps
    if ux and uy:
        dist_x = dist_y = rng.uniform(0.3, 0.45) * min(height, width)
    else:
        dist_x, dist_y = rng.uniform(0.3, 0.5) * width, rng.uniform(0.3, 0.5) * height
    dist_x, dist_y = dist_x * abs(ux), dist_y * abs(uy)
    x = rng.uniform(r, width - r - dist_x) + (dist_x if ux < 0 else 0)
    y = rng.uniform(r, height - r - dist_y) + (dist_y if uy < 0 else 0)
    return x, y, ux * dist_x / steps, uy * dist_y / steps


def _sizes(rng, motion: str, scale: float, low: float, high: float) -> tuple[float, float]:
    if motion == "grow":
        return rng.uniform(11, 14) * scale, rng.uniform(21, 24) * scale
    if motion == "shrink":
        return rng.uniform(21, 24) * scale, rng.uniform(11, 14) * scale
    s = rng.uniform(low, high) * scale
    return s, s


def _no_overlap(a: ObjectSpec, b: ObjectSpec, frames: int, width: int) -> bool:
    (ax, ay, asz), (bx, by, bsz) = object_track(a, frames, width), object_track(b, frames, width)
    ends = [0, frames - 1]
    gap = np.hypot(ax[ends] - bx[ends], ay[ends] - by[ends]) - (asz[ends] + bsz[ends]) / 2
    return bool(np.all(gap > 1))


def _second_object(rng, main: ObjectSpec, frames: int, height: int, width: int,
                   scale: float) -> ObjectSpec:
    """A smaller object of another colour with at most half the main object's mean area,
    translating or still, never a held-out combination; placed apart from the main object
    at the first and last frame when 20 tries allow. ``scale``: sizes in pixels per 64-px
    unit."""
    s0, s1 = main.size_start, main.size_end
    mean_area = FILL[main.shape] * (s0 * s0 + s0 * s1 + s1 * s1) / 3
    limit = {s: math.sqrt(0.5 * mean_area / FILL[s]) for s in SHAPES}
    motions = ("still",) if frames == 1 else _SECONDARY_MOTIONS
    options = [(c, s, m) for c in COLOURS for s in SHAPES for m in motions
               if c != main.colour and not is_heldout(c, s, m) and limit[s] >= 9 * scale]
    colour, shape, motion = options[rng.integers(len(options))]
    size = rng.uniform(9 * scale, min(limit[shape], 14 * scale))
    word = "small" if rng.random() < 0.6 else ""
    for _ in range(20):
        x, y, vx, vy = _place(rng, motion, size, size, frames, height, width)
        second = ObjectSpec(shape, colour, COLOURS[colour], motion, x, y, size, size, vx, vy, word)
        if _no_overlap(main, second, frames, width):
            break
    return second


def sample_spec(
    rng: np.random.Generator, *, height: int = 64, width: int = 64, frames: int = 17,
    n_objects: int = 1, split: str = "train", combo: tuple[str, str, str] | None = None,
    layout: str = "free", backgrounds: tuple[str, ...] | None = None,
    motions: tuple[str, ...] | None = None, object_scale: float = 1.0,
    wording: str = "template",
) -> ClipSpec:
    """Draw one clip. The main object's (colour, shape, motion) is uniform over the split's
    triples unless ``combo`` fixes it; a second object (smaller, other colour, translating or
    still, never a held-out combination) is added when ``n_objects == 2``. ``layout`` places
    the main object: 'free' (anywhere its path fits) or 'centred' (its path through the middle
    of the frame, so the caption fixes most of the clip; the second object stays free).
    ``backgrounds`` limits the background colours to those names, ``motions`` a clip's main
    object to those motions (default: all; images stay still): curriculum knobs.
    ``object_scale`` multiplies every object size (and the sizes the size words name).
    ``wording`` picks the caption's phrasing (``WORDINGS``); the caption is drawn last, so the
    clip itself is the same under every wording."""
    _check_split(split)
    _check_layout(layout)
    check_subset("backgrounds", backgrounds, BACKGROUNDS)
    check_subset("motions", motions, MOTIONS)
    check_object_scale("object_scale", object_scale)
    check_wording("wording", wording)
    if n_objects not in (1, 2):
        raise CineforgeError(f"n_objects must be 1 or 2, got {n_objects!r}")
    image, scale = frames == 1, min(height, width) / 64 * object_scale
    if combo is None:
        triples = combinations(split, image=image)
        if motions is not None and not image:
            triples = [t for t in triples if t[2] in motions]
        combo = triples[rng.integers(len(triples))]
    colour, shape, motion = combo
    if image and motion != "still":
        raise CineforgeError(f"an image (frames == 1) cannot show motion {motion!r}; use 'still'")
    low = 18.0 if n_objects == 2 else 12.0
    s0, s1 = _sizes(rng, motion, scale, low, 24.0)
    x, y, vx, vy = _place(rng, motion, s0, s1, frames, height, width, layout)
    word = ""
    if motion not in ("grow", "shrink") and rng.random() < 0.6:
        if n_objects == 2 or s0 >= 20 * scale:
            word = ("large", "big")[rng.integers(2)]
        elif s0 <= 15 * scale:
            word = "small"
    objects = [ObjectSpec(shape, colour, COLOURS[colour], motion, x, y, s0, s1, vx, vy, word)]
    if n_objects == 2:
        objects.append(_second_object(rng, objects[0], frames, height, width, scale))
    background = _sample_background(rng, [o.colour for o in objects], backgrounds)
    if wording == "template":
        caption = _caption(rng, objects, background, image)
    else:
        caption = shapes_grammar.phrase(rng, objects, background, image, wording == "heldout")
    return ClipSpec(height, width, frames, tuple(objects), background, caption)


# ----------------------------------------------------------------------------- captions

_VERBS = {  # (present tense, participle) phrases per motion
    "left": (("moves to the left", "slides to the left", "drifts left", "travels leftward",
              "moves left"), ("moving to the left", "sliding left", "drifting leftward")),
    "right": (("moves to the right", "slides to the right", "drifts right",
               "travels rightward", "moves right"),
              ("moving to the right", "sliding right", "drifting rightward")),
    "up": (("moves up", "rises", "floats upward", "slides up"),
           ("moving up", "rising", "floating upward")),
    "down": (("moves down", "falls", "sinks", "slides downward"),
             ("moving down", "falling", "sinking")),
    "bounce": (("bounces left and right", "bounces back and forth", "bounces off the walls"),
               ("bouncing left and right", "bouncing back and forth")),
    "grow": (("grows", "expands", "gets bigger", "grows larger"), ("growing", "expanding")),
    "shrink": (("shrinks", "gets smaller", "contracts"), ("shrinking", "contracting")),
    "still": (("stays still", "sits still", "rests in place", "stands still"),
              ("staying still", "sitting still", "resting in place")),
}
for _name, (_ux, _uy) in DIRECTIONS.items():
    if _ux and _uy:
        _v, _h = ("up" if _uy < 0 else "down"), ("left" if _ux < 0 else "right")
        _corner = ("top " if _uy < 0 else "bottom ") + _h
        _VERBS[_name] = (
            (f"moves {_v} and to the {_h}", f"drifts diagonally {_v} and {_h}",
             f"travels toward the {_corner}"),
            (f"moving {_v} and to the {_h}", f"drifting toward the {_corner}"),
        )
_PLAIN = ("over a {} background", "on a {} background", "in front of a {} background",
          "against a {} backdrop")
_GRADIENT = ("over a {} gradient", "on a {} gradient background", "in front of a {} gradient",
             "against a {} gradient backdrop")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _noun(obj: ObjectSpec) -> str:
    words = " ".join(w for w in (obj.size_word, obj.colour, obj.shape) if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def _caption(rng, objects, background: Background, image: bool) -> str:
    bg = _pick(rng, _GRADIENT if background.gradient != "none" else _PLAIN)
    bg = bg.format(background.name)
    nouns = [_noun(o) for o in objects]
    if image:
        lead = _pick(rng, ("", "a picture of ", "an image of "))
        body = " and ".join(nouns)
        return f"{lead}{body} {bg}" if lead or rng.random() < 0.7 else f"{bg}, {body}"
    participle = rng.random() < 0.35
    clauses = [f"{n} {_pick(rng, _VERBS[o.motion][int(participle)])}"
               for n, o in zip(nouns, objects, strict=True)]
    body = clauses[0]
    if len(clauses) == 2:
        body = f"{body} {_pick(rng, ('and', 'while'))} {clauses[1]}"
    if participle:
        return f"{_pick(rng, ('', 'a video of ', 'a clip of '))}{body} {bg}"
    return f"{body} {bg}" if rng.random() < 0.75 else f"{bg}, {body}"


OPPOSITE_MOTION = {
    "left": "right", "right": "left", "up": "down", "down": "up",
    "up_left": "down_right", "down_right": "up_left", "up_right": "down_left",
    "down_left": "up_right", "grow": "shrink", "shrink": "grow", "bounce": "still",
    "still": "bounce",
}


def recaption(spec: ClipSpec, seed: int = 0, **change: str) -> str:
    """A caption for ``spec`` with the main object's attributes replaced by ``change`` (e.g.
    ``motion="left"``, ``colour="blue"``); the wording is drawn from ``seed``, so captions of
    one spec with different changes differ only in the changed words."""
    if "colour" in change:
        change["rgb"] = COLOURS[change["colour"]]
    objects = (dataclasses.replace(spec.main, **change), *spec.objects[1:])
    return _caption(np.random.default_rng(seed), objects, spec.background, spec.frames == 1)


_MOTION_WORDS = {  # the template words, then the grammar's (shapes_grammar)
    "bounce": {"bounces", "bouncing", "forth", "ricochets", "ricocheting"},
    "grow": {"grows", "growing", "expands", "expanding", "bigger", "swells", "swelling",
             "inflates", "inflating"},
    "shrink": {"shrinks", "shrinking", "smaller", "contracts", "contracting", "dwindles",
               "dwindling"},
    "still": {"still", "motionless", "stationary", "place"},
}
_AXIS_WORDS = {
    "up": {"up", "upward", "upwards", "rises", "rising", "top", "climbs", "climbing", "ascends",
           "ascending"},
    "down": {"down", "downward", "downwards", "falls", "falling", "sinks", "sinking", "bottom",
             "drops", "dropping", "descends", "descending", "plunges", "plunging"},
    "left": {"left", "leftward", "leftwards"},
    "right": {"right", "rightward", "rightwards"},
}
_COLOUR_OF = {w: c for c, (held_in, held_out) in shapes_grammar.COLOUR_WORDS.items()
              for w in (*held_in, *held_out)}
_SHAPE_OF = {w: s for s, (held_in, held_out) in shapes_grammar.SHAPE_WORDS.items()
             for w in (*held_in, *held_out)}


def parse_caption(caption: str) -> dict[str, str | None]:
    """Colour, shape and motion of the MAIN (first mentioned) object of a shapes-world style
    prompt; None for what the prompt does not say (no motion word means 'still'). Reads the
    synonyms and paraphrases of the caption grammar too ("a crimson ball that drops")."""
    words = re.findall(r"[a-z]+", caption.lower())
    where = next((i for i, w in enumerate(words) if w in _SHAPE_OF), None)
    if where is None:
        return {"colour": None, "shape": None, "motion": None}
    # the colour sits right before the shape, or before a size word; others are the background's
    colour = next((_COLOUR_OF[w] for w in reversed(words[max(where - 2, 0):where])
                   if w in _COLOUR_OF), None)
    clause = []
    for i in range(where + 1, len(words)):
        if words[i] in ("and", "while") and i + 1 < len(words) and words[i + 1] in (
                "a", "an", "the"):
            break
        clause.append(words[i])
    found = set(clause)
    motion = next((m for m, ws in _MOTION_WORDS.items() if found & ws), None)
    if motion is None:
        vertical = next((a for a in ("up", "down") if found & _AXIS_WORDS[a]), None)
        horizontal = next((a for a in ("left", "right") if found & _AXIS_WORDS[a]), None)
        motion = "_".join(a for a in (vertical, horizontal) if a) or "still"
    return {"colour": colour, "shape": _SHAPE_OF[words[where]], "motion": motion}


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class ShapesWorldConfig:
    height: int = 64
    width: int = 64
    frames: int = 17
    image_fraction: float = 0.2  # share of items that are single images (frames == 1)
    two_object_fraction: float = 0.25
    split: str = "train"
    layout: str = "free"  # main object placement, see ``sample_spec``
    backgrounds: tuple[str, ...] | None = None  # background colours drawn from (None: all)
    motions: tuple[str, ...] | None = None  # main-object motions of clips (None: all)
    object_scale: float = 1.0  # object sizes times this (size words follow)
    wording: str = "template"  # captions: fixed templates or the grammar ("varied")
    seed: int = 0
    length: int = 100_000  # what len() reports; any index >= 0 is valid

    def __post_init__(self):
        if min(self.height, self.width) < 32:
            raise CineforgeError(f"shapes world needs at least 32x32 pixels, got "
                                 f"{self.height}x{self.width}; use e.g. 64x64")
        if self.frames < 2:
            raise CineforgeError(f"frames must be >= 2, got {self.frames}; images come from "
                                 "image_fraction")
        for name in ("image_fraction", "two_object_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CineforgeError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        _check_split(self.split)
        _check_layout(self.layout)
        check_subset("backgrounds", self.backgrounds, BACKGROUNDS)
        check_subset("motions", self.motions, MOTIONS)
        check_object_scale("object_scale", self.object_scale)
        check_wording("wording", self.wording, training=True)
        if self.seed < 0 or self.length < 1:
            raise CineforgeError("seed must be >= 0 and length >= 1")


TINY_SHAPES_WORLD = ShapesWorldConfig(height=32, width=32, frames=5, length=16)


@dataclass(frozen=True)
class ShapesWorld:
    """Map-style dataset: ``world[i]`` -> {"video": float tensor 3,T,H,W in [-1, 1],
    "caption": str, "spec": ClipSpec}; T is 1 for image items, so batch images and clips
    apart (``spec(i).frames`` tells which without rendering)."""

    config: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def __len__(self) -> int:
        return self.config.length

    def spec(self, index: int) -> ClipSpec:
        if index < 0:
            raise CineforgeError(f"shapes-world index must be >= 0, got {index}")
        c = self.config
        split_id = 0 if c.split == "train" else 1
        rng = np.random.default_rng([c.seed, split_id, index])
        frames = 1 if rng.random() < c.image_fraction else c.frames
        n_objects = 2 if rng.random() < c.two_object_fraction else 1
        return sample_spec(rng, height=c.height, width=c.width, frames=frames,
                           n_objects=n_objects, split=c.split, layout=c.layout,
                           backgrounds=c.backgrounds, motions=c.motions,
                           object_scale=c.object_scale, wording=c.wording)

    def __getitem__(self, index: int) -> dict:
        spec = self.spec(index)
        return {"video": to_video_tensor(render(spec)), "caption": spec.caption, "spec": spec}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def iterate(self, start: int = 0) -> Iterator[dict]:
        """Items start, start + 1, ... without end (resume a trainer at its data position)."""
        index = start
        while True:
            yield self[index]
            index += 1


def _prompt_specs(triples, height, width, frames, seed, layout, wording,
                  object_scale=1.0) -> list[ClipSpec]:
    """Template-worded specs of ``triples``; another wording rewords the same clips, drawing
    each caption from (seed, 2, item)."""
    check_wording("wording", wording)
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, height=height, width=width, frames=frames, combo=t, layout=layout,
                         object_scale=object_scale) for t in triples]
    if wording == "template":
        return specs
    return [dataclasses.replace(s, caption=shapes_grammar.phrase(
        np.random.default_rng([seed, 2, i]), s.objects, s.background, frames == 1,
        wording == "heldout")) for i, s in enumerate(specs)]


def heldout_prompts(
    *, height=64, width=64, frames=17, seed=0, layout="free", wording="template",
    object_scale=1.0,
) -> list[ClipSpec]:
    """One single-object clip per held-out (colour, shape, motion) triple, fixed by ``seed``:
    each has ``.caption`` and the ground truth ``.main`` (render it for a reference clip).
    ``wording`` other than 'template' rewords the same clips (see ``WORDINGS``);
    ``object_scale`` sizes the objects as ``sample_spec``'s."""
    return _prompt_specs(combinations("heldout", image=frames == 1), height, width, frames, seed,
                         layout, wording, object_scale)


def heldin_prompts(
    n: int | None = None, *, height=64, width=64, frames=17, seed=0, layout="free",
    wording="template", object_scale=1.0,
) -> list[ClipSpec]:
    """``n`` (default: as many as ``heldout_prompts``) single-object clips of distinct training
    triples, drawn by ``seed``; ``wording="heldout"`` phrases these same clips in held-out
    wordings (the 'held-out wording' evaluation split)."""
    image = frames == 1
    triples = combinations("train", image=image)
    n = len(combinations("heldout", image=image)) if n is None else n
    if not 0 < n <= len(triples):
        raise CineforgeError(f"n must be in 1..{len(triples)}, got {n}")
    pick = np.random.default_rng([seed, 1]).choice(len(triples), n, replace=False)
    return _prompt_specs([triples[i] for i in sorted(pick)], height, width, frames, seed, layout,
                         wording, object_scale)
