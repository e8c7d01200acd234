"""Entry points over the trainer: train a config (resuming), build the DiT's latent cache,
export a run's EMA weights. The CLI (``cineforge train ...``) is a thin shell over these."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cineforge.data.curate.shards import ShardDataset
from cineforge.data.latents import INDEX, LatentCache, LatentItems, build_latent_cache
from cineforge.errors import CineforgeError
from cineforge.train.checkpoint import latest_checkpoint, load_checkpoint
from cineforge.train.config import TrainConfig, config_to_tree, load_config
from cineforge.train.data import shapes_world
from cineforge.train.loop import Task, Trainer
from cineforge.train.models import build_model, load_vae, read_vae_config

TEXT_ENCODER = "minilm"  # all-MiniLM-L6-v2, the demo's text encoder (384-d)
TEXT_DIM = 384


def train(config: TrainConfig, *, resume: str = "auto", progress: bool = True,
          until: int | None = None) -> Path:
    """Train ``config`` in ``config.out``; return the folder of the exported EMA weights.

    ``resume``: ``"auto"`` continues from the newest checkpoint of the run folder if there
    is one, ``"no"`` starts afresh (refused if the run folder has checkpoints), anything
    else is the path of a checkpoint to continue from. A run that starts afresh starts from
    the weights ``config.init`` names when it is set (fine-tuning, or the next stage of a
    recipe). ``until``: stop after that step instead of ``config.steps``, a step the run
    checkpoints (a multiple of ``checkpoint_every``); the schedule stays ``config.steps``
    long, so a later call with a later ``until`` continues the same run.
    """
    stop = stop_step(config, until)
    run_dir = writable_folder(config.out, "run folder")
    trainer = Trainer(config, build_task(config, progress=progress), run_dir)
    resumed = None
    if resume != "no":
        resumed = trainer.resume(None if resume == "auto" else resume)
    elif latest_checkpoint(trainer.checkpoint_dir) is not None:
        raise CineforgeError(f"{run_dir} already holds checkpoints; resume it (--resume auto), "
                             "or choose another --out")
    if resumed is not None and resumed > stop:
        raise CineforgeError(f"{run_dir} is already at step {resumed}, past until {stop}; "
                             "train into another run folder (out) to stop there")
    if resumed is None and config.init:
        trainer.initialise(config.init)
    write_config(config, run_dir / "config.yaml")
    return trainer.run(progress=progress, until=stop)


def writable_folder(path: str | Path, what: str, fix: str = "choose another {out}") -> Path:
    """``path``, created if needed, once a file could be written in it: checked before the
    work starts, so that no run, cache or export fails at its first write."""
    import tempfile

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CineforgeError(f"cannot write the {what} {folder} ({reason}); {fix}",
                             fields=("out",) if "{out}" in fix else ()) from None
    return folder


def stop_step(config: TrainConfig, until: int | None) -> int:
    """The step a run of ``config`` stops at: ``until`` (a step it checkpoints) or its end."""
    stop = config.steps if until is None else until
    if not 1 <= stop <= config.steps or (stop < config.steps and stop % config.checkpoint_every):
        raise CineforgeError(f"until {until} is not a checkpoint step of {config.out}: use a "
                             f"multiple of checkpoint_every ({config.checkpoint_every}) up to "
                             f"steps ({config.steps})")
    return stop


def build_task(config: TrainConfig, *, progress: bool = False) -> Task:
    if config.task == "vae":
        from cineforge.train.vae_task import VAETask

        return VAETask(config)
    if config.task == "distill":
        from cineforge.train.distill import DistillTask, ensure_trajectories

        cache = ensure_cache(config, progress=progress)
        if config.distill.trajectories:
            cache = ensure_trajectories(config, cache, progress=progress)
        return DistillTask(config, cache)
    from cineforge.train.dit_task import DiTTask

    return DiTTask(config, ensure_cache(config, progress=progress))


def write_config(config: TrainConfig, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_tree(config), sort_keys=False))
    return path


# ----------------------------------------------------------------------------- latent cache


def cache_folder(config: TrainConfig) -> Path:
    return Path(config.cache.dir) if config.cache.dir else Path(config.out) / "latents"


def cache_meta(config: TrainConfig) -> dict:
    """What the cache's items depend on; a cache built with other values is refused."""
    vae = read_vae_config(config.model, _vae_folder(config) / "vae.json")
    return {
        "vae": {"type": type(vae).__name__, **_recorded_fields(vae, _LATER_VAE_FIELDS)},
        "latent_channels": vae.z_dim,
        "text_encoder": TEXT_ENCODER, "text_dim": TEXT_DIM, "text_len": config.cache.text_len,
        "source": _recorded_fields(shapes_world(config.data, "cache").config, _LATER_KNOBS),
    }


