"""A caption grammar for the shapes world: the same clip in many wordings.

``ShapesWorldConfig(wording="varied")`` captions clips from this grammar instead of the fixed
templates of ``cineforge.data.shapes``: synonyms for colours ("crimson"), shapes ("ball",
"box"), sizes and motions ("goes up", "drops", "slides off to the left", "heading right"),
several sentence templates ("a red box that rises", "a video of a blue ball falling") and
background phrases. Part of the grammar is HELD OUT: the words in ``HELDOUT_WORDS`` and three
sentence templates ("we see ... rising", "... is rising", "... keeps rising") never occur in
'varied' captions; only wording "heldout" uses them, to ask whether a model follows a prompt
phrased in words it never saw in training (``heldin_prompts(wording="heldout")``).

Each lexicon entry is ``(held-in words, held-out words)``; the first held-in word is the one
the fixed templates use. Every word a shape or colour can take is a single token and comes
right before the shape word, so ``cineforge.data.shapes.parse_caption`` reads any caption of
the grammar. Only the main object's words are held out; a second object stays held-in.
"""

import numpy as np

__all__ = [
    "BACKGROUND_WORDS", "COLOUR_WORDS", "HELDOUT_MARKERS", "HELDOUT_WORDS", "MOTION_PHRASES",
    "SHAPE_WORDS", "SIZE_WORDS", "phrase",
]

COLOUR_WORDS = {
    "red": (("red", "crimson"), ("scarlet",)),
    "orange": (("orange", "amber"), ("tangerine",)),
    "yellow": (("yellow", "golden"), ("lemon",)),
    "green": (("green", "emerald"), ("jade",)),
    "cyan": (("cyan", "turquoise"), ("aqua",)),
    "blue": (("blue", "cobalt"), ("sapphire",)),
    "purple": (("purple", "violet"), ("amethyst",)),
}
SHAPE_WORDS = {  # "triangular" is said as "triangular shape"
    "circle": (("circle", "ball", "disc", "dot"), ("disk", "orb")),
    "square": (("square", "box", "block", "tile"), ("cube",)),
    "triangle": (("triangle", "pyramid", "triangular"), ("wedge",)),
    "diamond": (("diamond", "rhombus"), ("lozenge",)),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big"),
              "big": ("big", "large")}
BACKGROUND_WORDS = {"gray": ("gray", "grey"), "dark blue": ("dark blue", "navy")}


def _direction_phrases() -> dict[str, tuple[tuple[str, ...], ...]]:
    """(present, participle, held-out present, held-out participle) phrases per direction."""
    out = {
        "up": (("moves up", "goes up", "rises", "floats up", "drifts upward", "heads up"),
               ("moving up", "going up", "rising", "floating up", "heading upward"),
               ("climbs", "ascends"), ("climbing", "ascending")),
        "down": (("moves down", "goes down", "falls", "falls down", "drops", "sinks",
                  "drifts downward"),
                 ("moving down", "falling", "dropping", "sinking", "heading down"),
                 ("descends", "plunges"), ("descending", "plunging")),
    }
    for h in ("left", "right"):
        out[h] = ((f"moves {h}", f"moves to the {h}", f"goes {h}", f"slides to the {h}",
                   f"slides off to the {h}", f"drifts {h}", f"heads {h}", f"travels {h}ward"),
                  (f"moving {h}", f"heading {h}", f"sliding off to the {h}", f"drifting {h}",
                   f"going to the {h}"),
                  (f"glides {h}", f"glides to the {h}"), (f"gliding {h}", f"gliding to the {h}"))
    for v, top in (("up", "top"), ("down", "bottom")):
        for h in ("left", "right"):
            out[f"{v}_{h}"] = (
                (f"moves {v} and to the {h}", f"goes {v} and {h}",
                 f"drifts diagonally {v} and {h}", f"heads toward the {top} {h} corner"),
                (f"moving {v} and to the {h}", f"heading toward the {top} {h}",
                 f"drifting diagonally {v} and {h}"),
                (f"glides diagonally {v} and {h}", f"glides toward the {top} {h}"),
                (f"gliding diagonally {v} and {h}", f"gliding toward the {top} {h}"))
    return out


MOTION_PHRASES = {
    **_direction_phrases(),
    "bounce": (("bounces left and right", "bounces back and forth", "bounces off the walls",
                "bounces from side to side", "goes back and forth"),
               ("bouncing left and right", "bouncing between the walls",
                "going back and forth"),
               ("ricochets between the walls", "ricochets from side to side"),
               ("ricocheting between the walls", "ricocheting from side to side")),
    "grow": (("grows", "expands", "gets bigger", "grows larger", "swells"),
             ("growing", "expanding", "getting bigger", "swelling"),
             ("inflates",), ("inflating",)),
    "shrink": (("shrinks", "gets smaller", "contracts", "becomes smaller"),
               ("shrinking", "contracting", "getting smaller"),
               ("dwindles",), ("dwindling",)),
    "still": (("stays still", "sits still", "rests in place", "stays put", "does not move",
               "remains motionless", "stands still"),
              ("staying still", "sitting still", "resting in place", "standing still",
               "remaining motionless"),
              ("hovers in place",), ("hovering in place",)),
}

