"""The DiT objective: rectified flow matching on cached latents, images and clips together.

For clean latents ``x0``, flow time ``t`` and noise ``n`` the model sees
``x_t = (1 - t) x0 + t n`` and learns ``v = n - x0`` under an MSE loss (``train.flow``).
Times are drawn per item (logit-normal or uniform, then the resolution shift). With
probability ``flow.caption_dropout`` an item's text states are replaced by those of the
empty prompt ``""`` (stored in the cache), so classifier-free guidance at sampling time uses
``""`` as the unconditional prompt. Text states are zero-padded to the model's ``text_len``
as at inference (Wan conditions on unmasked, zero-padded text).

Batches come from the latent cache, grouped by latent shape (``ShapeBuckets``):

- ``flow.packing: false``: each step has one image sub-batch (``batch.images`` items of one
  image bucket) and one video sub-batch (``batch.videos`` items of one video bucket); each
  goes through ``model(x, t, context)``.
- ``flow.packing: true``: ``train.packing.TokenPacker`` fills ``batch.token_budget`` latent
  tokens per step from one seeded stream over all items (first fit, holding back items that
  do not fit for later packs), and the pack goes through ``model.forward_packed`` (one
  sequence, block-diagonal attention).

Either way the step's loss is the sum of squared errors over every latent element of the
step divided by their number: sub-batches are weighted by their element counts. With
``flow.detail_weight`` w > 0 each element's squared error is weighted (``1 + w`` near objects
and edges of the clean latent, else 1: ``latent_detail_weights``) and the sum is divided by
the sum of the weights instead, so the loss keeps its scale while the few latent pixels that
carry an object's shape weigh more.
With ``flow.first_frame`` p > 0 a clip sub-batch trains image-to-video with probability p
(Kandinsky 4.0's and Wan 2.2 TI2V's recipe): the model gets its first latent frame clean,
with time 0 on that frame's tokens (``model(x_t, t, context, first=x0[:, :, :1])``), and the
loss weights of that frame are 0, so one model learns both tasks.
Validation runs the EMA model on the held-aside items (the first ``cache.val_images`` images
and ``cache.val_videos`` clips of the cache) at fixed times with fixed noise, so the numbers
are comparable from one validation to the next.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cineforge.data.latents import CacheItem, LatentItems
from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import pad_context
from cineforge.families.wan.ti2v_dit import WanTI2VDiT
from cineforge.sampling import frame_noise
from cineforge.train.config import TrainConfig
from cineforge.train.data import IndexStream, ShapeBuckets
from cineforge.train.export import save_weights
from cineforge.train.flow import caption_keep_mask, flow_pair, sample_times
from cineforge.train.loop import StepLoss
from cineforge.train.models import model_config as model_config_of
from cineforge.train.packing import TokenPacker
from cineforge.train.saliency import detail_weights
from cineforge.weights.files import write_model_config

# Validation times: the mean over them is ``val_{kind}_loss``; ``val_{kind}_loss@t`` per time.
# 0.98 watches the near-pure-noise end, where samplers with shift > 1 take their first steps.
VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.98)
_VAL_SEED = 2_718_281  # the validation noise's seed, offset from the run's seed


def latent_detail_weights(x0: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """``train.saliency.detail_weights`` at latent scale for ``x0`` (``C, T, H, W``, or a
    batch ``B, C, T, H, W``): latent pixels whose largest channel deviates by more than
    ``threshold`` from the mean of their 7x7 neighbourhood, grown by one pixel, weigh
    ``1 + weight`` (``1, T, H, W``, or ``B, 1, T, H, W``). On the demo VAE's latents (16
    channels, std ~1) threshold 1.2 marks ~22 % of latent pixels and 99 % of those that an
    object touches."""
    batched = x0.ndim == 5
    w = detail_weights(x0 if batched else x0[None], weight, window=7, threshold=threshold,
                       dilate=3)
    return w if batched else w[0]


def latent_tokens(shape: tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens of a latent ``(C, T, H, W)`` after patchifying."""
    return math.prod(n // p for n, p in zip(shape[1:], patch, strict=True))


class DiTTask:
    name = "dit"
    work_unit = "tokens"

    def __init__(self, config: TrainConfig, cache: LatentItems) -> None:
        self.config, self.cache = config, cache
        family, model_config = model_config_of(config.model, "dit")
        _check_cache(cache, model_config, config)
        self.model = family.build("dit", model_config).init_weights(
            torch.Generator().manual_seed(config.seed))
        self.text_len = model_config.text_len
        self.patch = model_config.patch_size
        # None only without caption dropout (``_check_cache``), when it is never used
        self.empty = (pad_context(cache.empty_text()[None], self.text_len)[0]
                      if cache.has_empty_text else None)
        held, train = _split(cache, config.cache.val_images, config.cache.val_videos)
        if not train:
            raise CineforgeError(f"the {len(cache)} latent items in {cache.folder} leave none "
                                 f"for training after the {len(held)} held aside; lower "
                                 "cache.val_images / cache.val_videos or add items")
        if config.flow.first_frame and not isinstance(self.model, WanTI2VDiT):
            raise CineforgeError(f"flow.first_frame trains image-to-video, which the "
                                 f"{type(self.model).__name__} does not take (no clean first "
                                 "frame input); use a model that does (the demo's, Wan 2.2 "
                                 "TI2V) or set flow.first_frame: 0")
        self.buckets = ShapeBuckets(((i, cache.shape(i)) for i in train), config.seed)
        self.stream = IndexStream(train, config.seed)  # the packed path's order
        self.packer = None
        if config.flow.packing:
            _require_packing(self.model)
            self.packer = TokenPacker(self.stream.next, self._tokens, config.batch.token_budget)
        self.val = self._validation_set(held)

    # ------------------------------------------------------------------ data

    def next_batch(self, generator: torch.Generator) -> list[list[CacheItem]]:
        """Sub-batches of cache items: [images, videos] (padded) or [one pack] (packing)."""
        if self.packer is not None:
            return [[self.cache[i] for i in self.packer.next_pack()]]
        groups = [self.buckets.draw("image", self.config.batch.images, generator),
                  self.buckets.draw("video", self.config.batch.videos, generator)]
        return [[self.cache[i] for i in g] for g in groups if g]

    def _tokens(self, index: int) -> int:
        return latent_tokens(self.cache.shape(index), self.patch)

    def data_state(self) -> dict[str, Any]:
        return {"buckets": self.buckets.state_dict(), "stream": self.stream.state_dict(),
                "packer": self.packer.state_dict() if self.packer else None}

    def load_data_state(self, state: dict[str, Any]) -> None:
        self.buckets.load_state_dict(state["buckets"])
        self.stream.load_state_dict(state["stream"])
        if self.packer is not None:
            self.packer.load_state_dict(state["packer"])

    # ------------------------------------------------------------------ objective

    def contexts(self, items: list[CacheItem], keep: torch.Tensor) -> list[torch.Tensor]:
        """Each item's text states, or the empty prompt's where ``keep`` is False, padded to
        ``text_len`` (``text_len, D`` each)."""
        return [pad_context(item.text[None], self.text_len)[0] if k else self.empty
                for item, k in zip(items, keep.tolist(), strict=True)]

    def loss(self, model: nn.Module, batch: list[list[CacheItem]],
             generator: torch.Generator) -> StepLoss:
        f = self.config.flow
        firsts = self._first_frame_draws(batch, generator)
        weights = [self._weights(items, first) for items, first in zip(batch, firsts, strict=True)]
        total = sum(float(w.sum()) for w in weights)
        loss, parts, tokens = torch.zeros((), device=_device(model)), {}, 0
        for items, w, first in zip(batch, weights, firsts, strict=True):
            keep = caption_keep_mask(len(items), f.caption_dropout, generator)
            t = sample_times(len(items), generator, kind=f.timesteps, mean=f.mean, std=f.std,
                             shift=f.shift)
            x0 = [item.latent for item in items]
            noise = [frame_noise(x.shape, generator, f.frame_noise_share) for x in x0]
            context = self.contexts(items, keep)
            if f.packing:
                errors = self._packed_errors(model, x0, noise, t, context)
            else:
                errors = self._padded_errors(model, torch.stack(x0), torch.stack(noise), t,
                                             torch.stack(context), first=first)
            kind = "pack" if f.packing else ShapeBuckets.kind(tuple(x0[0].shape))
            kind += "_i2v" if first else ""
            parts[f"loss_{kind}"] = (errors[:, :, 1:] if first else errors).mean().item()
            loss = loss + (errors * w.to(errors.device).view(errors.shape)).sum() / total
            tokens += sum(latent_tokens(tuple(x.shape), self.patch) for x in x0)
        return StepLoss(loss, parts, tokens)

    def _first_frame_draws(self, batch: list[list[CacheItem]],
                           generator: torch.Generator) -> list[bool]:
        """Per sub-batch: whether it trains image-to-video (``flow.first_frame``; clips only,
        drawn only when p > 0 so that other runs' random streams are unchanged)."""
        p = self.config.flow.first_frame
        if not p:
            return [False] * len(batch)
        draws = torch.rand(len(batch), generator=generator) < p
        return [bool(d) and items[0].latent.shape[1] > 1
                for items, d in zip(batch, draws.tolist(), strict=True)]

    def _weights(self, items: list[CacheItem], first: bool = False) -> torch.Tensor:
        """Per-element loss weights of a sub-batch, flattened in item order: all 1, or the
        clean latents' detail weights (``flow.detail_weight``); 0 on the first latent frame
        when it is given clean (``first``)."""
        f = self.config.flow
        out = []
        for i in items:
            w = (latent_detail_weights(i.latent, f.detail_weight, f.detail_threshold)
                 .expand_as(i.latent) if f.detail_weight else torch.ones_like(i.latent))
            if first:
                w = w.clone()
                w[:, 0] = 0
            out.append(w.flatten())
        return torch.cat(out)

    @staticmethod
    def _padded_errors(model, x0, noise, t, context, first: bool = False) -> torch.Tensor:
        """Squared errors of ``model(x_t, t, context)`` against ``v`` (batched tensors;
        moved to the model's device); with ``first`` the model is given the clean first
        latent frame (its errors there are not a target: weight them 0)."""
        device = _device(model)
        x0, noise, t, context = (x.to(device) for x in (x0, noise, t, context))
        x_t, v = flow_pair(x0, noise, t)
        if first:
            return (model(x_t, t, context, first=x0[:, :, :1]) - v).square()
        return (model(x_t, t, context) - v).square()

    @staticmethod
    def _packed_errors(model, x0, noise, t, context) -> torch.Tensor:
        """The same through ``model.forward_packed`` (lists of per-item tensors), flattened
        in item order."""
        device = _device(model)
        x0, noise, context = ([x.to(device) for x in xs] for xs in (x0, noise, context))
        t = t.to(device)
        pairs = [flow_pair(x[None], n[None], ti[None]) for x, n, ti in zip(x0, noise, t,
                                                                           strict=True)]
        preds = model.forward_packed([p[0][0] for p in pairs], t, context)
        return torch.cat([(pred - p[1][0]).square().flatten()
                          for pred, p in zip(preds, pairs, strict=True)])

    # ------------------------------------------------------------------ validation

    def _validation_set(self, held: list[int]) -> list[tuple]:
        """Per held-aside item: its kind, and x0, noise, times and context repeated over
        ``VAL_TIMES`` (noise fixed by the run's seed)."""
        generator = torch.Generator().manual_seed(self.config.seed + _VAL_SEED)
        times = torch.tensor(VAL_TIMES)
        out = []
        for i in held:
            item = self.cache[i]
            x0 = item.latent[None].expand(len(times), *item.latent.shape)
            noise = frame_noise(x0.shape, generator, self.config.flow.frame_noise_share)
            context = self.contexts([item], torch.ones(1, dtype=torch.bool))[0]
            out.append((ShapeBuckets.kind(tuple(item.latent.shape)), x0, noise, times,
                        context[None].expand(len(times), *context.shape)))
        return out

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """``val_{kind}_loss`` (and ``@t``) per kind; with ``flow.first_frame`` also
        ``val_video_i2v_loss``: the clips with their clean first frame given, on the others."""
        sums: dict[str, list[torch.Tensor]] = {}
        for kind, x0, noise, times, context in self.val:
            errors = self._padded_errors(model, x0, noise, times, context)
            sums.setdefault(kind, []).append(errors.flatten(1).mean(1).cpu())
            if self.config.flow.first_frame and kind == "video":
                errors = self._padded_errors(model, x0, noise, times, context, first=True)
                sums.setdefault("video_i2v", []).append(errors[:, :, 1:].flatten(1).mean(1).cpu())
        out = {}
        for kind, per_item in sums.items():
            per_time = torch.stack(per_item).mean(0)
            out[f"val_{kind}_loss"] = float(per_time.mean())
            out |= {f"val_{kind}_loss@{t:g}": float(x) for t, x in
                    zip(VAL_TIMES, per_time, strict=True)}
        return out

    # ------------------------------------------------------------------ export

    def export(self, model: nn.Module, folder: Path) -> list[Path]:
        return export_dit(model, Path(self.config.cache.vae), Path(folder))


def export_dit(model: nn.Module, vae_folder: Path, folder: Path) -> list[Path]:
    """``dit.safetensors`` (fp16) + ``dit.json``, and the VAE the latents came from copied
    beside them, so ``folder`` is a complete cineforge-layout weights folder."""
    paths = [save_weights(model, folder / "dit.safetensors"),
             write_model_config(model.config, folder / "dit.json")]
    for name in ("vae.safetensors", "vae.json"):
        source = vae_folder / name
        if not source.is_file():
            raise CineforgeError(f"{source} not found: cache.vae must name the exported VAE "
                                 "folder the latent cache was built with")
        if source.resolve() != (folder / name).resolve():
            shutil.copyfile(source, folder / name)
        paths.append(folder / name)
    return paths


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _split(cache: LatentItems, images: int, videos: int) -> tuple[list[int], list[int]]:
    """The first ``images`` image items and ``videos`` video items (in the cache's or the
    shards' item order), and the rest."""
    want = {"image": images, "video": videos}
    held, train = [], []
    for i in range(len(cache)):
        kind = ShapeBuckets.kind(cache.shape(i))
        if want[kind]:
            want[kind] -= 1
            held.append(i)
        else:
            train.append(i)
    return held, train


def _check_cache(cache: LatentItems, model_config, config: TrainConfig) -> None:
    """The latents (a latent cache or curated shards) fit the DiT and the objective."""
    if not cache.complete:
        raise CineforgeError(f"the latent cache in {cache.folder} is incomplete "
                             f"({len(cache)} of {cache.items_total} items); build it first")
    meta, where = cache.meta, cache.folder
    if meta.get("latent_channels") != model_config.in_channels:
        raise CineforgeError(f"the latents in {where} have {meta.get('latent_channels')} "
                             f"channels but the DiT takes {model_config.in_channels}; set "
                             "model.overrides (in_channels, out_channels)")
    if meta.get("text_dim") != model_config.text_dim:
        raise CineforgeError(f"the text states in {where} are {meta.get('text_dim')}-d but the "
                             f"DiT's text_dim is {model_config.text_dim}; set "
                             "model.overrides.text_dim")
    if meta.get("text_len", 0) > model_config.text_len:
        raise CineforgeError(f"cache.text_len {meta.get('text_len')} exceeds the DiT's text_len "
                             f"{model_config.text_len}")
    longest = max((e["text_len"] for e in cache.entries), default=0)
    if longest > model_config.text_len:
        raise CineforgeError(f"captions in {where} have up to {longest} text tokens, more than "
                             f"the DiT's text_len {model_config.text_len}; raise "
                             "model.overrides.text_len")
    if len(cache) and not longest:
        raise CineforgeError(f"the items in {where} have no text states (their encoder gave "
                             "none); encode them with a text encoder")
    if config.flow.caption_dropout and not cache.has_empty_text:
        raise CineforgeError(f"{where} has no empty-prompt states for flow.caption_dropout; set "
                             "flow.caption_dropout: 0, or run the curation's encode stage into "
                             "it again (it stores them)")
    if config.flow.packing and config.batch.token_budget < 1:
        raise CineforgeError("flow.packing needs batch.token_budget > 0 (latent tokens per step)")


def _require_packing(model: nn.Module) -> None:
    if not hasattr(model, "forward_packed"):
        raise CineforgeError(
            f"flow.packing needs {type(model).__name__}.forward_packed, which this version "
            "does not have; set flow.packing: false"
        )
