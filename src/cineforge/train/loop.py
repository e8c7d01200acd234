"""The generic training loop over a ``Task`` (objective + data + validation + export).

``Trainer.steps()`` is a generator: each ``next`` runs one optimisation step and yields its
``StepRecord``; it also writes the run's JSONL log, validates and saves checkpoints on
schedule. ``Trainer.run()`` drives it to the end (or to a given step) behind a tqdm bar
and exports the EMA weights. Resume is exact: a checkpoint holds the model, the EMA
weights, the optimiser and LR-scheduler states, the step, every random-number state and the
task's data position, so N steps in one go and N/2 + resume + N/2 give bitwise identical
weights.

Run folder::

    config.yaml        the resolved configuration
    log.jsonl          {"kind": "train", ...} every log_every steps, {"kind": "val", ...}
    checkpoints/       step-00001000.pt (the newest keep_last)
    export/            fp16 EMA weights in cineforge layout, written at the end
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_newest_readable,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cineforge.train.config import InitSpec, TrainConfig, config_to_tree
from cineforge.train.optim import (
    EMA,
    apply_activation_checkpointing,
    build_optimizer,
    build_scheduler,
    grad_norm_,
    weight_norm,
)
from cineforge.weights.keymap import check_state_dict, in_modules


@dataclass
class StepLoss:
    """What a task's loss returns: the scalar to minimise, logged parts, work done."""

    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    work: int = 0  # tokens (DiT) or pixels (VAE) in the step


class Task(Protocol):
    """An objective with its data stream. The trainer owns optimisation and bookkeeping."""

    name: str  # "vae" or "dit": checked on resume
    work_unit: str  # "tokens" or "pixels": names the throughput in the log
    model: nn.Module

    def next_batch(self, generator: torch.Generator) -> Any: ...

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> StepLoss: ...

    def validate(self, model: nn.Module) -> dict[str, float]: ...

    def data_state(self) -> dict[str, Any]: ...

    def load_data_state(self, state: dict[str, Any]) -> None: ...

    def export(self, model: nn.Module, folder: Path) -> list[Path]: ...


@dataclass
class StepRecord:
    step: int  # steps completed
    loss: float
    parts: dict[str, float]
    lr: float
    grad_norm: float
    step_time: float
    work: int
    validation: dict[str, float] | None = None


def _device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
        raise CineforgeError(f"unknown device {name!r}; use e.g. cpu or cuda") from None


def _run_checkpoint(spec: InitSpec) -> Path:
    """The checkpoint of run folder ``spec.run`` at ``spec.step`` (default: the newest)."""
    run = Path(spec.run)
    if not run.is_dir():
        raise CineforgeError(f"init.run {run} is not a folder; train that run first or fix "
                             "the path")
    found = dict(list_checkpoints(run / "checkpoints"))
    if not found:
        raise CineforgeError(f"init.run {run} has no checkpoints; train that run first")
    step = spec.step or max(found)
    if step not in found:
        raise CineforgeError(f"init.run {run} has no checkpoint at step {step} (it has steps "
                             f"{', '.join(map(str, found))}); set init.step to one of them")
    return found[step]


