"""Running a training config to a given step, as the trainer tests do."""

from __future__ import annotations

from cineforge.train.loop import Trainer
from cineforge.train.run import build_task


def run_until(config, stop: int | None = None) -> Trainer:
    """Resume ``config.out`` if it has a checkpoint, then step until ``stop`` (or the end)."""
    trainer = Trainer(config, build_task(config), config.out)
    trainer.resume()
    for _ in trainer.steps():
        if trainer.step == stop:
            break
    return trainer
