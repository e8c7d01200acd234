"""Training configuration: frozen dataclasses loaded from YAML plus dotted ``--set`` overrides.

A run is described by one ``TrainConfig``. The YAML file mirrors its sections::

    task: dit
    steps: 2000
    model: {preset: wan2.1-t2v-tiny, overrides: {dim: 256, num_layers: 6}}
    optim: {lr: 3.0e-4, warmup: 100}

and ``--set optim.lr=3e-4 --set steps=2000`` edits the same tree before it is built (values
are read as YAML, so ``[0.9, 0.95]``, ``true`` and ``3e-4`` all work). A key the dataclasses
do not have is an error that names the valid keys; a value of the wrong type is an error that
names the expected type. ``model.preset`` is a public preset name (``cineforge presets``);
``model.overrides`` is free-form: its keys are fields of that preset's config of the task's
part (its DiT or VAE config) and are checked when the model is built (``train.models``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cineforge.data.shapes import (
    BACKGROUNDS,
    LAYOUTS,
    MOTIONS,
    check_object_scale,
    check_subset,
    check_wording,
)
from cineforge.errors import CineforgeError

TASKS = ("vae", "dit", "distill")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CineforgeError(message)


@dataclass(frozen=True)
class ModelSpec:
    """A preset (by public name) whose DiT or VAE config the run trains, plus field overrides."""

    preset: str = "wan2.1-t2v-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """What a run trains on. ``source: shapes`` (the default): ShapesWorld, described by the
    fields from ``height`` on (pixels for the VAE, what the DiT's latent cache encodes).
    ``source: shards``: a DiT run reads the latent shards that curation's encode stage wrote
    into the folder ``shards`` (``cineforge curate run --encoder ... --shards DIR``) instead
    of a latent cache; ``cache.vae`` then names the VAE that encoded them (copied into the
    export) and ``cache.val_images`` / ``cache.val_videos`` hold the first items aside."""

    source: str = "shapes"  # "shapes" or "shards"
    shards: str = ""  # the shard folder of source "shards"
    height: int = 64
    width: int = 64
    frames: int = 17
    image_fraction: float = 0.2  # share of image items in the DiT latent cache
    two_object_fraction: float = 0.25
    layout: str = "free"  # main object placement: "free" or "centred" (data.shapes.sample_spec)
    backgrounds: tuple[str, ...] | None = None  # background colours drawn from (None: all)
    motions: tuple[str, ...] | None = None  # main-object motions of clips (None: all)
    object_scale: float = 1.0  # object sizes times this, in [0.5, 1.25]
    wording: str = "template"  # captions: fixed templates or "varied" (data.shapes_grammar)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.source in ("shapes", "shards"),
                 f"data.source must be 'shapes' or 'shards', got {self.source!r}")
        _require(bool(self.shards) == (self.source == "shards"),
                 "data.source: shards needs data.shards: DIR (a curated shard folder)"
                 if self.source == "shards" else
                 "data.shards is set but data.source is 'shapes'; set data.source: shards")
        _require(self.height % 16 == 0 and self.width % 16 == 0 and self.height >= 32
                 and self.width >= 32, f"data.height/width must be multiples of 16 and >= 32, "
                 f"got {self.height}x{self.width}")
        _require(self.frames >= 5 and (self.frames - 1) % 4 == 0,
                 f"data.frames must be 4k+1 and >= 5 (e.g. 17), got {self.frames}")
        _require(0.0 <= self.image_fraction <= 1.0, "data.image_fraction must be in [0, 1]")
        _require(0.0 <= self.two_object_fraction <= 1.0,
                 "data.two_object_fraction must be in [0, 1]")
        _require(self.layout in LAYOUTS, f"data.layout must be one of {LAYOUTS}, got "
                 f"{self.layout!r}")
        check_subset("data.backgrounds", self.backgrounds, BACKGROUNDS)
        check_subset("data.motions", self.motions, MOTIONS)
        check_object_scale("data.object_scale", self.object_scale)
        check_wording("data.wording", self.wording, training=True)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then a cosine (to ``min_lr_ratio * lr``) or constant rate."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _require(all(0.0 <= b < 1.0 for b in self.betas), "optim.betas must be in [0, 1)")
        _require(self.eps > 0 and self.weight_decay >= 0 and self.warmup >= 0,
                 "optim.eps must be > 0, optim.weight_decay and optim.warmup >= 0")
        _require(self.schedule in ("cosine", "constant"),
                 f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        _require(self.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = no clipping)")
        _require(0.0 <= self.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)")


@dataclass(frozen=True)
class BatchConfig:
    """Items per step: one image sub-batch and one video sub-batch (padded path), or, with
    ``flow.packing``, as many items as fit ``token_budget`` latent tokens."""

    images: int = 4
    videos: int = 4
    token_budget: int = 0

    def __post_init__(self) -> None:
        _require(self.images >= 0 and self.videos >= 0 and self.images + self.videos > 0,
                 "batch.images and batch.videos must be >= 0 and not both 0")
        _require(self.token_budget >= 0, "batch.token_budget must be >= 0")


@dataclass(frozen=True)
class VAEObjective:
    """Reconstruction ``l1 * |x - x'| + mse * (x - x')^2`` plus ``kl * KL(q(z|x) || N(0, 1))``,
    trained on random ``crop``-pixel squares of ``clip_frames``-frame windows (0 = whole).
    ``detail_weight`` w > 0 weights the reconstruction of pixels that stand out from their
    neighbourhood by ``1 + w`` (``cineforge.train.vae_task.pixel_detail_weights``).
    ``edge`` > 0 adds ``edge * |grad x - grad x'|`` (neighbour differences, same weights).
    ``decoder_only`` trains the decoder of the VAE ``init.file`` names with its encoder
    frozen: the latent space, and so every DiT trained on it, stays valid. ``adversarial`` > 0
    adds a per-frame patch critic of width ``critic_width`` (trained at ``critic_lr_scale``
    times the learning rate) and a hinge adversarial term of that weight on the decoder."""

    l1: float = 1.0
    mse: float = 1.0
    kl: float = 1e-6
    detail_weight: float = 0.0
    edge: float = 0.0
    sample: bool = True  # decode a posterior draw (a VAE); false: the mean (faster to fit)
    crop: int = 0
    clip_frames: int = 5
    val_images: int = 4  # fixed held-aside items, validated at full size and length
    val_videos: int = 2
    stats_items: int = 32  # items whose latents give the exported per-channel mean / std
    decoder_only: bool = False  # encoder frozen; the export keeps init's latent statistics
    adversarial: float = 0.0  # weight of the decoder's adversarial term (0: no critic)
    critic_width: int = 32
    critic_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _require(min(self.l1, self.mse, self.kl, self.detail_weight, self.edge,
                     self.adversarial) >= 0 and self.l1 + self.mse > 0,
                 "vae.l1, vae.mse, vae.kl, vae.detail_weight, vae.edge, vae.adversarial must "
                 "be >= 0 and l1 + mse > 0")
        _require(self.critic_width >= 4 and self.critic_lr_scale > 0,
                 "vae.critic_width must be >= 4 and vae.critic_lr_scale > 0")
        _require(self.crop >= 0 and self.crop % 16 == 0,
                 f"vae.crop must be 0 (whole frame) or a multiple of 16, got {self.crop}")
        _require(self.clip_frames >= 1 and (self.clip_frames - 1) % 4 == 0,
                 f"vae.clip_frames must be 4k+1 (e.g. 5), got {self.clip_frames}")
        _require(self.val_images >= 0 and self.val_videos >= 0 and self.stats_items >= 1,
                 "vae.val_images/val_videos must be >= 0 and vae.stats_items >= 1")


@dataclass(frozen=True)
class FlowObjective:
    """Rectified flow: ``x_t = (1 - t) x0 + t noise``, target ``noise - x0``, MSE.

    ``timesteps``: ``logit_normal`` (``sigmoid(mean + std * N(0, 1))``) or ``uniform``, then
    ``shift_time(t, shift)``. ``caption_dropout``: probability of training an item on the
    states of the empty prompt ``""`` (the unconditional branch of CFG). ``frame_noise_share``:
    the part of the noise variance common to all latent frames (``sampling.frame_noise``);
    sample such a model with the same share. ``detail_weight`` w > 0 weights the squared
    error at latent elements near what stands out from its neighbourhood in the clean latent
    (objects, edges: ``train.dit_task.latent_detail_weights`` with ``detail_threshold``) by
    ``1 + w``, normalised so that the loss stays a weighted mean; validation stays unweighted.
    ``first_frame`` p > 0: each clip sub-batch trains image-to-video with probability p (the
    first latent frame given clean, with time 0 on its tokens; loss on the other frames), the
    rest text-to-video, so that one model does both (a DiT that takes ``first``, as
    ``WanTI2VDiT`` and the demo's).
    """

    timesteps: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0
    caption_dropout: float = 0.1
    packing: bool = False
    frame_noise_share: float = 0.0
    detail_weight: float = 0.0
    detail_threshold: float = 1.2
    first_frame: float = 0.0

    def __post_init__(self) -> None:
        _require(self.timesteps in ("logit_normal", "uniform"),
                 f"flow.timesteps must be 'logit_normal' or 'uniform', got {self.timesteps!r}")
        _require(self.std > 0 and self.shift > 0, "flow.std and flow.shift must be > 0")
        _require(0.0 <= self.caption_dropout <= 1.0, "flow.caption_dropout must be in [0, 1]")
        _require(0.0 <= self.frame_noise_share < 1.0, "flow.frame_noise_share must be in [0, 1)")
        _require(self.detail_weight >= 0 and self.detail_threshold > 0,
                 "flow.detail_weight must be >= 0 and flow.detail_threshold > 0")
        _require(0.0 <= self.first_frame <= 1.0, "flow.first_frame must be in [0, 1]")
        _require(not (self.first_frame and self.packing),
                 "flow.first_frame (image-to-video) trains padded sub-batches; set "
                 "flow.packing: false")


DISTILL_LOSSES = ("hinge", "lsgan")


@dataclass(frozen=True)
class DistillObjective:
    """Adversarial few-step distillation (``train.distill``, LADD): the student learns the
    ``steps`` times of ``sampling.flash_schedule(steps, shift)``; the discriminator reads the
    frozen teacher at blocks ``disc_layers`` through heads of ``disc_heads`` attention heads
    (trained at ``head_lr_scale`` times the learning rate), at times logit-normal
    (``disc_mean``, ``disc_std``); ``loss`` hinge or lsgan, weighted by
    ``adversarial_weight``, plus ``distill_weight`` times the squared distance to the
    teacher's clean estimate of the re-noised student sample and ``guidance_weight`` times
    that to its estimate of the student's own input, both guided by ``teacher_guidance``.
    ``guidance_huber``: 0 takes each item's mean squared error as is; ``c > 0`` takes its
    pseudo-Huber ``sqrt(e + c^2) - c`` instead (iCT), so that every item pulls with a gradient
    of about the same size whatever its time (at ``s = 1`` the guided target lies ~100x
    farther than at the other times and would otherwise drown them).
    ``rollout``: the share of items whose input at their time is not the data noised there
    but where the student's own flash run from noise (no gradient) puts it, as at sampling:
    later steps re-noise the student's blurred early estimates, an input data noising never
    shows the student (0: data only).
    ``detail_weight`` w > 0 weights each element of ``L_CFG``'s squared error ``1 + w`` near
    the objects and edges of its target (``dit_task.latent_detail_weights``, threshold
    ``flow.detail_threshold``), as ``flow.detail_weight`` does for the flow loss: the few
    latent pixels that make a corner count, not only the layout.
    ``trajectories`` N > 0: the run trains on the teacher's own samples instead of the data
    (as LADD does): the teacher samples the prompts and shapes of the latent cache's first N
    items, with its preset's solver, steps and shift, guided by ``teacher_guidance``, from
    noise drawn per item, and keeps where its solver stood at the student's times
    (``trajectory_dir``, default ``{out}/trajectories``; built once, resumable). An item's
    input at its time is that state (rolled-out items excepted), and ``trajectory_weight``
    times the distance (detail-weighted and Huber as ``L_CFG``) of the student's clean
    estimate to the teacher's sample trains the student to jump, in one call, to where the
    teacher's whole run from there ends: the guided target ``L_CFG`` is the teacher's own
    one-call estimate, which a 4-step run of the teacher itself follows no better than the
    student.
    ``dmd_weight`` > 0: distribution matching (DMD, Yin et al. 2024; DMD2's form): a fake
    score model, a copy of the teacher trained at ``fake_lr_scale`` times the learning rate,
    learns the flow of the student's samples, and the student moves each sample along the
    difference between the teacher's guided clean estimate and the fake's, at times
    ``U(0.02, 0.98)`` shifted by ``dmd_shift``. ``fake_updates`` k >= 1: on average k fake
    updates per student update (DMD2's two time-scale rule; a step trains the student with
    probability 1 / k, the fake every step).
    ``student_layers``: the teacher's blocks the student keeps, in order (empty: all): a
    shallower student, initialised from those blocks, that runs faster per step.
    ``student_init``: a weights folder of the teacher's architecture the student starts from
    (before ``student_layers`` cuts it; empty: the teacher), e.g. a distilled full-depth
    student to make shallower. ``heal_weight`` > 0: the student's clean estimate regresses,
    at its own input, onto that uncut model's one-call estimate (``L_HEAL``, no guidance):
    what the blocks left out did, learnt back by the blocks kept.
    ``teacher``: a weights folder (cineforge layout); empty: the preset's own weights
    (``model.preset``)."""

    teacher: str = ""
    steps: int = 4
    shift: float = 3.0
    disc_layers: tuple[int, ...] = (1, 3, 5, 7)
    disc_heads: int = 4
    head_lr_scale: float = 1.0
    disc_mean: float = 1.0
    disc_std: float = 1.0
    loss: str = "hinge"
    adversarial_weight: float = 1.0
    distill_weight: float = 1.0
    guidance_weight: float = 0.0
    guidance_huber: float = 0.0
    teacher_guidance: float = 6.0
    rollout: float = 0.0
    detail_weight: float = 0.0
    trajectories: int = 0
    trajectory_weight: float = 0.0
    trajectory_dir: str = ""
    dmd_weight: float = 0.0
    dmd_shift: float = 1.0
    fake_lr_scale: float = 1.0
    fake_updates: int = 1
    student_layers: tuple[int, ...] = ()
    student_init: str = ""
    heal_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(1 <= self.steps <= 16 and self.shift > 0,
                 f"distill.steps must be in 1..16 and distill.shift > 0, got {self.steps}, "
                 f"{self.shift}")
        _require(len(self.disc_layers) >= 1 and min(self.disc_layers) >= 0
                 and len(set(self.disc_layers)) == len(self.disc_layers),
                 f"distill.disc_layers must list distinct block indices, got {self.disc_layers}")
        _require(self.disc_heads >= 1 and self.disc_std > 0 and self.head_lr_scale > 0,
                 "distill.disc_heads must be >= 1, distill.disc_std and head_lr_scale > 0")
        _require(self.loss in DISTILL_LOSSES,
                 f"distill.loss must be one of {DISTILL_LOSSES}, got {self.loss!r}")
        weights = (self.adversarial_weight, self.distill_weight, self.guidance_weight,
                   self.trajectory_weight, self.dmd_weight, self.heal_weight)
        _require(min(weights) >= 0 and sum(weights) > 0,
                 "distill.adversarial_weight, distill_weight, guidance_weight, "
                 "trajectory_weight, dmd_weight and heal_weight must be >= 0, not all 0")
        _require(list(self.student_layers) == sorted(set(self.student_layers))
                 and min(self.student_layers, default=0) >= 0,
                 f"distill.student_layers must list distinct block indices in increasing "
                 f"order, got {self.student_layers}")
        _require(self.dmd_shift > 0 and self.fake_lr_scale > 0 and self.fake_updates >= 1,
                 f"distill.dmd_shift and fake_lr_scale must be > 0 and fake_updates >= 1, got "
                 f"{self.dmd_shift}, {self.fake_lr_scale}, {self.fake_updates}")
        _require(self.trajectories >= 0,
                 f"distill.trajectories counts items (0: train on the data), got "
                 f"{self.trajectories}")
        _require(not self.trajectory_weight or self.trajectories,
                 "distill.trajectory_weight needs the teacher's trajectories: set "
                 "distill.trajectories to how many items the teacher samples (e.g. 1000)")
        _require(self.guidance_huber >= 0,
                 f"distill.guidance_huber must be >= 0 (0: squared error), got "
                 f"{self.guidance_huber}")
        _require(self.teacher_guidance >= 1,
                 f"distill.teacher_guidance must be >= 1, got {self.teacher_guidance}")
        _require(0 <= self.rollout <= 1,
                 f"distill.rollout is a share of items, in [0, 1]; got {self.rollout}")
        _require(self.detail_weight >= 0,
                 f"distill.detail_weight must be >= 0 (0: unweighted), got {self.detail_weight}")


@dataclass(frozen=True)
class CacheConfig:
    """The DiT's latent cache: ``items`` ShapesWorld items encoded by the VAE in ``vae`` (a
    folder with ``vae.safetensors`` + ``vae.json``, what ``cineforge train export`` writes
    for a VAE run) and by MiniLM (at most ``text_len`` tokens). ``dir`` defaults to
    ``<out>/latents``. The first ``val_images`` image items and ``val_videos`` video items
    are held aside for validation."""

    dir: str = ""
    vae: str = ""
    items: int = 1000
    shard_size: int = 256
    build: bool = True
    text_len: int = 64
    val_images: int = 4
    val_videos: int = 4

    def __post_init__(self) -> None:
        _require(self.items >= 1 and self.shard_size >= 1 and self.text_len >= 2,
                 "cache.items and cache.shard_size must be >= 1, cache.text_len >= 2")
        _require(self.val_images >= 0 and self.val_videos >= 0,
                 "cache.val_images and cache.val_videos must be >= 0")


INIT_WEIGHTS = ("ema", "raw")


@dataclass(frozen=True)
class InitSpec:
    """The weights a fresh run starts from (its optimiser, schedule and data start afresh)::

        init: {run: runs/demo/p2, step: 2000, weights: raw}

    ``run``: a run folder, whose checkpoint at ``step`` (default: its newest) is read;
    ``weights``: that checkpoint's ``ema`` (averaged) or ``raw`` (optimised) weights. Or
    ``file``: one checkpoint file (``weights`` as above) or a ``.safetensors`` state dict
    such as an export; a plain string (``init: FILE``) is a ``file``. Neither: the model's
    own initialisation. ``Trainer.initialise`` finds and loads the weights."""

    run: str = ""
    step: int | None = None
    weights: str = "ema"
    file: str = ""

    def __post_init__(self) -> None:
        _require(self.weights in INIT_WEIGHTS,
                 f"init.weights must be 'ema' or 'raw', got {self.weights!r}")
        _require(not (self.run and self.file),
                 "init names both a run and a file; set one of init.run and init.file")
        _require(self.step is None or (bool(self.run) and self.step >= 1),
                 f"init.step {self.step} needs init.run and must be >= 1 (a checkpoint step)")
        _require(not (self.file.endswith(".safetensors") and self.weights == "raw"),
                 f"init.file {self.file} holds one set of weights; init.weights: raw applies "
                 "to checkpoints only")

    def __bool__(self) -> bool:
        """True when the run starts from other weights than its own initialisation."""
        return bool(self.run or self.file)

    @classmethod
    def from_text(cls, text: str) -> InitSpec:
        """``init: FILE`` (and ``init: ""``, none) as a section."""
        return cls(file=text)


@dataclass(frozen=True)
class TrainConfig:
    task: str = "dit"
    seed: int = 0
    steps: int = 1000
    out: str = "runs/train"
    init: InitSpec = field(default_factory=InitSpec)  # a fresh run starts from these weights
    init_fresh: tuple[str, ...] = ()  # modules initialised afresh, not from init (new ones)
    checkpoint_every: int = 500
    keep_last: int = 3
    validate_every: int = 250  # 0: only at the end
    log_every: int = 10
    activation_checkpointing: bool = False
    device: str = "cpu"  # e.g. "cuda": model, optimiser and EMA live there; draws stay on CPU
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    vae: VAEObjective = field(default_factory=VAEObjective)
    flow: FlowObjective = field(default_factory=FlowObjective)
    distill: DistillObjective = field(default_factory=DistillObjective)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        _require(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        _require(self.steps >= 1 and self.seed >= 0, "steps must be >= 1 and seed >= 0")
        _require(self.checkpoint_every >= 1 and self.keep_last >= 1 and self.log_every >= 1,
                 "checkpoint_every, keep_last and log_every must be >= 1")
        _require(self.validate_every >= 0, "validate_every must be >= 0 (0 = only at the end)")
        _require(self.vae.clip_frames <= self.data.frames,
                 f"vae.clip_frames {self.vae.clip_frames} exceeds data.frames {self.data.frames}")
        _require(self.vae.crop <= min(self.data.height, self.data.width),
                 f"vae.crop {self.vae.crop} exceeds the frame size")
        _require(self.task != "vae" or self.data.source == "shapes",
                 "data.source: shards holds latents for a DiT run; a VAE trains on pixels "
                 "(data.source: shapes)")


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                **fields: Any) -> TrainConfig:
    """Read ``path`` (YAML), apply ``overrides`` (``"a.b=value"``) then ``fields`` (top-level
    keys, e.g. ``task="vae"``; None values are ignored), and build a validated config."""
    tree = read_tree(path, overrides)
    tree.update({k: v for k, v in fields.items() if v is not None})
    return from_tree(TrainConfig, tree)


def read_tree(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """The raw mapping of ``path`` (YAML; empty if None) with ``overrides`` applied. A file
    may start from another: ``base: other.yaml`` (relative to the file's folder) reads that
    one first and merges this file's keys over it, section by section (lists and values are
    replaced, not merged)."""
    tree = _read_file_tree(Path(path), ()) if path is not None else {}
    for item in overrides:
        apply_override(tree, item)
    return tree


def _read_file_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise CineforgeError(f"config file not found: {path}"
                             + (f" (the base of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise CineforgeError(f"config {path} is its own base (through "
                             f"{' -> '.join(p.name for p in chain)}); break the cycle")
    try:
        tree = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise CineforgeError(f"{path} is not a text file; pass a YAML config") from None
    except yaml.YAMLError as exc:
        raise CineforgeError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if tree is None or tree == {}:
        raise CineforgeError(f"{path} is empty; write the run's keys in it (e.g. task, steps, "
                             "out: see configs/) or start it from another with base: FILE")
    if not isinstance(tree, dict):
        raise CineforgeError(f"{path} must hold a mapping of config keys")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise CineforgeError(f"{path}: base must be a config file name, got {base!r}")
    return _merged(_read_file_tree(path.parent / base, (*chain, path.resolve())), tree)


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong, and where."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set ``tree[a][b] = value`` for ``"a.b=value"`` (value parsed as YAML)."""
    import yaml

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise CineforgeError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CineforgeError(f"override {item!r}: {part!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[leaf] = text


def from_tree(cls: type, tree: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, checking keys and coercing types."""
    if not isinstance(tree, dict):
        raise CineforgeError(f"{where or 'config'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(tree) - set(names))
    if unknown:
        raise CineforgeError(
            f"unknown config key {_join(where, unknown[0])!r}; valid keys"
            f"{' of ' + where if where else ''}: {', '.join(names)}"
        )
    values = {k: _coerce(v, hints[k], _join(where, k)) for k, v in tree.items()}
    try:
        return cls(**values)
    except CineforgeError:
        raise
    except ValueError as exc:  # a model config's own validation
        raise CineforgeError(f"{where or 'config'}: {exc}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_BAD = object()


def _as_float(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return _BAD
    try:
        return float(v)  # YAML reads 3e-4 (no dot) as a string
    except ValueError:
        return _BAD


_SCALARS = {
    bool: lambda v: v if isinstance(v, bool) else _BAD,
    int: lambda v: v if isinstance(v, int) and not isinstance(v, bool) else _BAD,
    float: _as_float,
    str: lambda v: str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool)
    else _BAD,
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (dataclass, scalar, tuple, dict, optional) or an error."""
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "from_text"):  # a section's short form
            return tp.from_text(value)
        return from_tree(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if tp is Any:
        return value
    result = _BAD
    if tp in _SCALARS:
        result = _SCALARS[tp](value)
    elif origin is tuple and isinstance(value, (list, tuple)):
        kinds = args[:-1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(kinds) == len(value):
            result = tuple(_coerce(v, k, f"{where}[{i}]")
                           for i, (v, k) in enumerate(zip(value, kinds, strict=True)))
    elif origin is dict and isinstance(value, dict):
        result = dict(value)
    if result is _BAD:
        raise CineforgeError(f"config key {where!r} must be {_type_name(tp)}, got {value!r}")
    return result


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_to_tree(config: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) for YAML / JSON / checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))


def build_model_config(base: Any, overrides: dict[str, Any], what: str) -> Any:
    """``dataclasses.replace(base, **overrides)`` with lists turned into tuples and a clear
    error for unknown fields or invalid values."""
    names = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise CineforgeError(
            f"unknown {what} field {unknown[0]!r} in model.overrides; valid: {', '.join(names)}"
        )
    hints = typing.get_type_hints(type(base))
    values = {k: _coerce(v, hints[k], f"model.overrides.{k}") for k, v in overrides.items()}
    try:
        return dataclasses.replace(base, **values)
    except ValueError as exc:
        raise CineforgeError(f"model.overrides: {exc}") from None
