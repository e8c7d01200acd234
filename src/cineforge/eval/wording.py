"""Can a text encoder carry the held-out words at all? A nearest-centroid probe on its states.

``cineforge eval shapes`` reports a held-out-wording split: captions with words no training
caption uses ("scarlet", "orb", "climbs", ``cineforge.data.shapes_grammar.HELDOUT_WORDS``).
A DiT can only follow such a word as far as the text encoder places it near the held-in words
of the same meaning; what the encoder does not carry no DiT trained on held-in captions can
recover. This measures that ceiling without any DiT:

1. Each held-in word of an attribute (colour, shape, motion) is written into a few sentences
   of the shapes grammar ("a {colour} circle moves to the right ..."); its state is the mean
   of the encoder's token states over its own tokens (in context, as the DiT sees them).
2. The states are centred on the held-in words' mean; each value's centroid is the mean of
   its held-in words' states.
3. Each held-out word's state, in the same sentences, takes the value of the centroid nearest
   in angle. The share that comes out right, against chance (1 / number of values), is how
   much of that attribute a held-out wording can bring to a model built on this encoder.

A centroid has nothing to fit: a trained linear probe on a few dozen states of 384 dimensions
separates the held-in words by noise as easily as by meaning (on all-MiniLM-L6-v2 softmax
probes with weight decay 1e-3 to 1e-1 gave held-out colour 7-18 %, the centroid 32 %;
chance is 14 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cineforge.data.shapes_grammar import COLOUR_WORDS, MOTION_PHRASES, SHAPE_WORDS
from cineforge.errors import CineforgeError

__all__ = ["WordingProbe", "lexicons", "wording_probe"]

# held-in sentences per attribute; {w} is the probed word or phrase
_CONTEXTS = {
    "colour": ("a {w} circle moves to the right on a gray background",
               "the {w} square falls down over a white backdrop",
               "a video of a small {w} triangle rising",
               "an image of a {w} diamond on a black gradient"),
    "shape": ("a red {w} moves to the right on a gray background",
              "the blue {w} falls down over a white backdrop",
              "a video of a small green {w} rising",
              "an image of a yellow {w} on a black gradient"),
    "motion": ("a red circle {w} on a gray background",
               "the blue square {w} over a white backdrop",
               "a small green triangle {w}",
               "with a black background, a yellow diamond {w}"),
}


@dataclass(frozen=True)
class WordingProbe:
    """One attribute: the share of the held-in words' states (the centroids' own) and of the
    held-out words' states read as their value, and chance (1 / number of values)."""

    attribute: str
    values: int
    heldin_words: int
    heldout_words: int
    heldin_accuracy: float
    heldout_accuracy: float

    @property
    def chance(self) -> float:
        return 1.0 / self.values


def lexicons() -> dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]:
    """``{attribute: {value: (held-in words, held-out words)}}`` of the grammar; a motion's
    words are its present-tense phrases."""
    motion = {m: (p[0], p[2]) for m, p in MOTION_PHRASES.items()}
    return {"colour": COLOUR_WORDS, "shape": SHAPE_WORDS, "motion": motion}


def _span(tokenizer, sentence: str, words: str) -> slice:
    """Token positions of ``words`` inside ``sentence`` (with the special tokens)."""
    ids = tokenizer(sentence)["input_ids"]
    part = tokenizer(words, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(part) + 1):
        if ids[i : i + len(part)] == part:
            return slice(i, i + len(part))
    raise CineforgeError(f"the tokenizer splits {words!r} differently inside {sentence!r}")


def _states(encoder, attribute: str, lexicon, heldout: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token state of every word of one side of ``lexicon`` in every context; labels."""
    sentences, spans, labels = [], [], []
    for label, (held_in, held_out) in enumerate(lexicon.values()):
        for word in held_out if heldout else held_in:
            for template in _CONTEXTS[attribute]:
                sentence = template.format(w=word)
                sentences.append(sentence)
                spans.append(_span(encoder.tokenizer, sentence, word))
                labels.append(label)
    states = encoder.encode(sentences).states.float()
    rows = torch.stack([states[i, s].mean(0) for i, s in enumerate(spans)])
    return rows, torch.tensor(labels)


def _nearest_share(x: torch.Tensor, y: torch.Tensor, centroids: torch.Tensor) -> float:
    """Share of the rows of ``x`` whose nearest unit ``centroids`` row in angle is ``y``."""
    return (F.normalize(x, dim=1) @ centroids.T).argmax(1).eq(y).float().mean().item()


def wording_probe(encoder, attributes: Sequence[str] = ("colour", "shape", "motion"),
                  ) -> list[WordingProbe]:
    """The probe of the module docstring, per attribute, on ``encoder`` (a
    ``TransformersTextEncoder``: ``encode`` and ``tokenizer``)."""
    unknown = sorted(set(attributes) - set(_CONTEXTS))
    if unknown:
        raise CineforgeError(f"unknown attributes {unknown}; choose from {sorted(_CONTEXTS)}")
    out, lexicon_of = [], lexicons()
    for attribute in attributes:
        lexicon = lexicon_of[attribute]
        x_in, y_in = _states(encoder, attribute, lexicon, heldout=False)
        x_out, y_out = _states(encoder, attribute, lexicon, heldout=True)
        mean = x_in.mean(0)
        x_in, x_out = x_in - mean, x_out - mean
        centroids = F.normalize(torch.stack([x_in[y_in == k].mean(0)
                                             for k in range(len(lexicon))]), dim=1)
        held_in, held_out = (_nearest_share(x, y, centroids) for x, y in ((x_in, y_in),
                                                                     (x_out, y_out)))
        out.append(WordingProbe(attribute, len(lexicon),
                                sum(len(v[0]) for v in lexicon.values()),
                                sum(len(v[1]) for v in lexicon.values()), held_in, held_out))
    return out
