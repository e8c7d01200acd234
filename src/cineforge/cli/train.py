"""``cineforge train vae|dit|cache|export|recipe``: a thin shell over ``cineforge.train``.

    cineforge train vae --config configs/demo/vae.yaml [--set optim.lr=3e-4 ...] [--out DIR]
    cineforge train dit --config configs/demo/p2.yaml      (builds the latent cache first)
    cineforge train distill --config configs/demo/flash.yaml  (few-step student, LADD)
    cineforge train cache --config configs/demo/p2.yaml    (only the latent cache)
    cineforge train export --run runs/demo/p2 [--out DIR] [--checkpoint FILE] [--raw]
    cineforge train recipe configs/demo/recipe.yaml [--out-root DIR] [--until STAGE]

A run resumes from the newest checkpoint in its folder by default (``--resume auto``);
``--resume no`` starts afresh (refused if the folder has checkpoints) and ``--resume FILE``
continues from a given checkpoint. ``recipe`` runs a recipe's stages in order, each resumed
the same way (``cineforge.train.recipe``). Only argparse is imported here: torch loads when a
command runs.
"""

from __future__ import annotations

import argparse

from cineforge.errors import CineforgeError

_RUNS = {
    "vae": "train the video VAE on ShapesWorld clips and images",
    "dit": "train the DiT by flow matching on a latent cache (built first if needed)",
    "distill": "distil a DiT into a few-step student (adversarial, LADD) on a latent cache",
    "cache": "build (or complete) the latent cache of a DiT config, then stop",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    for name, summary in _RUNS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument("--config", required=True, help="YAML file (see configs/)")
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, dotted (e.g. optim.lr=3e-4); repeatable",
        )
        sub.add_argument("--out", help="run folder (default: the config's out)")
        if name != "cache":
            sub.add_argument(
                "--resume",
                default="auto",
                metavar="auto|no|FILE",
                help="auto: continue from the run folder's newest checkpoint "
                "(default); no: start afresh; FILE: that checkpoint",
            )
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    export = commands.add_parser("export", help="write a run's EMA weights as fp16 safetensors")
    export.add_argument("--run", dest="run_dir", required=True,
                        help="run folder (holds config.yaml)")
    export.add_argument("--out", help="output folder (default: RUN/export)")
    export.add_argument("--checkpoint", help="checkpoint file (default: the newest)")
    export.add_argument("--raw", action="store_true",
                        help="the optimised weights instead of their EMA (e.g. to start a stage)")
    recipe = commands.add_parser("recipe", help="train a recipe's stages in order (resuming)")
    recipe.add_argument("recipe", help="recipe file (e.g. configs/demo/recipe.yaml)")
    recipe.add_argument("--out-root", metavar="DIR",
                        help="folder for the runs instead of the recipe's root")
    recipe.add_argument("--until", metavar="STAGE", help="stop after this stage")
    recipe.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    from cineforge.train import run
    from cineforge.train.config import TrainConfig, from_tree, read_tree

    if args.train_command == "export":
        print(run.export_run(args.run_dir, args.out, args.checkpoint, raw=args.raw))
        return 0
    if args.train_command == "recipe":
        from cineforge.train.recipe import run_recipe

        for stage, export in run_recipe(args.recipe, out_root=args.out_root, until=args.until,
                                        progress=not args.no_progress):
            print(f"{stage}: {export}")
        return 0
    # a cache serves the DiT runs and the distillations that train on them
    tasks = ("dit", "distill") if args.train_command == "cache" else (args.train_command,)
    tree = read_tree(args.config, args.set)
    if tree.setdefault("task", tasks[0]) not in tasks:
        fix = ("it has no latent cache" if args.train_command == "cache" else
               f"run `cineforge train {tree['task']}` instead")
        raise CineforgeError(f"{args.config} is a {tree['task']!r} config; {fix}")
    if args.out:
        tree["out"] = args.out
    config = from_tree(TrainConfig, tree)
    progress = not args.no_progress
    if args.train_command == "cache":
        cache = run.build_cache(config, progress=progress)
        print(cache.folder)
        return 0
    print(run.train(config, resume=args.resume, progress=progress))
    return 0
