"""A recipe: training stages run in order, each starting from an earlier stage's weights.

    root: runs/demo                 # the stages' run folders (and caches, exports) live here
    stages:                         # in order; a stage is named by its config file's stem
      - {config: vae.yaml, until: 2000}
      - {config: p2.yaml, until: 2000}
      - {config: p2s3.yaml}         # init: {run: runs/demo/p2, step: 2000, weights: ema}

A stage is an ordinary training config (its path relative to the recipe's folder; `cineforge
train dit --config` runs it alone too) whose ``init`` names the run folder of the stage it
starts from (a distillation stage names an earlier stage's export as ``distill.teacher``).
``until`` stops a stage at that step because the next stage starts there: the stage keeps
its own schedule (``steps``, e.g. a cosine over 4000 steps left at 2000), and no
step that nobody uses is trained.

``run_recipe`` trains the stages in order through ``train.run.train``, so running it again
resumes: a finished stage does nothing, an interrupted one continues from its newest
checkpoint. Each stage exports its EMA weights at the step it stops at; the last stage's
export (DiT plus the VAE beside it) is the recipe's product. ``out_root`` moves every path
under ``root`` (``out``, ``init.run``, ``init.file``, ``cache.dir``, ``cache.vae``,
``distill.teacher``) under another folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from cineforge.errors import CineforgeError
from cineforge.train.config import TrainConfig, load_config
from cineforge.train.run import stop_step, train


@dataclass(frozen=True)
class Stage:
    name: str  # the stem of its config file
    config: Path
    until: int | None = None  # stop after this step (None: at the config's steps)


@dataclass(frozen=True)
class Recipe:
    root: str
    stages: tuple[Stage, ...]


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe file (see the module); its stage configs are read by ``stage_configs``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CineforgeError(f"recipe not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CineforgeError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict) or set(tree) != {"root", "stages"}:
        raise CineforgeError(f"{path} must hold exactly root: FOLDER and stages: [...]")
    root, entries = tree["root"], tree["stages"]
    if not isinstance(root, str) or not root:
        raise CineforgeError(f"{path}: root must be the folder the stages' runs live in")
    if not isinstance(entries, list) or not entries:
        raise CineforgeError(f"{path}: stages must be a list of {{config: FILE, until: STEP}}")
    stages = [_stage(entry, i, path) for i, entry in enumerate(entries, 1)]
    names = [s.name for s in stages]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CineforgeError(f"{path}: stage {twice[0]!r} appears twice; each stage is one config")
    return Recipe(root, tuple(stages))


def _stage(entry: Any, index: int, path: Path) -> Stage:
    if not isinstance(entry, dict) or "config" not in entry or set(entry) - {"config", "until"}:
        raise CineforgeError(f"{path}: stage {index} must be {{config: FILE}} with an optional "
                             f"until: STEP, got {entry!r}")
    until = entry.get("until")
    if until is not None and (type(until) is not int or until < 1):
        raise CineforgeError(f"{path}: stage {index}'s until must be a step >= 1, got {until!r}")
    config = path.parent / str(entry["config"])
    return Stage(config.stem, config, until)


def stage_configs(recipe: Recipe, out_root: str | Path | None = None
                  ) -> list[tuple[Stage, TrainConfig]]:
    """Every stage's config, its paths under ``recipe.root`` moved under ``out_root``, checked
    before anything trains: each loads, ``until`` is a step it checkpoints, and an
    ``init.run`` under the root is an earlier stage's run folder at a step it reaches, and an
    ``init.file`` or ``distill.teacher`` under it lies in an earlier stage's export."""
    root = PurePath(out_root if out_root is not None else recipe.root)
    reached: dict[PurePath, int] = {}  # run folder -> the step the recipe stops it at
    out = []
    for stage in recipe.stages:
        config = load_config(stage.config)
        if out_root is not None:
            config = _moved(config, PurePath(recipe.root), root)
        init = config.init
        if init.run and PurePath(init.run).is_relative_to(root):
            have = reached.get(PurePath(init.run))
            if have is None:
                earlier = ", ".join(map(str, reached)) or "none"
                raise CineforgeError(f"stage {stage.name}: init.run {init.run} is no earlier "
                                     f"stage's run folder ({earlier})")
            if (init.step or have) > have:
                raise CineforgeError(f"stage {stage.name}: init.step {init.step} is past step "
                                     f"{have}, where the recipe stops {init.run}")
        teacher = config.distill.teacher if config.task == "distill" else ""
        exports = [run / "export" for run in reached]
        for what, path in (("init.file", init.file), ("distill.teacher", teacher)):
            if path and PurePath(path).is_relative_to(root) and not any(
                    PurePath(path).is_relative_to(export) for export in exports):
                raise CineforgeError(f"stage {stage.name}: {what} {path} is in no earlier "
                                     f"stage's export ({', '.join(map(str, exports))})")
        reached[PurePath(config.out)] = stop_step(config, stage.until)
        out.append((stage, config))
    return out


def _moved(config: TrainConfig, root: PurePath, new_root: PurePath) -> TrainConfig:
    def move(path: str) -> str:
        if not path or not PurePath(path).is_relative_to(root):
            return path
        return str(new_root / PurePath(path).relative_to(root))

    init, cache = config.init, config.cache
    return dataclasses.replace(
        config, out=move(config.out),
        init=dataclasses.replace(init, run=move(init.run), file=move(init.file)),
        cache=dataclasses.replace(cache, dir=move(cache.dir), vae=move(cache.vae)),
        distill=dataclasses.replace(config.distill, teacher=move(config.distill.teacher)))


def run_recipe(path: str | Path, *, out_root: str | Path | None = None,
               until: str | None = None, progress: bool = True) -> Iterator[tuple[str, Path]]:
    """Train the recipe's stages in order (up to and including stage ``until``), yielding
    each stage's name and exported EMA weights as it finishes; the last is the product."""
    stages = stage_configs(load_recipe(path), out_root)
    names = [stage.name for stage, _ in stages]
    if until is not None:
        if until not in names:
            raise CineforgeError(f"{{until}} {until!r} is no stage of {path}; its stages: "
                                 f"{', '.join(names)}", fields=("until",))
        stages = stages[: names.index(until) + 1]
    for stage, config in stages:
        yield stage.name, train(config, progress=progress, until=stage.until)
