"""``cineforge eval shapes|text-use|vae|wording``: does a shapes-world model follow its prompts?

``shapes`` generates one clip per prompt for held-in and held-out (colour, shape, motion)
prompts, and for the held-in prompts' clips phrased in held-out wordings (words and sentence
templates no training caption uses, ``cineforge.data.shapes_grammar``), reads colour, shape
and motion back from the pixels (``cineforge.eval.shapes``) and prints accuracy per attribute
and split, beside the same figures for a random-weight DiT (chance baseline). With
``--first-frame`` (image-to-video presets) each clip starts from its ground-truth first
frame, and the table adds the PSNR of the output's frame 0 against it. ``text-use`` prints
how much the flow loss on held-in clips rises when one attribute of the caption is swapped
(``cineforge.eval.text_use``). ``vae`` reads the same attributes from the preset's VAE
reconstructions of the prompts' ground-truth clips (the ceiling of any DiT on its latents,
``cineforge.eval.reconstruction``), with PSNR and edge energy against the ground truth.
``wording`` asks whether the preset's text encoder carries the held-out words at all (a
probe on its states, ``cineforge.eval.wording``): the ceiling of the held-out-wording
split for any DiT on that encoder.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from cineforge.data.shapes import (
    check_object_scale,
    heldin_prompts,
    heldout_prompts,
    render,
    to_video_tensor,
)
from cineforge.errors import CineforgeError
from cineforge.eval.reconstruction import uint8_psnr
from cineforge.eval.shapes import ShapesScore, score_clips
from cineforge.families.family import Preset, load_components
from cineforge.families.registry import get_preset
from cineforge.io.video import to_uint8_frames
from cineforge.pipelines.common import FlowPipeline, VideoRequest

SPLITS = ("held-in", "held-out", "held-out-wording")


def prompt_specs(split: str, n: int, preset: Preset, layout: str = "free",
                 object_scale: float = 1.0) -> list:
    """``n`` single-object prompt specs of ``split`` (``SPLITS``), cycling through seeds for
    more; 'held-out-wording' rewords the clips of 'held-in'."""
    make = heldout_prompts if split == "held-out" else heldin_prompts
    wording = "heldout" if split == "held-out-wording" else "template"
    specs, seed = [], 0
    while len(specs) < n:
        kwargs = {"height": preset.height, "width": preset.width, "frames": preset.frames,
                  "layout": layout, "wording": wording, "object_scale": object_scale}
        specs += make(seed=seed, **kwargs)
        seed += 1
    return specs[:n]


def generate_clips(pipe: FlowPipeline, specs, request: VideoRequest, batch: int, desc: str,
                   first_frame: bool = False):
    """One clip per spec, from its caption; with ``request.strength < 1`` each starts from the
    spec's own ground-truth clip (video-to-video); with ``first_frame`` from the first frame of
    that clip (image-to-video; one clip per call, as a request holds one image)."""
    if first_frame:
        for i, spec in enumerate(tqdm(specs, desc=desc, unit="clip", leave=False)):
            image = torch.from_numpy(render(spec)[0])
            r = dataclasses.replace(request, seed=request.seed + i, image=image)
            yield to_uint8_frames(pipe(r, prompts=[spec.caption])[0])
        return
    for start in tqdm(range(0, len(specs), batch), desc=desc, unit="batch", leave=False):
        chunk = specs[start : start + batch]
        r = dataclasses.replace(request, seed=request.seed + start)
        init = None
        if request.strength < 1:
            init = torch.stack([to_video_tensor(render(s)) for s in chunk])
        video = pipe(r, prompts=[s.caption for s in chunk], init_video=init)
        yield from (to_uint8_frames(v) for v in video)


def check_arguments(args: argparse.Namespace) -> None:
    """Refused before anything loads: ``-n`` or ``--batch`` below 1, an ``--object-scale``
    the shapes world does not draw."""
    for flag, value in (("-n", args.n), ("--batch", args.batch)):
        if value < 1:
            raise CineforgeError(f"{flag} must be at least 1, got {value}")
    check_object_scale("--object-scale", args.object_scale)


def first_frame_psnr(clip, spec) -> float:
    """PSNR (dB, peak 255) of a generated clip's frame 0 against its spec's ground truth."""
    return uint8_psnr(np.asarray(clip[0]), render(spec)[0])


def run_eval(args: argparse.Namespace) -> list[tuple[str, str, ShapesScore]]:
    check_arguments(args)
    preset = get_preset(args.preset)
    if args.first_frame and not preset.family.pipeline.image_to_video:
        raise CineforgeError(f"--first-frame needs an image-to-video preset; {preset.name} "
                             "takes no image (e.g. use --preset demo-i2v)")
    request = preset.request("-", steps=args.steps, guidance=args.guidance, shift=args.shift,
                             frame_noise_share=args.frame_noise, seed=args.seed,
                             strength=args.strength)
    # from noise the layout is the model's; from a ground-truth clip or frame it is --layout
    layout = args.layout if args.strength < 1 or args.first_frame else "free"
    components = load_components(preset, args.weights)
    models = {preset.name: components}
    if not args.no_baseline:
        torch.manual_seed(args.seed)
        random_dit = preset.family.build("dit", components.dit.config)
        models["random weights"] = dataclasses.replace(
            components, dit=random_dit.eval().requires_grad_(False))
    rows = []
    for name, parts in models.items():
        pipe = preset.family.make_pipeline(parts)
        for split in SPLITS:
            specs = prompt_specs(split, args.n, preset, layout, args.object_scale)
            clips = list(generate_clips(pipe, specs, request, args.batch, f"{name} {split}",
                                        args.first_frame))
            score = score_clips(clips, specs)
            if args.first_frame:
                values = [first_frame_psnr(c, s) for c, s in zip(clips, specs, strict=True)]
                score = dataclasses.replace(score, frame0_psnr=float(np.mean(values)))
            rows.append((name, split, score))
    return rows


def run_vae_eval(args: argparse.Namespace):
    from cineforge.eval.reconstruction import reconstruction_score

    check_arguments(args)
    preset = get_preset(args.preset)
    vae = load_components(preset, args.weights).vae
    rows = []
    for split in SPLITS[:2]:  # a VAE reads no caption: reworded prompts add nothing
        specs = prompt_specs(split, args.n, preset, args.layout, args.object_scale)
        rows.append((split, reconstruction_score(vae, specs, args.batch)))
    return rows


def print_vae_table(rows) -> None:
    print(f"{'clips':<16} {'split':<10} {'n':>5} {'colour':>7} {'shape':>7} {'motion':>7} "
          f"{'all':>7} {'PSNR':>9} {'edge energy':>12}")
    for split, r in rows:
        for name, sc in (("ground-truth", r.truth), ("reconstructed", r.reconstruction)):
            cells = "".join(f"{100 * v:7.1f}%" for v in
                            (sc.colour, sc.shape, sc.motion, sc.all_three))
            extra = "" if sc is r.truth else f" {r.psnr:6.2f} dB {r.edge_energy:12.3f}"
            print(f"{name:<16} {split:<10} {sc.n:>5}{cells}{extra}")


def run_text_use(args: argparse.Namespace):
    from cineforge.eval.text_use import text_use

    check_arguments(args)
    preset = get_preset(args.preset)
    pipe = preset.family.make_pipeline(load_components(preset, args.weights))
    share = preset.sampler.frame_noise_share if args.frame_noise is None else args.frame_noise
    specs = prompt_specs("held-in", args.n, preset, args.layout, args.object_scale)
    return text_use(pipe, specs, seed=args.seed, batch=args.batch, frame_noise_share=share)


def print_text_use(result) -> None:
    print(f"flow-loss increase with one caption attribute swapped ({result.n} held-in clips)")
    print(f"{'t':<12}" + "".join(f"{t:>9.2f}" for t in result.times))
    print(f"{'loss':<12}" + "".join(f"{v:>9.4f}" for v in result.loss))
    for name, values in result.increase.items():
        print(f"{name:<12}" + "".join(f"{100 * v:>8.1f}%" for v in values))
    for motion, values in result.motion_increase.items():  # the motion row, by asked motion
        print(f"{'  ' + motion:<12}" + "".join(f"{100 * v:>8.1f}%" for v in values))


def run_wording(args: argparse.Namespace):
    from cineforge.eval.wording import wording_probe

    preset = get_preset(args.preset)
    return wording_probe(load_components(preset, args.weights).text_encoder)


def print_wording(rows) -> None:
    print("text encoder's states of the held-out words, read by the nearest centroid of the "
          "held-in words' states")
    print(f"{'attribute':<10} {'values':>6} {'words in/out':>13} {'held-in':>8} "
          f"{'held-out':>9} {'chance':>7}")
    for r in rows:
        print(f"{r.attribute:<10} {r.values:>6} {f'{r.heldin_words}/{r.heldout_words}':>13} "
              f"{100 * r.heldin_accuracy:7.1f}% {100 * r.heldout_accuracy:8.1f}% "
              f"{100 * r.chance:6.1f}%")


def print_mistakes(rows, top: int = 4) -> None:
    """Per model, split and attribute, the most frequent wrong readings (asked -> read)."""
    print("most frequent mistakes (asked -> read: clips)")
    for name, split, sc in rows:
        for attribute, counts in sc.mistakes.items():
            if counts:
                worst = ", ".join(f"{a} -> {r}: {c}" for (a, r), c in counts.most_common(top))
                print(f"{name:<16} {split:<16} {attribute:<7} {worst}")


def print_table(rows) -> None:
    psnr = any(sc.frame0_psnr is not None for _, _, sc in rows)
    print(
        f"{'model':<16} {'split':<16} {'n':>5} {'colour':>7} {'shape':>7} {'motion':>7} {'all':>7}"
        + (f" {'frame-0 PSNR':>13}" if psnr else "")
    )
    for name, split, sc in rows:
        values = (sc.colour, sc.shape, sc.motion, sc.all_three)
        cells = "".join(f"{100 * v:7.1f}%" for v in values)
        cells += f" {sc.frame0_psnr:10.2f} dB" if psnr else ""
        print(f"{name:<16} {split:<16} {sc.n:>5}{cells}")
