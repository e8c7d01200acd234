"""Latent shards: curated scenes pre-encoded by a VAE, grouped by shape, read by the trainer.

Layout (tensors as in ``cineforge.data.latents``, the single-machine latent cache)::

    folder/meta.json                                 format and what encoded the items
    folder/empty.safetensors                         "text": the empty prompt's states (optional)
    folder/bucket-64x64-f17/shard-w0-00000.safetensors
        "{j}.latent" (C, T_lat, H_lat, W_lat) fp16   "{j}.text" (L_j, D) fp16 (optional)
        header metadata "items": JSON list of entries {key, caption, shape, text_len,
        attributes}, "bucket", "format"

A bucket holds one latent shape, named by the pixel size it decodes to (``W x H``, frames),
so any sub-batch drawn from a bucket stacks. Each shard carries its own index in the
safetensors header and is published by one atomic rename (written to ``*.tmp``, fsynced,
``os.replace``d): a killed worker leaves at most a ``*.tmp`` file, which readers ignore and
the next writer of that name deletes. Writers on many machines share a folder without a
shared index file to corrupt: give each a distinct ``name`` (worker id). ``ShardDataset``
shares ``LatentCache``'s read side (``LatentItems``: ``len``, ``[i] -> CacheItem``, ``shape``,
``caption``, ``attributes``, ``meta``, ``empty_text``; plus ``complete``), so the trainer
reads either.

Items are buffered until a bucket has ``shard_size`` of them: a stage that marks an item done
should do so when ``add``/``flush`` reports the shard holding its key as written.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cineforge.data.latents import EMPTY, LatentItems
from cineforge.errors import CineforgeError

__all__ = ["FORMAT", "ShardDataset", "ShardInfo", "ShardWriter", "bucket_name", "fit_bucket"]

FORMAT = "cineforge-shards/1"
META = "meta.json"
_SHARD = re.compile(r"shard-(?P<name>[A-Za-z0-9_.]+)-(?P<n>\d{5,})\.safetensors")


def bucket_name(latent_shape: tuple[int, ...], *, spatial: int = 8, temporal: int = 4) -> str:
    """``bucket-{W}x{H}-f{T}`` in pixels for a latent ``(C, T_lat, H_lat, W_lat)``."""
    if len(latent_shape) != 4:
        raise CineforgeError(f"latents must be C,T,H,W, got shape {tuple(latent_shape)}")
    _, t, h, w = latent_shape
    return f"bucket-{w * spatial}x{h * spatial}-f{1 + (t - 1) * temporal}"


def fit_bucket(height: int, width: int, frames: int, *, pixels: int = 64 * 64,
               multiple: int = 16, temporal: int = 4) -> tuple[int, int, int]:
    """Target ``(H, W, T)`` of a scene: about ``pixels`` pixels at the scene's aspect ratio,
    sides multiples of ``multiple``, ``T = 1 + 4k <= frames`` (resize + centre-crop to it)."""
    if min(height, width, frames) < 1 or pixels < multiple * multiple:
        raise CineforgeError(f"cannot bucket a {height}x{width}x{frames} scene at {pixels} px")
    scale = math.sqrt(pixels / (height * width))
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    return h, w, 1 + (frames - 1) // temporal * temporal


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: where, which bucket, and the keys of its items (in order)."""

    path: Path
    bucket: str
    keys: tuple[Any, ...]

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass
class _Pending:
    latent: torch.Tensor
    text: torch.Tensor | None
    entry: dict[str, Any]


