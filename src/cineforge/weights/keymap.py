"""Key maps as data, and strict loading.

A key map is an ordered table of ``(regex, template)`` rules. Each source key must match a
rule (the first match wins); its template (``re`` substitution syntax) gives our key, or
``None`` to drop the tensor on purpose. A key that matches no rule is an error, so a
format change upstream is caught instead of silently ignored.

Loading is strict: missing keys, unexpected keys and shape mismatches all raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cineforge.errors import CineforgeError

Transform = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KeyMap:
    """An ordered rule table mapping a source format's keys to ours."""

    name: str
    rules: tuple[tuple[str, str | None], ...]
    transforms: tuple[tuple[str, Transform], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple((re.compile(p), t) for p, t in self.rules))
        object.__setattr__(
            self, "_compiled_tf", tuple((re.compile(p), f) for p, f in self.transforms)
        )

    def target(self, key: str) -> str | None:
        for pattern, template in self._compiled:  # type: ignore[attr-defined]
            if pattern.fullmatch(key):
                return None if template is None else pattern.sub(template, key)
        raise KeyError(key)

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename (and transform) every tensor; raise on keys no rule covers or collisions."""
        out: dict[str, torch.Tensor] = {}
        unmatched = []
        for key, value in state_dict.items():
            try:
                new = self.target(key)
            except KeyError:
                unmatched.append(key)
                continue
            if new is None:
                continue
            if new in out:
                raise CineforgeError(f"{self.name}: two source keys map to {new!r}")
            for pattern, fn in self._compiled_tf:  # type: ignore[attr-defined]
                if pattern.fullmatch(new):
                    value = fn(new, value)
            out[new] = value
        if unmatched:
            raise CineforgeError(
                f"{self.name}: {len(unmatched)} keys match no rule (e.g. {unmatched[:3]}); "
                "the checkpoint is not in the expected format — check the preset and the file"
            )
        return out


def in_modules(key: str, prefixes: Sequence[str]) -> bool:
    """Whether state-dict ``key`` belongs to one of the modules (or parameters) ``prefixes``."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str = "weights",
    may_miss: Sequence[str] = (),
) -> None:
    """Raise a CineforgeError naming missing/unexpected keys and shape mismatches; keys under
    the module prefixes ``may_miss`` (e.g. ``"pos_embedding"``) may be missing."""
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state_dict) if not in_modules(k, may_miss))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {_head(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {_head(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {_head(shapes)})")
    if problems:
        raise CineforgeError(
            f"{what} do not fit the model: "
            + "; ".join(problems)
            + " — the files belong to another model or preset"
        )


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    what: str = "weights",
) -> nn.Module:
    """Check, then load with ``assign=True`` (works for models built on the meta device).

    Floating tensors are cast to ``dtype`` if given, else to the model's own dtype for
    that parameter (so a meta model built in fp32 stays fp32).
    """
    check_state_dict(model, state_dict, what=what)
    expected = model.state_dict()
    cast = {}
    for k, v in state_dict.items():
        target = dtype if dtype is not None and v.is_floating_point() else expected[k].dtype
        cast[k] = v.to(target) if v.is_floating_point() else v
    model.load_state_dict(cast, strict=True, assign=True)
    return model


def _head(items: Iterable[str], n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
