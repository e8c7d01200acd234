"""Latent cache: a dataset encoded once by a frozen VAE and text encoder, read by index.

Training a DiT needs only the VAE latents and the text states of each item, so they are
computed once and stored in shards::

    folder/index.json              format, what encoded the items, one entry per item
    folder/empty.safetensors       "text": the states of the empty prompt "" (for CFG dropout)
    folder/shard-00000.safetensors "{j}.latent" (C, T, H, W) fp16, "{j}.text" (L_j, D) fp16
                                   (a cache of a teacher's samples, ``build_sample_cache``,
                                   also "{j}.states" (K, C, T, H, W) fp16)

Item ``i`` is entry ``i % shard_size`` of shard ``i // shard_size``. Latents are the
VAE's normalised posterior means; text states are trimmed to each prompt's real tokens
(special tokens included) and stored in fp16. Index entries keep the caption, the latent
shape, the text length and the item's attributes (for ShapesWorld: objects, colours,
motions, background).

Writing is incremental and resumable: each shard is written to a temporary file and renamed,
then ``index.json`` is rewritten atomically to list it. A crash loses at most the shard being
written; ``build_latent_cache`` on the same folder continues after the last listed shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cineforge.errors import CineforgeError

FORMAT = "cineforge-latents/1"
INDEX = "index.json"
EMPTY = "empty.safetensors"


@dataclass(frozen=True)
class CacheItem:
    latent: torch.Tensor  # C, T, H, W float32
    text: torch.Tensor  # L, D float32 (the prompt's real tokens only)
    caption: str
    # K, C, T, H, W float32: where the sampler that made ``latent`` stood at K chosen times
    # (a cache of a teacher's samples, ``build_sample_cache``); None for encoded data
    states: torch.Tensor | None = None


class LatentItems:
    """Read side shared by the latent cache and curation's latent shards: ``entries`` (one
    index dict per item: caption, shape, text_len, attributes), ``ds[i]`` -> ``CacheItem``.
    Subclasses parse their index and call ``__init__``, and say where item ``i`` lives with
    ``_locate``."""

    def __init__(self, folder: Path, index: dict[str, Any], entries: list[dict[str, Any]]):
        self.folder, self.index, self.entries = folder, index, entries
        self._handles: dict[Path, Any] = {}

    def _locate(self, i: int) -> tuple[Path, int]:
        """(shard file, position in the shard) of item ``i``."""
        raise NotImplementedError

    @property
    def meta(self) -> dict[str, Any]:
        return self.index["meta"]

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.entries[i]["shape"])

    def caption(self, i: int) -> str:
        return self.entries[i]["caption"]

    def attributes(self, i: int) -> dict[str, Any]:
        return self.entries[i]["attributes"]

    def __getitem__(self, i: int) -> CacheItem:
        if not 0 <= i < len(self.entries):
            raise IndexError(f"latent item {i} out of range 0..{len(self.entries) - 1}")
        path, j = self._locate(i)
        if path not in self._handles:
            from safetensors import safe_open

            self._handles[path] = safe_open(path, framework="pt")
        f = self._handles[path]
        entry = self.entries[i]
        text = (f.get_tensor(f"{j}.text").float() if entry["text_len"]
                else torch.zeros(0, self.meta.get("text_dim", 0)))
        states = f.get_tensor(f"{j}.states").float() if entry.get("states") else None
        return CacheItem(f.get_tensor(f"{j}.latent").float(), text, entry["caption"], states)

    @property
    def has_empty_text(self) -> bool:
        """Whether the empty prompt's states were stored (a latent cache always has them)."""
        return (self.folder / EMPTY).is_file()

    def empty_text(self) -> torch.Tensor:
        """States of the empty prompt, ``L, D`` float32."""
        from safetensors.torch import load_file

        if not self.has_empty_text:
            raise CineforgeError(f"{self.folder} has no {EMPTY}; the encoder that wrote it "
                                 "was given no empty-prompt states")
        return load_file(self.folder / EMPTY)["text"].float()


