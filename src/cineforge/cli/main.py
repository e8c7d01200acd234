"""``cineforge`` command line: a thin shell over the library.

Heavy imports (torch, transformers) happen inside the commands, so ``cineforge --help``
answers at once. A CineforgeError is printed on one line and exits with status 2; a reader
that stops reading (``cineforge presets | head -1``) ends the command quietly with 141, the
status of a command stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cineforge.cli.options import GenerateOptions, add_eval_arguments, add_generate_arguments
from cineforge.errors import CineforgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cineforge", description="Latent video diffusion: generate, train, evaluate."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="text-to-video (or an image with --frames 1)")
    add_generate_arguments(gen)
    gen.set_defaults(run=_generate)

    ev = commands.add_parser("eval", help="evaluate a model (shapes: prompt following)")
    add_eval_arguments(ev)
    ev.set_defaults(run=_eval)

    presets = commands.add_parser("presets", help="list the model presets")
    presets.set_defaults(run=_presets)

    from cineforge.cli.train import add_train_arguments  # argparse only; torch loads on run

    train = commands.add_parser("train", help="train the VAE or the DiT; export weights")
    add_train_arguments(train)
    train.set_defaults(run=_train)

    from cineforge.cli.curate import add_curate_arguments  # argparse only

    curate = commands.add_parser("curate", help="curate videos: ingest, run, status, export")
    add_curate_arguments(curate)
    curate.set_defaults(run=_curate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except CineforgeError as exc:
        print(f"cineforge: error: {exc.renamed(flag)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cineforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for the closed pipe goes nowhere
    instead of failing again when the interpreter flushes it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (captured, replaced)
        pass


# Library fields whose flag is not ``--`` + the field name with dashes.
FLAGS = {"frame_noise_share": "--frame-noise"}


def flag(field: str) -> str:
    """The command-line flag of a library field (``steps`` -> ``--steps``)."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _generate(args: argparse.Namespace) -> int:
    from cineforge.cli.generate import run_generate

    for path in run_generate(GenerateOptions.from_args(args)):
        print(path)
    return 0


def _train(args: argparse.Namespace) -> int:
    from cineforge.cli.train import run_train

    return run_train(args)


def _curate(args: argparse.Namespace) -> int:
    from cineforge.cli.curate import run_curate

    return run_curate(args)


def _eval(args: argparse.Namespace) -> int:
    from cineforge.cli.eval import (
        print_mistakes,
        print_table,
        print_text_use,
        print_vae_table,
        print_wording,
        run_eval,
        run_text_use,
        run_vae_eval,
        run_wording,
    )

    if args.suite == "text-use":
        print_text_use(run_text_use(args))
    elif args.suite == "vae":
        print_vae_table(run_vae_eval(args))
    elif args.suite == "wording":
        print_wording(run_wording(args))
    else:
        rows = run_eval(args)
        print_table(rows)
        if args.mistakes:
            print_mistakes(rows)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from cineforge.families.registry import PRESETS

    rows = [("preset", "family", "size", "frames", "steps", "weights")]
    for p in PRESETS.values():
        source = ("embedded (no download)" if p.embedded
                  else p.hub_repo or "your own folder (--weights)")
        if p.diffusers_repo:
            source += f" or {p.diffusers_repo}"
        rows.append((p.name, p.family.name, f"{p.width}x{p.height}", str(p.frames),
                     str(p.sampler.steps), source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