class Trainer:
    """Optimise ``task.model`` for ``config.steps`` steps, writing into ``run_dir``."""

    def __init__(self, config: TrainConfig, task: Task, run_dir: str | Path) -> None:
        self.config, self.task, self.run_dir = config, task, Path(run_dir)
        self.model = task.model.to(_device(config.device))
        self.ema = EMA(self.model, config.optim.ema_decay)
        if config.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.steps)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state({"trainer": self.generator}),
            "data": self.task.data_state(),
            "config": config_to_tree(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["task"] != self.task.name:
            raise CineforgeError(f"that checkpoint is from a {state['task']} run, not a "
                                 f"{self.task.name} run; pick the right --out or checkpoint")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], {"trainer": self.generator})
        self.task.load_data_state(state["data"])
        self.step = state["step"]

    def resume(self, path: str | Path | None = None) -> int | None:
        """Load ``path`` or else the newest readable checkpoint of the run folder, if any; drop
        log records written after it (all of them if there is none). Returns the step resumed
        from, or None. Newer checkpoints that do not load are set aside (renamed
        ``NAME.unreadable``) and named in one line on stderr."""
        if path is not None:
            state = load_checkpoint(Path(path))
        else:
            state, skipped = load_newest_readable(self.checkpoint_dir)
            if skipped:
                names = ", ".join(s.path.name for s in skipped)
                verb = "is" if len(skipped) == 1 else "are"
                print(f"cineforge: checkpoint {names} {verb} unreadable ({skipped[0].reason}); "
                      f"resuming from step {state['step']} (set aside as NAME.unreadable)",
                      file=sys.stderr)
        if state:
            self.load_state_dict(state)
        self._truncate_log(self.step)
        return self.step if state else None

    def initialise(self, init: InitSpec | str | Path) -> None:
        """Start from the weights ``init`` names (``config.init``, or a file: a training
        checkpoint or a ``.safetensors`` state dict such as an exported ``dit.safetensors``);
        the optimiser, schedule, EMA warm-up and data stream start afresh. Keys and shapes must
        match, except that modules named in ``config.init_fresh`` (added to the model since, or
        to be re-initialised, e.g. at another size) keep their fresh initialisation: whatever
        the weights hold under those names is not read (nor, for a module the model no longer
        has, refused). A model with ``adapt_init_weights(weights) -> weights`` converts the
        weights of an earlier design of itself first (the demo DiT fits its position field to
        a position table)."""
        spec = init if isinstance(init, InitSpec) else InitSpec(file=str(init))
        path = _run_checkpoint(spec) if spec.run else Path(spec.file)
        what = f"init weights {path}"
        if path.suffix == ".safetensors":
            if not path.is_file():
                raise CineforgeError(f"init weights not found: {path}")
            from safetensors.torch import load_file

            weights = load_file(path)
        else:
            state = load_checkpoint(path)
            if state.get("task") != self.task.name:
                raise CineforgeError(f"init checkpoint {path} is from a {state.get('task')} run, "
                                     f"not a {self.task.name} run")
            weights = state["ema"]["model"] if spec.weights == "ema" else state["model"]
            what += f" ({spec.weights})"
        adapt = getattr(self.model, "adapt_init_weights", None)  # an earlier design's weights
        if adapt is not None:
            weights = adapt(weights)
        fresh = self.config.init_fresh
        weights = {k: v for k, v in weights.items() if not in_modules(k, fresh)}
        check_state_dict(self.model, weights, what=what, may_miss=fresh)
        own = self.model.state_dict()  # loaded in place: the optimiser holds these parameters
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()},
                                   strict=not fresh)
        self.ema = EMA(self.model, self.config.optim.ema_decay)

    def save(self) -> Path:
        return save_checkpoint(self.checkpoint_dir, self.step, self.state_dict(),
                               self.config.keep_last)

    # ------------------------------------------------------------------ loop

    def train_step(self) -> StepRecord:
        start = time.perf_counter()
        self.model.train()
        batch = self.task.next_batch(self.generator)
        out = self.task.loss(self.model, batch, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        norm = grad_norm_(self.model, self.config.optim.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return StepRecord(self.step, out.loss.item(), out.parts, lr, norm,
                          time.perf_counter() - start, out.work)

    def validate(self) -> dict[str, float]:
        with torch.no_grad():
            return self.task.validate(self.ema.model)

    def steps(self) -> Iterator[StepRecord]:
        """Run the remaining steps, yielding each one's record."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        window: list[StepRecord] = []
        while self.step < c.steps:
            record = self.train_step()
            window.append(record)
            last = self.step == c.steps
            if self.step % c.log_every == 0 or last:
                self._log(self._summary(window))
                window = []
            if (c.validate_every and self.step % c.validate_every == 0) or last:
                record.validation = self.validate()
                self._log({"kind": "val", "step": self.step, **record.validation})
            if self.step % c.checkpoint_every == 0 or last:
                self.save()
            yield record

    def run(self, *, progress: bool = True, until: int | None = None) -> Path:
        """Train to step ``until`` (default: the end, ``config.steps``; the schedule is the
        same either way) and export the EMA weights to ``run_dir/export``."""
        from tqdm import tqdm

        stop = self.config.steps if until is None else until
        unit = f"{self.task.work_unit}/s"
        with tqdm(total=stop, initial=min(self.step, stop), disable=not progress,
                  desc=f"train {self.task.name}", dynamic_ncols=True) as bar:
            for record in islice(self.steps(), max(stop - self.step, 0)):
                bar.update(1)
                bar.set_postfix(loss=f"{record.loss:.4f}",
                                **{unit: f"{record.work / record.step_time:.0f}"})
        return self.export(self.run_dir / "export")

    def export(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            self.task.export(self.ema.model, folder)
        return folder

    # ------------------------------------------------------------------ log

    def _summary(self, window: list[StepRecord]) -> dict[str, Any]:
        n = len(window)
        seconds = sum(r.step_time for r in window)
        # each part over the steps that report it (a task may report some parts only on
        # some steps, e.g. image-to-video sub-batches)
        parts: dict[str, float] = {}
        for key in dict.fromkeys(k for r in window for k in r.parts):
            values = [r.parts[key] for r in window if key in r.parts]
            parts[key] = sum(values) / len(values)
        return {
            "kind": "train", "step": self.step,
            "loss": sum(r.loss for r in window) / n, **parts,
            "lr": window[-1].lr, "grad_norm": window[-1].grad_norm,
            "weight_norm": weight_norm(self.model),
            "step_time": seconds / n,
            f"{self.task.work_unit}_per_s": sum(r.work for r in window) / seconds,
        }

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Keep the log's records up to ``step``; drop the rest and any line that is not a
        whole record (cut short when a run was killed while writing it)."""
        if not self.log_path.is_file():
            return
        kept = [line for line in self.log_path.read_text(errors="replace").splitlines()
                if (record := _record(line)) is not None and record["step"] <= step]
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.log_path)


def _record(line: str) -> dict[str, Any] | None:
    """The log record on ``line``, or None if it is not a whole one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None