_PLAIN = (("over a {} background", "on a {} background", "in front of a {} background",
           "against a {} backdrop", "with a {} background"), ("on a {} canvas",))
_GRADIENT = (("over a {} gradient", "on a {} gradient background", "against a {} gradient",
              "with a {} gradient behind it"), ("on a {} gradient canvas",))

# sentence templates of a clip, (held in, held out): {n} the main noun phrase, {v} its motion
# phrase; "present" ones take a present-tense phrase ("rises"), the others a participle
# ("rising"); a second object repeats the template after "and" or "while" (minus "we see")
_CLIP_TEMPLATES = (
    (("{n} {v}", "present"), ("{n} that {v}", "present"), ("{n} {v}", "participle")),
    (("we see {n} {v}", "participle"), ("{n} is {v}", "participle"),
     ("{n} keeps {v}", "participle")),
)
_LEADS = ("a video of ", "a clip of ", "footage of ", "an animation of ")
_IMAGE_LEADS = (("", "a picture of ", "an image of ", "a photo of ", "a drawing of "),
                ("we see ", "a snapshot of "))

HELDOUT_MARKERS = frozenset({"see", "is", "keeps", "snapshot", "canvas"})  # held-out templates
HELDOUT_WORDS = frozenset(
    {w for _, out in (*COLOUR_WORDS.values(), *SHAPE_WORDS.values()) for w in out}
    | {p.split()[0] for m in MOTION_PHRASES.values() for p in (*m[2], *m[3])}
    | HELDOUT_MARKERS
)


def _pick(rng: np.random.Generator, options) -> str:
    return options[rng.integers(len(options))]


def _word(rng, entry, heldout: bool) -> str:
    held_in, held_out = entry
    return _pick(rng, held_out) if heldout else _pick(rng, held_in)


def _noun(rng, obj, heldout: dict[str, bool], article: bool) -> str:
    colour = _word(rng, COLOUR_WORDS[obj.colour], heldout["colour"])
    shape = _word(rng, SHAPE_WORDS[obj.shape], heldout["shape"])
    size = _pick(rng, SIZE_WORDS[obj.size_word]) if obj.size_word else ""
    words = " ".join(w for w in (size, colour, shape) if w)
    words += " shape" if shape == "triangular" else ""
    if not article:
        return words
    if rng.random() < 0.3:
        return f"the {words}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def _background(rng, background, heldout: bool) -> str:
    forms = _GRADIENT if background.gradient != "none" else _PLAIN
    name = _pick(rng, BACKGROUND_WORDS.get(background.name, (background.name,)))
    return _pick(rng, forms[1] if heldout else forms[0]).format(name)


def _heldout_choices(rng, heldout: bool, image: bool = False) -> dict[str, bool]:
    """Which parts of a 'heldout' caption take held-out words: each with chance 1/2, and the
    sentence template when nothing else does (so every such caption has one)."""
    parts = ("colour", "shape", "motion", "template", "background")
    if not heldout:
        return dict.fromkeys(parts, False)
    chosen = {p: bool(rng.random() < 0.5) and not (image and p == "motion") for p in parts}
    chosen["template"] |= not any(chosen.values())
    return chosen


def phrase(rng: np.random.Generator, objects, background, image: bool,
           heldout: bool = False) -> str:
    """A caption of ``objects`` (main object first; each has ``colour``, ``shape``,
    ``motion`` and ``size_word``) over ``background`` (``name``, ``gradient``). ``heldout``:
    held-out words or templates for the main object (at least one); else held-in only."""
    held, plain = _heldout_choices(rng, heldout, image), _heldout_choices(rng, False)
    bg = _background(rng, background, held["background"])
    if image:
        lead = _word(rng, _IMAGE_LEADS, held["template"])
        body = " and ".join(_noun(rng, o, held if i == 0 else plain, True)
                            for i, o in enumerate(objects))
        return f"{lead}{body} {bg}" if lead or rng.random() < 0.7 else f"{bg}, {body}"
    template, form = _pick(rng, _CLIP_TEMPLATES[int(held["template"])])
    leads = not held["template"] and (form == "participle" or "that" in template)
    lead = _pick(rng, _LEADS) if leads and rng.random() < 0.3 else ""
    clauses = []
    for i, obj in enumerate(objects):
        h = held if i == 0 else plain
        phrases = MOTION_PHRASES[obj.motion][2:] if h["motion"] else MOTION_PHRASES[obj.motion][:2]
        verb = _pick(rng, phrases[int(form == "participle")])
        noun = _noun(rng, obj, h, article=i > 0 or lead != "" or template.startswith("we")
                     or rng.random() < 0.85)
        clauses.append((template if i == 0 else template.removeprefix("we see ")).format(
            n=noun, v=verb))
    body = lead + f" {_pick(rng, ('and', 'while'))} ".join(clauses)
    return f"{body} {bg}" if rng.random() < 0.75 else f"{bg}, {body}"