class LatentCache(LatentItems):
    """The trainer's cache: ``cache[i]`` -> ``CacheItem``; ``len(cache)`` counts the written
    items."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / INDEX
        if not path.is_file():
            raise CineforgeError(f"no latent cache in {folder} ({INDEX} missing); build "
                                 "it with `cineforge train cache --config ...`")
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise CineforgeError(f"{path} is not a {FORMAT} index; rebuild the cache")
        super().__init__(folder, index, [e for shard in index["shards"] for e in shard["items"]])

    @property
    def items_total(self) -> int:
        return self.index["items_total"]

    @property
    def complete(self) -> bool:
        return len(self.entries) == self.items_total

    def _locate(self, i: int) -> tuple[Path, int]:
        shard, j = divmod(i, self.index["shard_size"])
        return self.folder / self.index["shards"][shard]["file"], j


def build_latent_cache(
    folder: str | Path,
    dataset: Sequence[dict],
    items: int,
    *,
    encode_video: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[list[str]], Any],
    meta: dict[str, Any],
    shard_size: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> LatentCache:
    """Encode ``dataset[0:items]`` into ``folder``, resuming after its last complete shard.

    ``dataset[i]`` gives ``{"video": 3,T,H,W in [-1, 1], "caption": str}`` (and ``"spec"``
    for ShapesWorld attributes); ``encode_video`` maps ``B,3,T,H,W`` to normalised latents;
    ``encode_text`` maps prompts to ``TextStates``. ``meta`` (JSON-able) records what encoded
    the items: resuming with different ``meta``, ``items`` or ``shard_size`` is an error.
    """
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = _open_index(folder, meta, items, shard_size, lambda: _trim(encode_text([""]), 0))
    shards = -(-items // shard_size)
    done = len(index["shards"])
    with tqdm(total=items, initial=min(done * shard_size, items), disable=not progress,
              desc="latent cache", unit="item") as bar:
        for shard in range(done, shards):
            indices = range(shard * shard_size, min((shard + 1) * shard_size, items))
            tensors, entries = _encode_shard(dataset, indices, encode_video, encode_text,
                                             batch_size)
            _append_shard(folder, index, shard, tensors, entries)
            bar.update(len(indices))
    return LatentCache(folder)


def build_sample_cache(
    folder: str | Path,
    source: LatentItems,
    items: int,
    *,
    sample: Callable[[list[int], list[CacheItem]], tuple[torch.Tensor, torch.Tensor]],
    meta: dict[str, Any],
    shard_size: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> LatentCache:
    """A cache of a sampler's outputs for the prompts and shapes of ``source[0:items]``,
    resumable like ``build_latent_cache``: item ``i`` keeps ``source[i]``'s caption, text
    states and attributes; its latent is what ``sample`` made for it and its ``states`` where
    the sampler stood on the way. ``sample(indices, items)`` takes same-shape items (at most
    ``batch_size``) and returns ``(latents B,C,T,H,W, states B,K,C,T,H,W)``; it must depend on
    the indices, not on the batching, for a resumed build to equal an uninterrupted one.
    The index's meta is the source's (what encoded the prompts, the latent channels) with
    ``meta`` (what sampled) under ``"samples"``."""
    from tqdm import tqdm

    if not 0 < items <= len(source):
        raise CineforgeError(f"cannot sample {items} items from the {len(source)} of "
                             f"{source.folder}; ask for 1..{len(source)}")
    if not source.has_empty_text:
        raise CineforgeError(f"{source.folder} has no empty-prompt states to copy; rebuild it")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    empty = source.empty_text().to(torch.float16).contiguous()
    index = _open_index(folder, dict(source.meta, samples=meta), items, shard_size,
                        lambda: empty)
    done = len(index["shards"])
    with tqdm(total=items, initial=min(done * shard_size, items), disable=not progress,
              desc="teacher samples", unit="item") as bar:
        for shard in range(done, -(-items // shard_size)):
            first = shard * shard_size
            indices = range(first, min(first + shard_size, items))
            tensors: dict[str, torch.Tensor] = {}
            entries = [dict(source.entries[i]) for i in indices]
            by_shape: dict[tuple, list[int]] = {}
            for i in indices:
                by_shape.setdefault(source.shape(i), []).append(i)
            for members in by_shape.values():
                for k in range(0, len(members), batch_size):
                    chunk = members[k : k + batch_size]
                    records = [source[i] for i in chunk]
                    latents, states = sample(chunk, records)
                    for i, r, z, s in zip(chunk, records, latents, states, strict=True):
                        j = i - first
                        tensors[f"{j}.latent"] = z.to(torch.float16).contiguous()
                        tensors[f"{j}.states"] = s.to(torch.float16).contiguous()
                        tensors[f"{j}.text"] = r.text.to(torch.float16).contiguous()
                        entries[j]["states"] = len(s)
                    bar.update(len(chunk))
            _append_shard(folder, index, shard, tensors, entries)
    return LatentCache(folder)


def _append_shard(folder: Path, index: dict[str, Any], shard: int,
                  tensors: dict[str, torch.Tensor], entries: list[dict[str, Any]]) -> None:
    """Write shard ``shard`` (atomically), then list it in the index (atomically): a crash
    between the two leaves a shard the index does not name, rewritten on resume."""
    name = f"shard-{shard:05d}.safetensors"
    _atomic_save_tensors(tensors, folder / name)
    index["shards"].append({"file": name, "items": entries})
    _atomic_write_json(index, folder / INDEX)


def _open_index(folder: Path, meta: dict, items: int, shard_size: int,
                empty_text: Callable[[], torch.Tensor]) -> dict[str, Any]:
    """The folder's index (refused if built with other settings), or a new one with the
    empty prompt's states (``empty_text()``, ``L, D`` fp16) written beside it."""
    path = folder / INDEX
    if path.is_file():
        index = json.loads(path.read_text())
        want = _jsonable({"format": FORMAT, "meta": meta, "items_total": items,
                          "shard_size": shard_size})
        changed = [k for k in want if index.get(k) != want[k]]
        if changed:
            raise CineforgeError(
                f"the latent cache in {folder} was built with other settings ({', '.join(changed)}"
                "); delete the folder or set another cache.dir"
            )
        return index
    _atomic_save_tensors({"text": empty_text()}, folder / EMPTY)
    index = {"format": FORMAT, "meta": meta, "items_total": items, "shard_size": shard_size,
             "shards": []}
    _atomic_write_json(index, path)
    return index


