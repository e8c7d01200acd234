"""Captioners for curated scenes: a VLM, imported captions, or the synthetic world's truth.

A captioner has a ``name`` (recorded with each caption) and ``caption(frames, **meta)``:
``frames`` are the scene's sampled uint8 frames ``T, H, W, 3``; ``meta`` are keywords about
the scene - ``scene_id``, ``source`` (the source file's path), ``start_frame``,
``end_frame`` (exclusive) and ``fps`` - of which each captioner reads what it needs. It
returns the caption, or ``None`` when it has none for this scene (the stage rejects it).

``get_captioner(spec)`` builds one from a command-line string:

* ``shapes``: ``ShapesCaptioner``, the ground-truth caption of a ShapesWorld clip written by
  ``write_shapes_sources`` (default world config);
* ``manual:captions.csv`` / ``manual:captions.jsonl``: ``ManualCaptions``;
* ``vlm:MODEL`` (a hub id or local folder): ``TransformersVLMCaptioner``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cineforge.errors import CineforgeError

__all__ = [
    "Captioner", "ManualCaptions", "ShapesCaptioner", "TransformersVLMCaptioner",
    "get_captioner", "write_shapes_sources",
]

DEFAULT_PROMPT = ("Describe this video in one paragraph: the subjects, their appearance and "
                  "actions, the setting, the camera motion and the visual style.")


@runtime_checkable
class Captioner(Protocol):
    name: str

    def caption(self, frames: np.ndarray, **meta: Any) -> str | None: ...


def get_captioner(spec: str) -> Captioner:
    kind, _, arg = spec.partition(":")
    if kind == "shapes":
        if arg:
            raise CineforgeError("the 'shapes' captioner takes no argument (custom world "
                                 "configs: ShapesCaptioner(config) in Python)")
        return ShapesCaptioner()
    if kind == "manual" and arg:
        return ManualCaptions(arg)
    if kind == "vlm" and arg:
        return TransformersVLMCaptioner(arg)
    raise CineforgeError(f"unknown captioner {spec!r}; use 'shapes', 'manual:FILE.csv|jsonl' "
                         "or 'vlm:MODEL_ID_OR_FOLDER'")


# ----------------------------------------------------------------------------- manual


class ManualCaptions:
    """Captions imported from a file, keyed by scene id or by source path + time range.

    CSV (with a header) or JSONL rows hold ``caption`` and either ``scene_id``, or ``source``
    with ``start`` / ``end`` in seconds (a missing ``end`` runs to the end of the source).
    A scene gets the caption of its id, else the one of its source whose range overlaps the
    scene's ``[start_frame, end_frame) / fps`` the most (ties: the earlier range). Relative
    ``source`` paths are relative to the captions file; a source that matches no path is
    looked up by file name when that name is unique in the file.
    """

    name = "manual"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CineforgeError(f"captions file {self.path} not found; give a .csv or .jsonl")
        rows = _read_rows(self.path)
        self.by_id: dict[int, str] = {}
        self.by_source: dict[str, list[tuple[float, float, str]]] = {}
        for n, row in enumerate(rows, start=2 if self.path.suffix.lower() == ".csv" else 1):
            self._add(row, f"{self.path}:{n}")
        names: dict[str, list[str]] = {}
        for source in self.by_source:
            names.setdefault(os.path.basename(source), []).append(source)
        self._by_name = {k: v[0] for k, v in names.items() if len(v) == 1}

    def _add(self, row: dict[str, Any], where: str) -> None:
        text = str(row.get("caption") or "").strip()
        if not text:
            raise CineforgeError(f"{where}: empty or missing 'caption'")
        try:
            if row.get("scene_id") not in (None, ""):
                self.by_id[int(row["scene_id"])] = text
                return
            if not row.get("source"):
                raise CineforgeError(f"{where}: give 'scene_id' or 'source' with 'start'/'end'")
            start = float(row.get("start") or 0.0)
            end = float(row["end"]) if row.get("end") not in (None, "") else float("inf")
        except (TypeError, ValueError) as e:
            raise CineforgeError(f"{where}: bad scene_id/start/end ({e})") from None
        if not end > start >= 0:
            raise CineforgeError(f"{where}: need 0 <= start < end, got {start}..{end}")
        source = os.path.normpath(self.path.parent / os.path.expanduser(row["source"]))
        self.by_source.setdefault(os.path.abspath(source), []).append((start, end, text))

    def caption(self, frames: np.ndarray | None = None, **meta: Any) -> str | None:
        if meta.get("scene_id") is not None and int(meta["scene_id"]) in self.by_id:
            return self.by_id[int(meta["scene_id"])]
        if meta.get("source") is None or not self.by_source:
            return None
        source = os.path.abspath(os.path.expanduser(str(meta["source"])))
        ranges = self.by_source.get(source)
        if ranges is None:
            ranges = self.by_source.get(self._by_name.get(os.path.basename(source), ""))
        if not ranges:
            return None
        if meta.get("fps") is None or meta.get("start_frame") is None:
            raise CineforgeError("matching captions by time range needs the scene's fps and "
                                 "start_frame (and end_frame); pass them to caption()")
        fps = float(meta["fps"])
        start = meta["start_frame"] / fps
        end = meta["end_frame"] / fps if meta.get("end_frame") is not None else start
        best, best_overlap = None, -1.0
        for lo, hi, text in sorted(ranges):
            overlap = min(hi, end) - max(lo, start)
            inside = lo <= start < hi
            if (overlap > 0 or inside) and overlap > best_overlap:
                best, best_overlap = text, overlap
        return best


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CineforgeError(f"{path}:{n}: not JSON ({e.msg})") from None
        return rows
    raise CineforgeError(f"captions file {path} must end in .csv or .jsonl")


# ----------------------------------------------------------------------------- shapes world

_SHAPES_NAME = re.compile(r"shapes_(?P<split>train|heldout)_seed(?P<seed>\d+)_(?P<index>\d+)")


def write_shapes_sources(folder: str | Path, indices, config=None, *, fps: float = 8.0
                         ) -> list[Path]:
    """Render ShapesWorld items ``indices`` to ``folder/shapes_{split}_seed{S}_{i:06d}.mp4``
    (a curation corpus whose true captions ``ShapesCaptioner`` knows)."""
    from cineforge.data.shapes import ShapesWorld, ShapesWorldConfig, render
    from cineforge.io.video import write_video

    config = config or ShapesWorldConfig(image_fraction=0.0)
    world = ShapesWorld(config)
    out = []
    for i in indices:
        name = f"shapes_{config.split}_seed{config.seed}_{i:06d}.mp4"
        out += write_video(Path(folder) / name, render(world.spec(i)), fps=fps, crf=12)
    return out


class ShapesCaptioner:
    """Ground truth of ShapesWorld clips: the source file's name gives (split, seed, index)
    (``write_shapes_sources``), ``config`` the rest (sizes, frames, object fractions: the
    same as the writer's); the clip's caption is regenerated exactly, and its attributes
    (objects, colours, motions, background) as ``cineforge.data.latents`` stores them."""

    name = "ground_truth"

    def __init__(self, config=None) -> None:
        from cineforge.data.shapes import ShapesWorldConfig

        self.config = config or ShapesWorldConfig(image_fraction=0.0)

    def spec(self, source: str | Path):
        from cineforge.data.shapes import ShapesWorld

        m = _SHAPES_NAME.search(Path(source).stem)
        if m is None:
            raise CineforgeError(f"{source} is not a ShapesWorld clip name "
                                 "(shapes_{split}_seed{S}_{index}.mp4 from write_shapes_sources)")
        config = replace(self.config, split=m["split"], seed=int(m["seed"]))
        return ShapesWorld(config).spec(int(m["index"]))

    def caption(self, frames: np.ndarray | None = None, **meta: Any) -> str | None:
        if meta.get("source") is None:
            raise CineforgeError("ShapesCaptioner needs the scene's source path (source=...)")
        return self.spec(meta["source"]).caption

    def attributes(self, source: str | Path) -> dict[str, Any]:
        spec = self.spec(source)
        return {"frames": spec.frames, "background": spec.background.name,
                "gradient": spec.background.gradient,
                "objects": [{"colour": o.colour, "shape": o.shape, "motion": o.motion,
                             "size": o.size_word} for o in spec.objects]}


# ----------------------------------------------------------------------------- VLM


class TransformersVLMCaptioner:
    """A vision-language model through transformers (e.g. Qwen2.5-VL): ``frames`` evenly
    spaced frames of the scene are given as images after ``prompt``; greedy decoding.

    Loads lazily on the first caption (``model`` is a hub id or a local folder), or wraps
    an already loaded pair with ``from_loaded(processor, model)``.
    """

    def __init__(self, model: str, *, prompt: str = DEFAULT_PROMPT, frames: int = 8,
                 max_new_tokens: int = 160, max_side: int = 448, device: str = "cpu") -> None:
        if not isinstance(model, str) or not model.strip():
            raise CineforgeError("the VLM captioner needs a model id or a local folder")
        local = Path(model).expanduser()
        if (model.startswith((".", "/", "~")) or local.exists()) and not (
                local / "config.json").is_file():
            raise CineforgeError(f"{local} is not a transformers model folder (no config.json)")
        if not prompt.strip():
            raise CineforgeError("the VLM captioner's prompt is empty")
        if frames < 1 or max_new_tokens < 1 or max_side < 28:
            raise CineforgeError(f"need frames >= 1, max_new_tokens >= 1 and max_side >= 28, "
                                 f"got {frames}, {max_new_tokens}, {max_side}")
        self.model_id, self.prompt, self.frames = model, prompt, frames
        self.max_new_tokens, self.max_side, self.device = max_new_tokens, max_side, device
        self.name = f"vlm:{model}"[:64]
        self._processor = self._model = None

    @classmethod
    def from_loaded(cls, processor, model, **kwargs) -> TransformersVLMCaptioner:
        self = cls(getattr(model, "name_or_path", "") or "loaded-model", **kwargs)
        self._processor, self._model = processor, model
        return self

    def _load(self) -> None:
        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as e:
            raise CineforgeError(f"the VLM captioner needs transformers ({e})") from None
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_id)
            self._model = AutoModelForImageTextToText.from_pretrained(self.model_id)
        except OSError as e:
            raise CineforgeError(f"cannot load VLM {self.model_id!r}: {e}".splitlines()[0]
                                 ) from None
        self._model.to(self.device).eval()

    def images(self, frames: np.ndarray) -> list:
        """The PIL images given to the model: ``self.frames`` evenly spaced frames,
        shrunk so the long side is at most ``max_side``."""
        from PIL import Image

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(
                frames):
            raise CineforgeError(f"captioners take uint8 frames T,H,W,3, got {frames.dtype} "
                                 f"{tuple(frames.shape)}")
        picks = np.unique(np.linspace(0, len(frames) - 1, min(self.frames, len(frames)))
                          .round().astype(int))
        out = []
        for i in picks:
            im = Image.fromarray(frames[i])
            im.thumbnail((self.max_side, self.max_side))
            out.append(im)
        return out

    def caption(self, frames: np.ndarray, **meta: Any) -> str | None:
        import torch

        images = self.images(frames)
        if self._model is None:
            self._load()
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": self.prompt}]
        text = self._processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False)
        inputs = self._processor(text=[text], images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.no_grad():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                       do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        caption = self._processor.batch_decode(new, skip_special_tokens=True)[0].strip()
        return caption or None
