"""The encode stage: kept, captioned scenes -> latent shards the trainer reads, exactly once.

A worker encodes a claimed batch of scenes (frames sampled at ``fps``, resized and
centre-cropped to the scene's aspect-ratio bucket of about ``pixels`` pixels, ``1 + 4k <=
frames`` frames) into shards (``shards.ShardWriter``: one per bucket) in a private staging
folder ``shard_dir/.staging/<claim token>/``. It then commits, in one transaction, the tasks'
completion, one ``Shard`` row per shard (its final path) and each scene's ``shard_id``; only
after the commit does it move the shards to their final names. A worker killed before the
commit leaves an unpublished staging folder (readers never look there; its tasks are claimed
again); one killed between commit and move leaves registered shards still in staging, which
``publish_pending`` (run before each batch and by ``export``) moves into place.

The encoder is ``preset:NAME`` (the preset's VAE and text encoder, weights from
``EncodeConfig.weights`` or the package) or ``package.module:factory``, a callable returning an
object with ``meta`` (a JSON-able dict), ``encode_video(B,3,T,H,W in [-1,1]) -> latents`` and
``encode_text(list of captions) -> list of (L, D) tensors`` (or ``None``: no text states).
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cineforge.data.curate.catalog import Caption, Scene, Shard
from cineforge.data.curate.scenes import read_scene
from cineforge.data.latents import EMPTY
from cineforge.errors import CineforgeError

STAGING = ".staging"


@dataclass(frozen=True)
class EncodeConfig:
    encoder: str  # "preset:NAME" or "package.module:factory"
    shard_dir: str
    weights: str | None = None  # weights folder for a preset encoder
    pixels: int = 64 * 64  # bucket area
    frames: int = 17  # at most this many frames per item (1 + 4k)
    fps: float = 8.0  # frames sampled per second of scene

    def __post_init__(self):
        if self.frames < 1 or (self.frames - 1) % 4 or self.pixels < 256 or self.fps <= 0:
            raise ValueError("need frames = 1 + 4k, pixels >= 256 and fps > 0")


class PresetEncoder:
    """The VAE (fp32, posterior mean, normalised) and text encoder of a preset."""

    def __init__(self, name: str, weights: str | None) -> None:
        import torch

        from cineforge.families.family import detect_layout, load_model, weights_folder
        from cineforge.families.registry import get_preset

        preset = get_preset(name)
        folder = weights_folder(preset, weights)
        layout = detect_layout(preset, folder)
        self.vae = load_model(preset, folder, "vae", dtype=torch.float32, layout=layout)
        self.text = preset.text.load(preset, folder, layout, torch.float32)[0]
        self.meta = {"encoder": f"preset:{name}", "latent_channels": preset.vae.z_dim,
                     "text_dim": preset.dit.text_dim}

    def encode_video(self, video):
        import torch

        with torch.no_grad():
            return self.vae.encode(video)

    def encode_text(self, captions: list[str]):
        states = self.text.encode(captions)
        return [states.states[i, : int(states.mask[i].sum())] for i in range(len(captions))]


def load_encoder(config: EncodeConfig):
    kind, _, arg = config.encoder.partition(":")
    if kind == "preset" and arg:
        return PresetEncoder(arg, config.weights)
    if not kind or not arg:
        raise CineforgeError(f"encoder {config.encoder!r} must be 'preset:NAME' or "
                             "'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(kind), arg)
    except (ImportError, AttributeError) as exc:
        raise CineforgeError(f"cannot load encoder {config.encoder!r} ({exc})") from None
    return factory()


def bucket_clip(frames: np.ndarray, height: int, width: int, count: int):
    """The first ``count`` frames, resized to cover ``height x width`` and centre-cropped:
    float tensor ``3, count, height, width`` in [-1, 1]."""
    import torch

    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    y, x = (rh - height) // 2, (rw - width) // 2
    out = np.stack([cv2.resize(f, (rw, rh), interpolation=cv2.INTER_AREA)[y : y + height,
                                                                          x : x + width]
                    for f in frames[:count]])
    return torch.from_numpy(out).permute(3, 0, 1, 2).float() / 127.5 - 1.0


@dataclass(frozen=True)
class Prepared:
    scene_id: int
    video: Any  # 3, T, H, W tensor
    caption: str


def prepare(session: Session, scene_id: int, path: str, start: int, end: int, crop,
            config: EncodeConfig) -> Prepared:
    from cineforge.data.curate.shards import fit_bucket

    scene = session.get(Scene, scene_id)
    caption = session.scalars(select(Caption.text).where(Caption.scene_id == scene_id)
                              .order_by(Caption.id)).first() or ""
    step = max(1, round(scene.fps / config.fps))
    frames = read_scene(path, start, min(end, start + step * config.frames), crop, step=step)
    h, w, t = fit_bucket(frames.shape[1], frames.shape[2], len(frames), pixels=config.pixels)
    return Prepared(scene_id, bucket_clip(frames, h, w, t), caption)


def write_staged(encoder, items: list[Prepared], config: EncodeConfig, token: str):
    """Encode ``items`` into shards under the staging folder of ``token``."""
    from cineforge.data.curate.shards import ShardWriter

    root = Path(config.shard_dir)
    empty = None  # the empty prompt's states, for the trainer's caption dropout (CFG)
    if not (root / EMPTY).exists():
        states = encoder.encode_text([""])
        empty = None if states is None else states[0]
    ShardWriter(root, meta=encoder.meta, empty_text=empty)  # writes or checks root/meta.json
    writer = ShardWriter(root / STAGING / token, meta=encoder.meta, name=token,
                         shard_size=len(items) + 1, encode=encoder.encode_video)
    texts = encoder.encode_text([it.caption for it in items])
    for k, it in enumerate(items):
        text = None if texts is None else texts[k]
        writer.add_video(it.video, it.caption, key=it.scene_id, text=text)
    return writer.flush()


def final_path(shard_dir: str, staged: Path) -> Path:
    return Path(shard_dir) / staged.parent.name / staged.name


def register(session: Session, shard_dir: str, infos) -> None:
    """Shard rows (final paths) and the scenes' ``shard_id``, in the completing transaction."""
    for info in infos:
        row = Shard(path=str(final_path(shard_dir, info.path)), bucket=info.bucket,
                    count=info.count)
        session.add(row)
        session.flush()
        for scene_id in info.keys:
            session.get(Scene, scene_id).shard_id = row.id


def publish(shard_dir: str, infos, token: str) -> None:
    for info in infos:
        final = final_path(shard_dir, info.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(info.path, final)
    discard(shard_dir, token)


def discard(shard_dir: str, token: str) -> None:
    shutil.rmtree(Path(shard_dir) / STAGING / token, ignore_errors=True)


def publish_pending(session: Session, shard_dir: str) -> int:
    """Move registered shards still in staging (a worker died after its commit) into place."""
    moved = 0
    for path in session.scalars(select(Shard.path).where(Shard.path.like(f"{shard_dir}%"))):
        final = Path(path)
        if final.exists():
            continue
        token = final.stem.split("-")[1]  # shard-<token>-<n>
        staged = Path(shard_dir) / STAGING / token / final.parent.name / final.name
        if staged.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            moved += 1
    return moved