def _encode_shard(dataset, indices, encode_video, encode_text, batch_size):
    records = [dataset[i] for i in indices]
    tensors: dict[str, torch.Tensor] = {}
    by_shape: dict[tuple, list[int]] = {}
    for j, r in enumerate(records):
        by_shape.setdefault(tuple(r["video"].shape), []).append(j)
    for members in by_shape.values():
        for k in range(0, len(members), batch_size):
            chunk = members[k : k + batch_size]
            latents = encode_video(torch.stack([records[j]["video"] for j in chunk]))
            for j, z in zip(chunk, latents, strict=True):
                tensors[f"{j}.latent"] = z.to(torch.float16).contiguous()
    captions = [r["caption"] for r in records]
    for k in range(0, len(captions), 64):
        states = encode_text(captions[k : k + 64])
        for n in range(len(captions[k : k + 64])):
            tensors[f"{k + n}.text"] = _trim(states, n)
    entries = [{"caption": r["caption"], "shape": list(tensors[f"{j}.latent"].shape),
                "text_len": tensors[f"{j}.text"].shape[0], "attributes": _attributes(r)}
               for j, r in enumerate(records)]
    return tensors, entries


def _trim(states, n: int) -> torch.Tensor:
    """Prompt ``n``'s real token states, fp16."""
    length = int(states.mask[n].sum())
    return states.states[n, :length].to(torch.float16).contiguous()


def _attributes(record: dict) -> dict[str, Any]:
    spec = record.get("spec")
    if spec is None:
        return {}
    return {
        "frames": spec.frames,
        "background": spec.background.name,
        "gradient": spec.background.gradient,
        "objects": [{"colour": o.colour, "shape": o.shape, "motion": o.motion,
                     "size": o.size_word} for o in spec.objects],
    }


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj))


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)


def _atomic_write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)
