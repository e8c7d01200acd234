"""``cineforge curate ingest|run|status|explain|export``: the curation catalog from the
command line. ``status`` shows per metric the distribution of scores and how many scenes each
threshold removed; ``explain SCENE`` prints one scene's record; ``export --contact-sheet DIR``
writes one image per kept and rejected scene.

The catalog is a SQLite file (``--db curate.db``, the default) or a PostgreSQL URL
(``--db postgresql://user@host/db``) that any number of machines share. Library imports
happen inside the actions so ``cineforge --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cineforge.errors import CineforgeError

DEFAULT_STAGES = "split,dedup,filters"


def add_curate_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default="curate.db",
                    help="catalog: a SQLite file (default curate.db) or postgresql://user@host/db")

    ingest = actions.add_parser("ingest", parents=[db], help="register and probe video files")
    ingest.add_argument("paths", nargs="+", type=Path, help="video files or folders")

    run = actions.add_parser("run", parents=[db],
                             help="split, dedup, filter (caption, encode)")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    run.add_argument("--stages", default=None,
                     help=f"comma-separated (default {DEFAULT_STAGES}, plus caption with "
                          "--captioner and encode with --encoder)")
    run.add_argument("--captioner", help="shapes | manual:FILE.csv|jsonl | vlm:MODEL")
    run.add_argument("--filter", action="append", default=[], dest="plugins",
                     metavar="MODULE:NAME", help="extra filter (aesthetic, watermark, ...)")
    run.add_argument("--encoder", help="encode stage: preset:NAME or package.module:factory")
    run.add_argument("--weights", type=Path, help="weights folder of a preset encoder")
    run.add_argument("--shards", type=Path, default=Path("shards"),
                     help="folder of the latent shards (encode stage)")
    run.add_argument("--bucket-pixels", type=int, default=64 * 64,
                     help="pixels per frame of an encoded item (aspect ratio kept)")
    run.add_argument("--clip-frames", type=int, default=17,
                     help="frames per encoded item, 1 + 4k")
    run.add_argument("--clip-fps", type=float, default=8.0, help="frame rate of encoded items")
    run.add_argument("--transcode-dir", type=Path,
                     help="write scenes above 1080p or 30 fps here, scaled down")
    run.add_argument("--min-scene", type=float, default=2.0, help="shortest scene, seconds")
    run.add_argument("--max-scene", type=float, default=60.0,
                     help="longer scenes are cut into pieces, seconds")
    run.add_argument("--thresholds", type=Path,
                     help="filter thresholds file (default: the shipped thresholds.yaml)")
    run.add_argument("--duplicate-distance", type=int, default=14,
                     help="Hamming bits (of 64, at most 15) within which two frame hashes match")
    run.add_argument("--duplicate-matches", type=int, default=3,
                     help="matching frames (of 5) that make a scene a duplicate")
    run.add_argument("--batch", type=int, default=4, help="tasks claimed at once")
    run.add_argument("--lease", type=float, default=30.0,
                     help="seconds before a dead worker's tasks go to others (a working "
                          "worker renews its lease every lease/5 s)")

    actions.add_parser("status", parents=[db],
                       help="counts per stage, reject reasons, score distributions")
    explain = actions.add_parser("explain", parents=[db], help="print one scene's record")
    explain.add_argument("scene", type=int, help="scene id (see export or status)")

    export = actions.add_parser("export", parents=[db], help="write the kept scenes as JSONL")
    export.add_argument("--out", "-o", type=Path, default=Path("scenes.jsonl"))
    export.add_argument("--after", default="filters",
                        help="keep scenes that passed this stage (default filters)")
    export.add_argument("--contact-sheet", type=Path, metavar="DIR",
                        help="also write one image per scene, kept and rejected, to DIR")


def run_curate(args: argparse.Namespace) -> int:
    return {"ingest": _ingest, "run": _run, "status": _status, "explain": _explain,
            "export": _export}[args.action](args)


def _ingest(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from cineforge.data.curate.catalog import open_catalog
    from cineforge.data.curate.ingest import ingest

    engine = open_catalog(args.db)
    report = ingest(engine, args.paths, progress=lambda files: tqdm(files, desc="probe",
                                                                    unit="file"))
    print(f"added {report.added}, rejected {report.rejected} (unreadable), "
          f"already known {report.already_known}")
    return 0


def run_settings(args: argparse.Namespace):
    """``(CurateConfig, WorkOptions)`` of ``curate run``, checked before workers start."""
    from cineforge.data.curate.encode import EncodeConfig
    from cineforge.data.curate.filters import load_filter
    from cineforge.data.curate.runner import WorkOptions
    from cineforge.data.curate.scenes import SplitConfig
    from cineforge.data.curate.stages import CurateConfig

    stages = args.stages or DEFAULT_STAGES + (",caption" if args.captioner else "") + (
        ",encode" if args.encoder else "")
    try:
        encode = EncodeConfig(
            encoder=args.encoder, shard_dir=str(args.shards.resolve()),
            weights=str(args.weights) if args.weights else None, pixels=args.bucket_pixels,
            frames=args.clip_frames, fps=args.clip_fps) if args.encoder else None
        config = CurateConfig(
            split=SplitConfig(min_scene_s=args.min_scene, max_scene_s=args.max_scene),
            plugins=tuple(args.plugins), captioner=args.captioner, encode=encode,
            thresholds=str(args.thresholds) if args.thresholds else None,
            duplicate_distance=args.duplicate_distance,
            duplicate_matches=args.duplicate_matches,
            transcode_dir=str(args.transcode_dir) if args.transcode_dir else None)
        options = WorkOptions(stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
                              batch=args.batch, lease_s=args.lease)
    except CineforgeError:
        raise
    except ValueError as exc:
        raise CineforgeError(f"{exc}; check the numbers given to `curate run`") from None
    if "encode" in options.stages and encode is None:
        raise CineforgeError("the encode stage needs --encoder preset:NAME (and --weights DIR)")
    if "caption" in options.stages:
        from cineforge.data.curate.captions import get_captioner

        get_captioner(args.captioner or "")  # fail now, not in every worker
    for spec in config.plugins:
        load_filter(spec)
    if config.thresholds:
        from cineforge.data.curate.filters import default_filters

        default_filters(config.thresholds)  # a bad file fails here, not in every worker
    return config, options


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from cineforge.data.curate.runner import run

    config, options = run_settings(args)
    if args.transcode_dir:
        args.transcode_dir.mkdir(parents=True, exist_ok=True)
    bars = {s: tqdm(desc=s, unit="item", total=0) for s in options.stages}

    def progress(counts: dict[str, dict[str, int]]) -> None:
        for stage, bar in bars.items():
            c = counts.get(stage, {})
            bar.total, bar.n = sum(c.values()), c.get("done", 0) + c.get("failed", 0)
            bar.refresh()

    try:
        run(args.db, config, options, workers=args.workers, progress=progress,
            say=lambda message: tqdm.write(message, file=sys.stderr))
    finally:
        for bar in bars.values():
            bar.close()
    return _status(args)


def _status(args: argparse.Namespace) -> int:
    from cineforge.data.curate.catalog import (
        QUANTILES,
        STAGES,
        metric_stats,
        open_catalog,
        session_factory,
        summary,
    )

    with session_factory(open_catalog(args.db, create=False))() as session:
        s, stats = summary(session), metric_stats(session)
    out = sys.stdout
    total = sum(s.sources.values())
    out.write(f"sources  {total}: " + ", ".join(f"{n} {k}" for k, n in sorted(s.sources.items()))
              + "\n")
    for reason, n in sorted(s.source_reasons.items()):
        out.write(f"  rejected {reason:<20} {n}\n")
    out.write(f"{'stage':<9}{'pending':>9}{'claimed':>9}{'done':>9}{'failed':>9}\n")
    for stage in STAGES:
        c = s.tasks.get(stage, {})
        cells = "".join(f"{c.get(k, 0):>9}" for k in ("pending", "claimed", "done", "failed"))
        out.write(f"{stage:<9}{cells}\n")
    total = sum(s.scenes.values())
    out.write(f"scenes   {total}: " + ", ".join(f"{n} {k}" for k, n in sorted(s.scenes.items()))
              + "\n")
    for (stage, reason), n in sorted(s.rejects.items(), key=lambda kv: (
            STAGES.index(kv[0][0]) if kv[0][0] in STAGES else 99, kv[0][1] or "")):
        out.write(f"  rejected at {stage:<8} {reason or '?':<14} {n}\n")
    if stats:
        out.write(f"{'metric':<19}{'stage':<8}{'n':>6}" + "".join(
            f"{f'p{round(q * 100)}':>9}" for q in QUANTILES) + "   removed\n")
    for m in stats:
        removed = ", ".join(f"{n} by {op} {_num(t)}" for (op, t), n in sorted(
            m.cuts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or 0))) or "-"
        out.write(f"{m.name:<19}{m.stage:<8}{m.count:>6}"
                  + "".join(f"{_num(v):>9}" for v in m.quantiles) + f"   {removed}\n")
    return 0


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.4g}"


def _explain(args: argparse.Namespace) -> int:
    from cineforge.data.curate.catalog import open_catalog, scene_record, session_factory

    with session_factory(open_catalog(args.db, create=False))() as session:
        record = scene_record(session, args.scene)
    if record is None:
        raise CineforgeError(f"no scene {args.scene} in {args.db}; `cineforge curate export` "
                             "lists the kept scenes' ids")
    r = record["rejected"]
    if r is None:
        verdict = "kept" if record["status"] == "active" else record["status"]
    elif r["metric"] is None:
        verdict = f"rejected at {r['stage']}: {r['reason']}"
    else:
        verdict = (f"rejected at {r['stage']}: {r['reason']} ({r['metric']} = {_num(r['value'])}"
                   f", needs {r['op']} {_num(r['threshold'])})")
    print(f"scene {record['scene_id']}: {verdict}")
    print(json.dumps(record, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from cineforge.data.curate.catalog import STAGES, export_rows, open_catalog, session_factory

    if args.after not in STAGES:
        raise CineforgeError(f"unknown stage {args.after!r} for --after; use one of "
                             f"{', '.join(STAGES)}")
    engine = open_catalog(args.db, create=False)
    with session_factory(engine)() as session:
        rows = export_rows(session, args.after)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} scenes -> {args.out}")
    if args.contact_sheet:
        from cineforge.data.curate.sheets import write_contact_sheets

        counts = write_contact_sheets(engine, args.contact_sheet, {r["scene_id"] for r in rows})
        print(f"contact sheets: {counts['kept']} kept, {counts['rejected']} rejected, "
              f"{counts['unreadable']} unreadable -> {args.contact_sheet}")
    return 0