class ShardWriter:
    """Buffer items per bucket; write a shard when a bucket holds ``shard_size`` items.

    ``meta`` (JSON-able: VAE, text encoder, latent_channels, text_dim, ...) is written to
    ``meta.json`` by the first writer; later writers must pass the same. ``empty_text`` (the
    empty prompt's states, ``L, D``) is stored once for classifier-free-guidance dropout.
    """

    def __init__(self, folder: str | Path, *, meta: dict[str, Any], name: str = "w0",
                 shard_size: int = 64, encode: Callable[[torch.Tensor], torch.Tensor] | None
                 = None, empty_text: torch.Tensor | None = None, spatial: int = 8,
                 temporal: int = 4) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
            raise CineforgeError(f"writer name {name!r} must be letters, digits, '_' or '.'")
        if shard_size < 1:
            raise CineforgeError(f"shard_size must be >= 1, got {shard_size}")
        self.folder, self.name, self.shard_size = Path(folder), name, shard_size
        self.encode, self.spatial, self.temporal = encode, spatial, temporal
        self.folder.mkdir(parents=True, exist_ok=True)
        _open_meta(self.folder, meta)
        if empty_text is not None and not (self.folder / EMPTY).exists():
            _atomic_save({"text": empty_text.to(torch.float16).contiguous()}, self.folder / EMPTY)
        self._pending: dict[str, list[_Pending]] = {}
        self._next: dict[str, int] = {}
        for stale in self.folder.glob(f"bucket-*/shard-{name}-*.tmp"):
            stale.unlink()  # a crashed writer of this name left it

    def add(self, latent: torch.Tensor, caption: str, *, key: Any = None,
            text: torch.Tensor | None = None, attributes: dict[str, Any] | None = None
            ) -> list[ShardInfo]:
        """Buffer one item (latent ``C, T, H, W``); returns the shards this call wrote."""
        bucket = bucket_name(tuple(latent.shape), spatial=self.spatial, temporal=self.temporal)
        if text is not None and text.ndim != 2:
            raise CineforgeError(f"text states must be L,D, got shape {tuple(text.shape)}")
        entry = {"key": key, "caption": caption, "shape": list(latent.shape),
                 "text_len": 0 if text is None else int(text.shape[0]),
                 "attributes": attributes or {}}
        try:  # fail here, not at flush time, on a non-JSON key or attribute
            json.dumps(entry)
        except TypeError as e:
            raise CineforgeError(f"shard item key/attributes must be JSON values ({e})") from None
        items = self._pending.setdefault(bucket, [])
        items.append(_Pending(latent.detach().to("cpu", torch.float16).contiguous(),
                              None if text is None else
                              text.detach().to("cpu", torch.float16).contiguous(), entry))
        if len(items) < self.shard_size:
            return []
        return [self._write(bucket)]

    def add_video(self, video: torch.Tensor, caption: str, **kwargs) -> list[ShardInfo]:
        """Encode ``video`` (``3, T, H, W`` in [-1, 1]) with ``encode`` and ``add`` it."""
        if self.encode is None:
            raise CineforgeError("this ShardWriter has no encode callable; pass encode=vae")
        if video.ndim != 4 or video.shape[0] != 3:
            raise CineforgeError(f"video must be 3,T,H,W, got shape {tuple(video.shape)}")
        with torch.no_grad():
            latent = self.encode(video[None])[0]
        return self.add(latent, caption, **kwargs)

    def flush(self) -> list[ShardInfo]:
        """Write every partly filled bucket (call at the end of a worker's run)."""
        return [self._write(b) for b in sorted(self._pending) if self._pending[b]]

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()

    def _write(self, bucket: str) -> ShardInfo:
        items, self._pending[bucket] = self._pending[bucket], []
        folder = self.folder / bucket
        folder.mkdir(exist_ok=True)
        if bucket not in self._next:
            taken = [int(m["n"]) for p in folder.glob(f"shard-{self.name}-*.safetensors")
                     if (m := _SHARD.fullmatch(p.name)) and m["name"] == self.name]
            self._next[bucket] = max(taken, default=-1) + 1
        path = folder / f"shard-{self.name}-{self._next[bucket]:05d}.safetensors"
        self._next[bucket] += 1
        tensors = {f"{j}.latent": it.latent for j, it in enumerate(items)}
        tensors |= {f"{j}.text": it.text for j, it in enumerate(items) if it.text is not None}
        entries = [it.entry for it in items]
        _atomic_save(tensors, path, {"format": FORMAT, "bucket": bucket,
                                     "items": json.dumps(entries, separators=(",", ":"))})
        return ShardInfo(path, bucket, tuple(e["key"] for e in entries))


class ShardDataset(LatentItems):
    """Read side: every published shard under ``folder`` (``*.tmp`` files are ignored)."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open

        folder = Path(folder)
        if not (folder / META).is_file():
            raise CineforgeError(f"no latent shards in {folder} ({META} missing); run the "
                                 "curation encode stage first")
        index = json.loads((folder / META).read_text())
        if index.get("format") != FORMAT:
            raise CineforgeError(f"{folder / META} is not a {FORMAT} folder; re-encode")
        super().__init__(folder, index, [])
        self.files: list[Path] = []
        self._where: list[tuple[int, int]] = []
        for path in sorted(folder.glob("bucket-*/shard-*.safetensors")):
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CineforgeError(f"{path} is not a {FORMAT} shard; delete it or re-encode")
            items = json.loads(header["items"])
            self._where += [(len(self.files), j) for j in range(len(items))]
            self.entries += items
            self.files.append(path)

    @property
    def items_total(self) -> int:
        return len(self.entries)

    complete = True  # every listed shard is whole by construction

    def key(self, i: int) -> Any:
        return self.entries[i]["key"]

    def _locate(self, i: int) -> tuple[Path, int]:
        shard, j = self._where[i]
        return self.files[shard], j


def _open_meta(folder: Path, meta: dict[str, Any]) -> None:
    want = {"format": FORMAT, "meta": json.loads(json.dumps(meta))}
    path = folder / META
    if not path.is_file():
        tmp = path.with_name(f"{META}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(want, indent=1))
        os.replace(tmp, path)  # racing first writers write the same content
    if json.loads(path.read_text()) != want:
        raise CineforgeError(f"the shards in {folder} were encoded with other settings "
                             f"({path}); use another output folder")


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path,
                 metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name[: -len(".safetensors")] + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
