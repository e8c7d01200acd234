"""Reading weight files: single or sharded safetensors, and torch ``.pth`` state dicts; the
model-config JSON that cineforge exports carry beside their weights.

Every missing file is reported with the path that was expected and, when known, where to
download it from, so the fix is in the message.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cineforge.errors import CineforgeError


def missing_file(path: Path, hub_repo: str | None) -> CineforgeError:
    where = f" (download it from https://huggingface.co/{hub_repo})" if hub_repo else ""
    return CineforgeError(f"weights file not found: {path}{where}")


def read_safetensors(
    folder: Path, stem: str, *, hub_repo: str | None = None
) -> dict[str, torch.Tensor]:
    """Read ``folder/stem.safetensors`` or its shards listed in ``stem.safetensors.index.json``."""
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if not index.is_file():
        raise missing_file(single, hub_repo)
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CineforgeError(f"corrupt shard index {index}: {exc}; download it again") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            raise missing_file(path, hub_repo)
        state.update(_load_safetensors(path))
    absent = sorted(set(weight_map) - set(state))
    if absent:
        raise CineforgeError(
            f"{index} lists {len(absent)} tensors the shards lack (e.g. {absent[0]}); "
            "download the shards again"
        )
    return state


def read_torch(path: Path, *, hub_repo: str | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict safely (``weights_only``), memory-mapped where possible."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, hub_repo)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise CineforgeError(f"cannot read {path} ({exc}); download it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CineforgeError(f"{path} holds no state dict; is it the right file?")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise CineforgeError(f"cannot read {path} ({exc}); download it again") from None


def write_model_config(config: Any, path: Path) -> Path:
    values = {"type": type(config).__name__, **dataclasses.asdict(config)}
    path.write_text(json.dumps(values, indent=1) + "\n")
    return path


def read_model_config(cls: type, path: Path) -> Any:
    """A model config written by ``write_model_config`` (JSON lists become tuples)."""
    if not path.is_file():
        raise CineforgeError(f"{path} not found: export the run first (cineforge train export)")
    try:
        values = json.loads(path.read_text())
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise CineforgeError(f"{path} is not a readable JSON model config ({exc}); export the "
                             "run again (cineforge train export) or restore the file") from None
    if not isinstance(values, dict):
        raise CineforgeError(f"{path} holds a JSON {type(values).__name__}, not a model config "
                             "object; export the run again (cineforge train export)")
    kind = values.pop("type", cls.__name__)
    if kind != cls.__name__:
        raise CineforgeError(f"{path} holds a {kind}, not a {cls.__name__}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise CineforgeError(f"{path} is not a valid {cls.__name__}: {exc}") from None
