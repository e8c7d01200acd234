"""The VAE objective: reconstruction (L1 + MSE) plus a small KL term, on images and clips.

Each step holds one image sub-batch (``batch.images`` frames) and one video sub-batch
(``batch.videos`` windows of ``vae.clip_frames`` frames), both random ``vae.crop``-pixel
squares of ShapesWorld items. The decoder gets a posterior draw ``z = mu + sigma * eps``
(eps from the trainer's generator), or with ``vae.sample: false`` the mean ``mu``; per
sub-batch

    loss_k = l1 * mean|x - x'| + mse * mean (x - x')^2 + kl * mean KL(N(mu, sigma) || N(0, 1))

(with ``vae.detail_weight`` > 0 the two reconstruction means are weighted per pixel by
``pixel_detail_weights``: small objects on large smooth backgrounds otherwise barely move a
pixel-mean loss, and the demo VAE learned shapes and motion long before object colours)
plus, with ``vae.edge`` > 0, ``edge * mean |grad x - grad x'|`` over the horizontal and
vertical neighbour differences of every frame, weighted the same way: a pixel loss lets
corners round off (diamonds decoded as circles) and leaves stripes the eye sees at once

and the step's loss is the mean of the sub-batch losses weighted by their pixel counts
(the same as one mean over all pixels of the step). With ``vae.decoder_only`` the encoder of
the exported VAE ``init.file`` names stays frozen (its moments run without gradients) and
only the decoder trains: a sharper decoder for latents DiTs were already trained on, whose
export keeps that VAE's latent statistics (``vae.json`` beside ``init.file``) exactly.

Pixel losses are minimised by the mean of what a latent could be, which rounds corners and
rings at edges. With ``vae.adversarial`` w > 0 a patch critic (``PatchCritic``, per frame)
scores real frames against decoded ones, and per sub-batch (hinge, as VQGAN and the video
VAEs of Wan and CogVideoX train their decoders)

    L_D = mean relu(1 - D(x)) + mean relu(1 + D(x'.detached))     (trains the critic)
    L_G = -mean D(x')                    (the critic's weights detached: trains the VAE)

and ``loss_k`` gains ``L_D + w * L_G``: one backward pass trains both players, each term
reaching only its own side. The trained module is then ``VAEWithCritic``; validation and the
export use its ``vae`` alone, and an exported VAE's weights start it (the critic fresh).

The causal VAE encodes a clip's first frame alone and then groups of 4 frames through a
cache of past frames, so a model trained on short windows runs on longer clips, provided the
windows hold at least two groups after the first frame (9 frames): with 5-frame windows no
chunk ever sees a cache filled by a regular chunk, and 17-frame reconstructions degrade.
Validation measures exactly that, on a fixed held-aside set at full size and length, through
the inference API (posterior mean).

``encode_moments`` runs without gradients (it is the inference API), so training
walks the same chunks here with gradients enabled.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.causal3d import LatentVideoVAE
from cineforge.train.adversarial import adversarial_losses, frozen_call
from cineforge.train.config import TrainConfig
from cineforge.train.data import shapes_world
from cineforge.train.export import save_weights
from cineforge.train.loop import StepLoss
from cineforge.train.models import model_config as model_config_of
from cineforge.train.models import read_vae_config
from cineforge.train.saliency import detail_weights
from cineforge.weights.files import write_model_config


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over latent elements of KL(N(mu, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()


def pixel_detail_weights(video: torch.Tensor, weight: float) -> torch.Tensor:
    """``detail_weights`` at the VAE's pixel scale (frames in [-1, 1]): a 15-pixel
    neighbourhood, colour deviation 0.1, grown by 2 pixels."""
    return detail_weights(video, weight, window=15, threshold=0.1, dilate=5)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` with ``weights`` broadcast over channels, normalised by the weights."""
    return (values * weights).sum() / (weights.sum() * values.shape[1])


