"""LoRA files: parse the key formats users have, map them onto our modules, merge or wrap.

A LoRA changes a linear layer's weight by a low-rank product,
``W' = W + scale * (alpha / rank) * up @ down`` (``alpha`` defaults to the rank), or a
parameter by a full delta, ``W' = W + scale * diff``. Key formats read:

- diffusers / PEFT: ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (optional
  ``<module>.alpha``, ``lora_B.bias`` as a bias delta), module names in the diffusers model's
  own spelling;
- the official release's names (what LightX2V / Lightning Wan LoRAs and ComfyUI use):
  ``diffusion_model.<module>.lora_A.weight`` / ``lora_B.weight`` or ``lora_down`` /
  ``lora_up``, ``.alpha``, and full deltas ``<module>.diff`` (the weight) and
  ``<module>.diff_b`` (the bias), as ComfyUI's ``comfy/lora.py`` applies them;
- kohya / musubi-tuner: ``lora_unet_<module with _ for .>.lora_down.weight`` /
  ``lora_up.weight`` / ``.alpha``, the official names with dots written as underscores.

Module names go through the family's own key maps (one per weights layout): a LoRA file is
read in the first layout under which every one of its keys names a parameter of the model.
A key no layout explains is an error that lists it; nothing is skipped.

Two ways to apply: ``merge`` adds the deltas into the weights (no cost at run time);
unmerged, each low-rank pair runs beside its linear layer in a ``LoraLinear`` wrapper, put
in place from outside the model (full deltas have no low-rank form and are merged either
way).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.weights.keymap import KeyMap

# A file's key prefix -> the weights layout its module names are spelled in (None: any).
PREFIXES = (
    ("base_model.model.", None),
    ("transformer.", "diffusers"),
    ("model.diffusion_model.", "official"),
    ("diffusion_model.", "official"),
    ("lora_unet_", "official"),
)
# What a key holds, after its module name: (suffix regex, role).
_ROLES = re.compile(
    r"(?P<module>.+?)\.(?:"
    r"(?P<down>lora_A|lora_down)(?:\.default)?\.weight"
    r"|(?P<up>lora_B|lora_up)(?:\.default)?\.weight"
    r"|(?P<up_bias>lora_B)(?:\.default)?\.bias"
    r"|(?P<alpha>alpha)|(?P<diff>diff)|(?P<diff_b>diff_b))"
)

@dataclass(frozen=True)
class LowRank:
    """A low-rank change of ``target`` (our ``<module>.weight`` of an nn.Linear):
    ``factor * up @ down``, ``factor = scale * alpha / rank``; ``bias``: a bias delta to add
    with the same factor (PEFT's ``lora_B.bias``), or None."""

    target: str
    down: torch.Tensor  # rank, in
    up: torch.Tensor  # out, rank
    factor: float
    bias: torch.Tensor | None = None

    def delta(self) -> torch.Tensor:
        return self.factor * (self.up.float() @ self.down.float())


@dataclass(frozen=True)
class FullDelta:
    """A full change of parameter ``target``: ``scale * diff``."""

    target: str
    diff: torch.Tensor
    scale: float


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` LoRA file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CineforgeError(f"LoRA file not found: {path}; pass {{lora}} an existing "
                             ".safetensors file", fields=("lora",))
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CineforgeError(f"LoRA file {path} is not a readable .safetensors file ({err}); "
                             "pass {lora} a LoRA in safetensors format", fields=("lora",)) from err


def resolve_lora(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    keymaps: Mapping[str, KeyMap],
    *,
    scale: float = 1.0,
    name: str = "LoRA",
) -> list[LowRank | FullDelta]:
    """The changes a LoRA state dict makes to ``model``, its module names read through
    ``keymaps`` (layout name -> the layout's key map into our names). Raises a CineforgeError
    listing the keys no layout maps onto a parameter of the model, and on shape mismatches."""
    if not state:
        raise CineforgeError(f"{name} holds no tensors; pass {{lora}} a LoRA file",
                             fields=("lora",))
    entries, unknown = _group(state)
    if unknown:
        raise _unmatched(name, unknown, "are not LoRA tensors")
    params = _parameters(model)
    underscored = {k.removesuffix(".weight").replace(".", "_"): k.removesuffix(".weight")
                   for k in params}
    best: list[str] | None = None  # the keys missed under the layout that explains most
    for layout in _layout_order(entries, keymaps):
        targets, missed = {}, []
        for (module, kind), keys in entries.items():
            target = _target(module, kind, keymaps[layout], underscored)
            if target in params:
                targets[(module, kind)] = target
            else:
                missed.extend(keys.values())
        if not missed:
            return _changes(entries, targets, state, params, scale, name)
        if best is None or len(missed) < len(best):
            best = missed
    raise _unmatched(name, best if best is not None else list(state),
                     "name no parameter of this model")


@dataclass(frozen=True)
class LoraFile:
    """A LoRA's tensors, the name its messages use, and the scale to apply it at."""

    name: str
    state: Mapping[str, torch.Tensor]
    scale: float = 1.0


def read_loras(lora: Iterable[str | Path | tuple[str | Path, float]]) -> list[LoraFile]:
    """Read each ``lora`` item: a file path (scale 1) or a ``(path, scale)`` pair."""
    files = []
    for item in [lora] if isinstance(lora, str | Path) else lora:
        path, scale = item if isinstance(item, tuple) and len(item) == 2 else (item, 1.0)
        if not isinstance(path, str | Path):
            raise CineforgeError(f"each {{lora}} item is a path or a (path, scale) pair, got "
                                 f"{item!r}", fields=("lora",))
        if isinstance(scale, bool) or not isinstance(scale, int | float) \
                or not math.isfinite(scale):
            raise CineforgeError(f"{{lora}} scale of {path} must be a finite number, got "
                                 f"{scale!r}", fields=("lora",))
        files.append(LoraFile(f"LoRA {path}", read_lora(path), float(scale)))
    return files


def apply_loras(
    model: nn.Module,
    loras: Iterable[LoraFile],
    keymaps: Mapping[str, KeyMap],
    *,
    merge: bool = True,
) -> nn.Module:
    """Apply each LoRA in turn to ``model`` (they stack): merged into the weights, or
    (``merge=False``) as ``LoraLinear`` wrappers. Returns ``model``."""
    for lora in loras:
        changes = resolve_lora(lora.state, model, keymaps, scale=lora.scale, name=lora.name)
        if merge:
            merge_changes(model, changes)
        else:
            attach_changes(model, changes)
    return model


def merge_changes(model: nn.Module, changes: Sequence[LowRank | FullDelta]) -> None:
    """Add every change into the model's parameters (computed in fp32, stored in their dtype)."""
    params = _parameters(model)
    with torch.no_grad():
        for c in changes:
            if isinstance(c, LowRank):
                _add(params[c.target], c.delta())
                if c.bias is not None:
                    _add(params[_bias_of(c.target)], c.factor * c.bias.float())
            else:
                _add(params[c.target], c.scale * c.diff.float())


def attach_changes(model: nn.Module, changes: Sequence[LowRank | FullDelta]) -> None:
    """Wrap each low-rank change's linear layer in a ``LoraLinear`` (one wrapper per layer,
    several paths stack); full deltas are merged."""
    merge_changes(model, [c for c in changes if isinstance(c, FullDelta)])
    for c in changes:
        if isinstance(c, LowRank):
            module_name = c.target.removesuffix(".weight")
            parent_name, _, child = module_name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = getattr(parent, child)
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                setattr(parent, child, layer)
            layer.add(c)


class LoraLinear(nn.Module):
    """An nn.Linear plus low-rank paths: ``base(x) + sum factor * up(down(x)) (+ bias)``.

    Parameter names change (``q.weight`` -> ``q.base.weight``), so this is for running, not
    for saving in a release layout."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.paths: list[tuple[str, str, str | None, float]] = []

    def add(self, change: LowRank) -> None:
        i = len(self.paths)
        weight = self.base.weight
        self.register_buffer(f"down_{i}", change.down.to(weight.device, weight.dtype))
        self.register_buffer(f"up_{i}", change.up.to(weight.device, weight.dtype))
        bias = None
        if change.bias is not None:
            bias = f"bias_{i}"
            self.register_buffer(bias, change.bias.to(weight.device, weight.dtype))
        self.paths.append((f"down_{i}", f"up_{i}", bias, change.factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for down, up, bias, factor in self.paths:
            b = None if bias is None else getattr(self, bias)
            y = y + factor * F.linear(F.linear(x, getattr(self, down)), getattr(self, up), b)
        return y


# ----------------------------------------------------------------------------- internals


def _group(state: Mapping[str, torch.Tensor]):
    """Keys grouped by (module name as written, what it changes: "weight" or "bias") ->
    {role: key}; plus the keys that are no LoRA tensor."""
    entries: dict[tuple[str, str], dict[str, str]] = {}
    unknown = []
    for key in state:
        m = _ROLES.fullmatch(key)
        if m is None:
            unknown.append(key)
            continue
        role = next(r for r in ("down", "up", "up_bias", "alpha", "diff", "diff_b") if m[r])
        kind = "bias" if role == "diff_b" else "weight"
        entries.setdefault((m["module"], kind), {})[role] = key
    return entries, unknown


def _layout_order(entries, keymaps: Mapping[str, KeyMap]) -> list[str]:
    """The keymaps' layouts, those the file's prefixes name first."""
    hinted = []
    for module, _ in entries:
        for prefix, layout in PREFIXES:
            if module.startswith(prefix) and layout in keymaps and layout not in hinted:
                hinted.append(layout)
    return hinted + [k for k in keymaps if k not in hinted]


def _target(module: str, kind: str, keymap: KeyMap, underscored: Mapping[str, str]) -> str | None:
    """Our parameter name for ``module``'s ``kind`` under ``keymap`` (None: no rule)."""
    for prefix, _ in PREFIXES:
        if module.startswith(prefix):
            module = module[len(prefix):]
            if prefix == "lora_unet_":
                module = underscored.get(module, module)
            break
    try:
        return keymap.target(f"{module}.{kind}")
    except KeyError:
        return None


def _changes(entries, targets, state, params, scale, name) -> list[LowRank | FullDelta]:
    out: list[LowRank | FullDelta] = []
    for (module, kind), roles in entries.items():
        target = targets[(module, kind)]
        shape = tuple(params[target].shape)
        for role in ("diff", "diff_b"):
            if role in roles:
                diff = state[roles[role]]
                _check(tuple(diff.shape) == shape, name, roles[role], diff.shape, shape)
                out.append(FullDelta(target, diff, scale))
        if "down" in roles or "up" in roles:
            out.append(_low_rank(roles, state, target, shape, scale, name))
        elif {"alpha", "up_bias"} & set(roles):
            raise _unmatched(name, [roles[r] for r in ("alpha", "up_bias") if r in roles],
                             "have no lora_A/lora_B pair")
    return out


def _low_rank(roles, state, target, shape, scale, name) -> LowRank:
    missing = [r for r in ("down", "up") if r not in roles]
    if missing:
        raise CineforgeError(f"{name}: {next(iter(roles.values()))} has no "
                             f"{'lora_A/lora_down' if 'down' in missing else 'lora_B/lora_up'} "
                             "partner; the file is incomplete — re-export it")
    down, up = state[roles["down"]], state[roles["up"]]
    if len(shape) != 2 or down.dim() != 2 or up.dim() != 2:
        raise CineforgeError(f"{name}: {roles['down']} changes {target}, which is not a linear "
                             "layer's weight; only linear layers take low-rank LoRA pairs")
    rank = down.shape[0]
    _check(up.shape[1] == rank and (up.shape[0], down.shape[1]) == shape, name,
           roles["up"], (tuple(up.shape), tuple(down.shape)), shape)
    alpha = float(state[roles["alpha"]]) if "alpha" in roles else float(rank)
    if not math.isfinite(alpha):
        raise CineforgeError(f"{name}: {roles['alpha']} is not a finite number; the file is "
                             "damaged — re-export it")
    bias = state[roles["up_bias"]] if "up_bias" in roles else None
    if bias is not None:
        _check(tuple(bias.shape) == shape[:1], name, roles["up_bias"], bias.shape, shape[:1])
    return LowRank(target, down, up, scale * alpha / rank, bias)


def _check(ok: bool, name: str, key: str, got, expected) -> None:
    if not ok:
        raise CineforgeError(f"{name}: {key} has shape {tuple(got)}, the model needs "
                             f"{tuple(expected)}; the LoRA was made for another model size")


def _unmatched(name: str, keys: Sequence[str], why: str) -> CineforgeError:
    keys = sorted(keys)
    head = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    return CineforgeError(f"{name}: {len(keys)} keys {why} ({head}); the LoRA was made for "
                          "another model or in a format not read here")


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters by the names they have without ``LoraLinear`` wrappers."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    out = {}
    for key, param in model.named_parameters():
        for name in wrapped:
            if key.startswith(f"{name}.base."):
                key = f"{name}.{key[len(name) + 6:]}"
                break
        out[key] = param
    return out


def _bias_of(weight_name: str) -> str:
    return weight_name.removesuffix(".weight") + ".bias"


def _add(param: torch.Tensor, delta: torch.Tensor) -> None:
    param.copy_((param.float() + delta.to(param.device)).to(param.dtype))