# Fields added after caches were first built are left out of the meta at their defaults, so
# those caches still match: world knobs (the whole world, objects at their first sizes) and
# the compact VAE's own decoder size (which its latents do not depend on).
_LATER_KNOBS = ("backgrounds", "motions", "object_scale", "wording")
_LATER_VAE_FIELDS = ("decoder_widths", "decoder_res_blocks")


def _recorded_fields(config, later: tuple[str, ...]) -> dict:
    """``config``'s fields as a dict, minus the ``later`` ones still at their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return {k: v for k, v in dataclasses.asdict(config).items()
            if k not in later or v != defaults[k]}


def ensure_cache(config: TrainConfig, *, progress: bool = False) -> LatentItems:
    """The DiT run's latents: the curated shards of ``data.shards`` (``data.source: shards``),
    or the latent cache, built (or completed) first when ``cache.build`` is true."""
    if config.data.source == "shards":
        return _open_shards(config)
    folder = cache_folder(config)
    if not config.cache.build:
        cache = LatentCache(folder)
        if not cache.complete:
            raise CineforgeError(f"the latent cache in {folder} is incomplete; set cache.build: "
                                 "true or run `cineforge train cache`")
        return cache
    return build_cache(config, progress=progress)


def build_cache(config: TrainConfig, *, progress: bool = True) -> LatentCache:
    """Encode ``cache.items`` ShapesWorld items with the VAE in ``cache.vae`` and MiniLM.
    The encoders are loaded only if items remain to be encoded."""
    if config.data.source != "shapes":
        raise CineforgeError("data.source is shards: its latents are encoded already (by the "
                             "curation's encode stage); train on them with `cineforge train dit`")
    folder = cache_folder(config)
    if not (folder / INDEX).is_file() or not LatentCache(folder).complete:
        writable_folder(folder, "latent cache folder",
                        "set cache.dir to another folder" if config.cache.dir else
                        "choose another {out}")
    loaded: dict = {}

    def encode_video(video: torch.Tensor) -> torch.Tensor:
        if "vae" not in loaded:
            loaded["vae"] = load_vae(config.model, _vae_folder(config))
        return loaded["vae"].encode(video)

    def encode_text(prompts: list[str]):
        if "text" not in loaded:
            from cineforge.weights.text_encoders import load_minilm

            loaded["text"] = load_minilm(max_length=config.cache.text_len)
        return loaded["text"].encode(prompts)

    world = shapes_world(config.data, "cache")
    return build_latent_cache(
        folder, world, config.cache.items, encode_video=encode_video,
        encode_text=encode_text, meta=cache_meta(config), shard_size=config.cache.shard_size,
        progress=progress,
    )


def _open_shards(config: TrainConfig) -> ShardDataset:
    """The curated shards of ``data.shards``, whose encoder must have ``cache.vae``'s latent
    channels (that VAE is copied beside the DiT weights at export)."""
    folder = Path(config.data.shards)
    if not folder.is_dir():
        raise CineforgeError(f"data.shards folder {folder} not found; point it at the --shards "
                             "folder of `cineforge curate run --encoder ...`")
    shards = ShardDataset(folder)
    vae = read_vae_config(config.model, _vae_folder(config) / "vae.json")
    if vae.z_dim != shards.meta.get("latent_channels"):
        raise CineforgeError(f"the shards in {folder} hold {shards.meta.get('latent_channels')}"
                             f"-channel latents but the VAE in cache.vae has {vae.z_dim}; set "
                             "cache.vae to the VAE the shards were encoded with")
    return shards


def _vae_folder(config: TrainConfig) -> Path:
    if not config.cache.vae:
        raise CineforgeError("cache.vae is not set: point it at an exported VAE folder "
                             "(vae.safetensors + vae.json), e.g. runs/demo/vae/export")
    return Path(config.cache.vae)


# ----------------------------------------------------------------------------- export


def export_run(run_dir: str | Path, out: str | Path | None = None,
               checkpoint: str | Path | None = None, *, raw: bool = False) -> Path:
    """Write the EMA weights (``raw``: the optimised weights themselves) of ``checkpoint``
    (default: the run's newest) as fp16 safetensors in cineforge layout into ``out`` (default:
    ``run_dir/export``)."""
    from cineforge.weights.keymap import load_strict

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise CineforgeError(f"{run_dir} has no checkpoints to export; train it first")
    folder = writable_folder(out or run_dir / "export", "export folder")
    state = load_checkpoint(path)
    state, which = (state["model"], "raw") if raw else (state["ema"]["model"], "EMA")
    what = f"{which} weights in {path}"
    if config.task == "distill":
        from cineforge.train.distill import load_student

        model = load_student(config, state, what=what)
    else:
        with torch.device("meta"):
            model = build_model(config.model, config.task)
        load_strict(model, state, dtype=torch.float32, what=what)
    if config.task == "vae":
        from cineforge.train.vae_task import export_vae

        export_vae(model.eval(), config, folder)
    else:
        from cineforge.train.dit_task import export_dit

        export_dit(model.eval(), _vae_folder(config), folder)
    return folder
