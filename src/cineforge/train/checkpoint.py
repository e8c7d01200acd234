"""Checkpoint files: atomic writes, keep-last-K, and the random-number states of a run.

A checkpoint is one ``torch.save`` file ``step-00001000.pt`` holding plain tensors and
Python values only (it loads with ``weights_only=True``). It is written to a temporary file
in the same folder and renamed into place, so a crash leaves either the old set of
checkpoints or the new one, never a half-written file under a checkpoint's name. One spoilt
afterwards (a disk fault, a copy cut short) is set aside on resume, which continues from the
newest checkpoint that still loads (``load_newest_readable``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cineforge.errors import CineforgeError

_NAME = re.compile(r"step-(\d{8})\.pt")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically, then delete all but the
    newest ``keep_last`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    atomic_save(state, path)
    for _, old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path.tmp``, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class UnreadableCheckpoint(CineforgeError):
    """A checkpoint file that exists but does not load (truncated, corrupt, not ours)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot read checkpoint {path} ({reason}); use an older one")


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CineforgeError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError,
            pickle.UnpicklingError) as exc:
        raise UnreadableCheckpoint(path, _first_line(exc)) from None
    if not isinstance(state, dict) or not {"step", "model"} <= state.keys():
        raise UnreadableCheckpoint(path, "not a training checkpoint")
    return state


def load_newest_readable(folder: Path) -> tuple[dict[str, Any], list[UnreadableCheckpoint]]:
    """The state of the newest checkpoint in ``folder`` that loads ({} if it has none), and the
    newer ones that do not, each renamed ``NAME.unreadable``: kept for a look, but no longer
    the run's newest (nor counted by keep-last). Refused when no checkpoint loads."""
    skipped: list[UnreadableCheckpoint] = []
    for _, path in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(path)
        except UnreadableCheckpoint as exc:
            skipped.append(exc)
            continue
        for bad in skipped:
            with contextlib.suppress(OSError):
                bad.path.replace(bad.path.with_name(bad.path.name + ".unreadable"))
        return state, skipped
    if skipped:
        raise CineforgeError(f"no checkpoint in {folder} is readable (the newest, "
                             f"{skipped[0].path.name}: {skipped[0].reason}); move them away to "
                             "start afresh")
    return {}, []


def _first_line(exc: BaseException) -> str:
    """A short one-line reason for ``exc`` (torch's messages run over several lines)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 100 else line[:97] + "..."


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The states of the given generators and of the global torch, Python and NumPy RNGs."""
    np_state = np.random.get_state(legacy=False)
    return {
        "generators": {k: g.get_state() for k, g in generators.items()},
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"]
                                                                .astype(np.int64)),
                                        "pos": np_state["state"]["pos"]}},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np_state["state"]["key"].numpy().astype(np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)


def _tuples(value: Any) -> Any:
    """Python's ``random.setstate`` wants tuples; a round trip may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