def edge_error(err: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean ``|grad err|`` over the horizontal and vertical neighbour differences of
    ``err = x' - x`` (B, C, T, H, W): the L1 distance between the two images' gradients.
    ``weights`` (B, 1, T, H, W) weight each difference by the larger of its two pixels'."""
    total = err.new_zeros(())
    for dim in (-1, -2):
        diff = err.diff(dim=dim).abs()
        if weights is None:
            total = total + diff.mean()
        else:
            n = weights.shape[dim]
            w = torch.maximum(weights.narrow(dim, 0, n - 1), weights.narrow(dim, 1, n - 1))
            total = total + _weighted_mean(diff, w)
    return total / 2


def psnr(mse: float) -> float:
    """PSNR in dB of frames in [-1, 1] (peak-to-peak 2)."""
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


class PatchCritic(nn.Module):
    """A per-frame patch discriminator: four 2D convolutions (two of stride 2) with
    LeakyReLU(0.2) and a layer norm over channels, giving one hinge score per 4x4 pixels.
    ``x`` (B, 3, T, H, W) in [-1, 1] -> scores (B * T, H / 4, W / 4)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        widths = (3, width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Conv2d(a, b, 4 if i < 2 else 3, stride=2 if i < 2 else 1,
                                    padding=1))
            if i:
                layers.append(nn.GroupNorm(1, b))
            layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2).flatten(0, 1)  # B*T, 3, H, W
        return self.net(frames)[:, 0]


class VAEWithCritic(nn.Module):
    """What an adversarial VAE run trains: the ``vae`` and its ``critic``."""

    def __init__(self, vae: LatentVideoVAE, critic: PatchCritic, critic_lr_scale: float) -> None:
        super().__init__()
        self.vae = vae
        self.critic = critic
        self.lr_scales = {"critic": critic_lr_scale}  # read by train.optim.build_optimizer
        self.adversaries = ("critic",)  # clipped apart from the VAE: train.optim.grad_norm_

    def adapt_init_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A bare VAE's weights (an exported ``vae.safetensors``, a run without critic)
        start the ``vae``; the critic keeps its fresh initialisation."""
        if any(k.startswith("vae.") for k in weights):
            return weights
        fresh = {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        return {**{f"vae.{k}": v for k, v in weights.items()}, **fresh}

    def critic_losses(self, real: torch.Tensor, fake: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_D, L_G)`` of the module docstring for frames ``real`` and decoded ``fake``."""
        return adversarial_losses([self.critic(real)], [self.critic(fake.detach())],
                                  [frozen_call(self.critic, fake)], "hinge")


def _vae(model: nn.Module) -> LatentVideoVAE:
    """The VAE of a trained module (itself, or a ``VAEWithCritic``'s)."""
    return model.vae if isinstance(model, VAEWithCritic) else model


class VAETask:
    name = "vae"
    work_unit = "pixels"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.objective = config.vae
        family, model_config = model_config_of(config.model, "vae")
        ratio = model_config.spatial_ratio
        if config.vae.crop % ratio or config.data.height % ratio or config.data.width % ratio:
            raise CineforgeError(f"vae.crop and the frame size must be multiples of {ratio}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # PyTorch's default init draws from the global RNG
            self.model = family.build("vae", model_config)
            if config.vae.adversarial:
                critic = PatchCritic(config.vae.critic_width)
                self.model = VAEWithCritic(self.model, critic, config.vae.critic_lr_scale)
        vae = _vae(self.model)
        self.kept_stats = _freeze_encoder(vae, config) if config.vae.decoder_only else None
        self.images = shapes_world(config.data, "train_images", image_fraction=1.0)
        self.videos = shapes_world(config.data, "train_videos", image_fraction=0.0)
        self.position = {"images": 0, "videos": 0}
        self.val = {
            "image": _first(shapes_world(config.data, "val_images", 1.0), config.vae.val_images),
            "video": _first(shapes_world(config.data, "val_videos", 0.0), config.vae.val_videos),
        }

    # ------------------------------------------------------------------ data

    def next_batch(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"image": B,3,1,c,c, "video": B,3,clip_frames,c,c}`` (absent when 0 items)."""
        batch = {}
        for kind, world, n in (("image", self.images, self.config.batch.images),
                               ("video", self.videos, self.config.batch.videos)):
            key = kind + "s"
            start = self.position[key]
            self.position[key] += n
            if n:
                items = [world[i]["video"] for i in range(start, start + n)]
                batch[kind] = torch.stack([self._window(x, generator) for x in items])
        return batch

    def _window(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random crop (``vae.crop``) of a random ``vae.clip_frames`` window."""
        _, frames, height, width = video.shape
        length = min(self.objective.clip_frames, frames)
        crop_h = self.objective.crop or height
        crop_w = self.objective.crop or width
        t0 = _randint(frames - length + 1, generator)
        y0 = _randint(height - crop_h + 1, generator)
        x0 = _randint(width - crop_w + 1, generator)
        return video[:, t0 : t0 + length, y0 : y0 + crop_h, x0 : x0 + crop_w]

    def data_state(self) -> dict[str, int]:
        return dict(self.position)

    def load_data_state(self, state: dict[str, int]) -> None:
        self.position = {k: int(v) for k, v in state.items()}

    # ------------------------------------------------------------------ objective

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> StepLoss:
        o, device = self.objective, _device(model)
        total = sum(x.numel() for x in batch.values())
        loss = torch.zeros((), device=device)
        parts: dict[str, float] = {}
        vae = _vae(model)
        for kind, video in batch.items():
            video = video.to(device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not o.decoder_only):
                mu, logvar = vae.moments(video)
            logvar = logvar.clamp(-30.0, 20.0)
            z = mu
            if o.sample:
                noise = torch.randn(mu.shape, generator=generator).to(device)  # drawn on CPU
                z = mu + (0.5 * logvar).exp() * noise
            decoded = vae.decode_raw(z)
            err = decoded - video
            w = pixel_detail_weights(video, o.detail_weight) if o.detail_weight else None
            if w is not None:
                l1, mse = _weighted_mean(err.abs(), w), _weighted_mean(err.square(), w)
            else:
                l1, mse = err.abs().mean(), err.square().mean()
            kl = kl_divergence(mu, logvar)
            part = o.l1 * l1 + o.mse * mse + o.kl * kl
            if o.edge:
                edge = edge_error(err, w)
                part = part + o.edge * edge
                parts[f"edge_{kind}"] = edge.item()
            if o.adversarial:
                loss_d, loss_g = model.critic_losses(video, decoded)
                part = part + loss_d + o.adversarial * loss_g
                parts[f"critic_{kind}"], parts[f"adv_{kind}"] = loss_d.item(), loss_g.item()
            loss = loss + part * (video.numel() / total)
            parts.update({f"loss_{kind}": part.item(), f"l1_{kind}": l1.item(),
                          f"mse_{kind}": mse.item(), f"kl_{kind}": kl.item()})
        pixels = sum(x.numel() // x.shape[1] for x in batch.values())
        return StepLoss(loss, parts, pixels)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Posterior-mean reconstructions of the fixed held-aside items at full size."""
        out, vae = {}, _vae(model)
        for kind, video in self.val.items():
            if video is None:
                continue
            video = video.to(_device(model))
            err = vae.decode(vae.encode(video)) - video
            l1, mse = float(err.abs().mean()), float(err.square().mean())
            out[f"val_{kind}_loss"] = self.objective.l1 * l1 + self.objective.mse * mse
            out.update({f"val_{kind}_l1": l1, f"val_{kind}_mse": mse,
                        f"val_{kind}_psnr": psnr(mse)})
        return out

    # ------------------------------------------------------------------ export

    def export(self, model: nn.Module, folder: Path) -> list[Path]:
        return export_vae(_vae(model), self.config, Path(folder), self.kept_stats)


def _freeze_encoder(model: LatentVideoVAE, config: TrainConfig) -> tuple[tuple[float, ...], ...]:
    """Freeze ``model``'s encoder for ``vae.decoder_only``; returns the latent statistics of
    the exported VAE that ``init.file`` names (its ``vae.json``), which the export keeps."""
    if not model.encoder_modules:
        raise CineforgeError(f"vae.decoder_only is not supported for {model.label}; train the "
                             "whole VAE (vae.decoder_only: false)")
    init = Path(config.init.file) if config.init.file else None
    if init is None or init.suffix != ".safetensors" or not (init.parent / "vae.json").is_file():
        raise CineforgeError("vae.decoder_only fine-tunes the decoder of an exported VAE: set "
                             "init to its vae.safetensors, with its vae.json beside it (got "
                             f"init {config.init.file or config.init.run or 'none'})")
    for name in model.encoder_modules:
        model.get_submodule(name).requires_grad_(False)
    kept = read_vae_config(config.model, init.parent / "vae.json")
    return tuple(kept.latents_mean), tuple(kept.latents_std)


@torch.no_grad()
def latent_stats(model: LatentVideoVAE, config: TrainConfig) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of the raw posterior means of ``vae.stats_items`` items of
    the run's ``stats`` world (images and clips mixed as in ``data.image_fraction``)."""
    world = shapes_world(config.data, "stats")
    mus = [model.encode_moments(world[i]["video"][None].to(_device(model)))[0]
           for i in range(config.vae.stats_items)]
    flat = torch.cat([m.transpose(0, 1).flatten(1) for m in mus], dim=1).double()
    return tuple(flat.mean(1).tolist()), tuple(flat.std(1).clamp_min(1e-6).tolist())


def export_vae(model: LatentVideoVAE, config: TrainConfig, folder: Path,
               stats: tuple[tuple[float, ...], ...] | None = None) -> list[Path]:
    """``vae.safetensors`` (fp16) and ``vae.json``: the model's config with the latent
    statistics ``stats`` (default: measured), so its ``encode`` gives roughly zero-mean,
    unit-variance latents."""
    mean, std = stats or latent_stats(model, config)
    model_config = dataclasses.replace(model.config, latents_mean=mean, latents_std=std)
    return [save_weights(model, folder / "vae.safetensors"),
            write_model_config(model_config, folder / "vae.json")]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _first(world, n: int) -> torch.Tensor | None:
    """Items 0..n-1 of a ShapesWorld stacked (all of one kind), or None when n is 0."""
    return torch.stack([world[i]["video"] for i in range(n)]) if n else None


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator)) if n > 1 else 0
