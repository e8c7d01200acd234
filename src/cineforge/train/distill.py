"""Latent adversarial diffusion distillation (LADD, Sauer et al. 2024; what Kandinsky 4.0 Flash
was trained with): a few-step student from a flow-matching teacher, on cached latents.

The student starts as a copy of the teacher and learns to give a clean sample in one call at
each of the ``distill.steps`` times of ``sampling.flash_schedule``, which the ``flash``
solver walks (re-noising between steps). For clean latents ``x0`` of the cache::

    s       one of the student's times, per item          x_s = (1 - s) x0 + s n
    x0_hat  = x_s - s * student(x_s, s, text)               (no guidance: one call per step)
    t       a discriminator time, logit-normal(disc_mean, disc_std), per item
    real    = (1 - t) x0     + t n'                         fake = (1 - t) x0_hat + t n'

The discriminator is the frozen teacher's trunk (``WanDiT.hidden_states`` at the blocks
``distill.disc_layers``, with its time embedding and embedded text) plus one small trainable
head per block: half a transformer block (a shared norm modulated per stream from the time
embedding, attention of the video tokens over video and text tokens, a gated residual) and a
score per video token. Over heads and tokens, with ``hinge``

    L_D = mean relu(1 - D(real)) + mean relu(1 + D(fake))   (fake detached: trains the heads)
    L_G = -mean D(fake)                                       (heads frozen: trains the student)

or with ``lsgan`` ``L_D = mean (D(real) - 1)^2 + mean D(fake)^2`` and ``L_G = mean (D(fake) -
1)^2``; plus ADD's distillation term, the teacher's guided clean estimate of the fake,

    L_KD = mean (x0_hat - x0_T)^2,    x0_T = fake - t * (v_u + w (v_c - v_u))   (no gradient)

with ``w = distill.teacher_guidance`` and the empty prompt for ``v_u``; and guidance
distillation at the student's own input (Meng et al. 2023), the teacher's guided clean
estimate of ``x_s``: ``L_CFG = mean (x0_hat - (x_s - s * v_guided(x_s, s)))^2`` (or, with
``distill.guidance_huber`` c > 0, the mean over items of ``sqrt(e + c^2) - c`` of each item's
squared error e, which keeps the far targets at ``s = 1`` from drowning the other times). With
``L_CFG`` the student learns what the teacher's 4-step flash run with CFG gives (on the demo
that run scores within 3 points of the 20-step UniPC run) in one call per step. With
``distill.rollout`` > 0 that share of the items takes as ``x_s`` not the data noised to ``s``
but where the student's own flash run from noise stands at ``s`` (no gradient): the input it
gets when sampling, whose early estimates are blurred, not sharp data under noise. With
``distill.detail_weight`` w > 0 each item's error weighs the elements near its target's
objects and edges ``1 + w`` (as the flow loss's ``flow.detail_weight``).

``L_CFG``'s target is the teacher's one-call estimate, so a student that learns it perfectly
samples like the teacher's own 4-step flash run, no better. With ``distill.trajectories`` the
run trains on the teacher's own samples instead (``teacher_trajectory``: its preset's solver
run to the end, guided, from noise drawn per item, keeping its states at the student's
times; built once into a cache beside the run): ``x0`` is the teacher's sample, ``x_s`` its
solver's state at ``s``, and

    L_TRAJ = mean (x0_hat(x_s) - x0)^2         (detail-weighted and Huber as L_CFG)

asks the student to jump in one call to where the teacher's whole run from ``x_s`` ends.
A student cut to fewer blocks (``distill.student_layers``) of a model (``distill.student_init``,
default the teacher) can learn back what the left-out blocks did from that uncut model ``U``:

    L_HEAL = mean (x0_hat - (x_s - s * U(x_s, s, text)))^2       (no gradient into U)

One backward pass of ``L_D + adversarial_weight * L_G + distill_weight * L_KD +
guidance_weight * L_CFG + trajectory_weight * L_TRAJ + heal_weight * L_HEAL`` (and DMD's
terms, ``_distribution_matching``) trains student and heads together:
each term reaches only its own side. The gradient of ``L_G`` flows through the frozen trunk
into the student; the teacher's weights never change.

Validation runs the EMA student at each of its times on the held-aside items with fixed
noise: ``val_{kind}_x0@s`` is the mean squared error of its clean estimate. The export is the
EMA student as a DiT weights folder (with the cache's VAE), loadable as the teacher's preset
with the ``flash`` solver.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.data.latents import CacheItem, LatentCache, LatentItems, build_sample_cache
from cineforge.errors import CineforgeError
from cineforge.families.family import load_model, weights_folder
from cineforge.families.registry import get_preset
from cineforge.models.layers import modulate
from cineforge.sampling import flash_schedule, flash_steps, frame_noise, get_solver
from cineforge.sampling.guidance import guided_velocity
from cineforge.sampling.schedules import shift_time
from cineforge.sampling.solvers import solver_steps
from cineforge.train.adversarial import adversarial_losses, frozen_call
from cineforge.train.config import TrainConfig
from cineforge.train.dit_task import DiTTask, export_dit, latent_detail_weights, latent_tokens
from cineforge.train.flow import sample_times
from cineforge.train.loop import StepLoss
from cineforge.train.models import model_config as model_config_of

_VAL_SEED = 3_141_592  # the validation noise's seed, offset from the run's seed
_TRAJECTORY_SEED = 2_718_281  # the trajectories' noise: item i draws from seed + this + i


class DiscriminatorHead(nn.Module):
    """Half a transformer block and a per-token score, on a trunk's token states.

    ``x`` (B, L, dim) video tokens, ``text`` (B, M, dim), ``e`` (B, dim) time embedding::

        shift_v, scale_v, gate = Linear(SiLU(e)),  shift_t, scale_t = Linear(SiLU(e))
        h_v = LN(x) (1 + scale_v) + shift_v,       h_t = LN(text) (1 + scale_t) + shift_t
        x   = x + gate * Attn(q = h_v, kv = [h_v; h_t])
        score = Linear(LN(x))                       B, L

    The modulations start at zero (so the gate is closed and the first scores read the
    trunk's tokens directly)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise CineforgeError(f"distill.disc_heads {num_heads} must divide the DiT's width "
                                 f"{dim}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.video_modulation = nn.Linear(dim, 3 * dim)
        self.text_modulation = nn.Linear(dim, 2 * dim)
        for layer in (self.video_modulation, self.text_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        e = F.silu(e.to(x.dtype))[:, None]
        shift_v, scale_v, gate = self.video_modulation(e).chunk(3, dim=-1)
        shift_t, scale_t = self.text_modulation(e).chunk(2, dim=-1)
        h_v = modulate(self.norm(x), shift_v, scale_v)
        h_t = modulate(self.norm(text), shift_t, scale_t)
        q = self._heads(self.query(h_v))
        k, v = (self._heads(part) for part in
                self.key_value(torch.cat([h_v, h_t], dim=1)).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + gate * self.out(attended)
        return self.score(self.norm(x))[..., 0]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class LADD(nn.Module):
    """What a distillation run trains: the ``student``, the discriminator ``heads`` and, for
    distribution matching, the ``fake`` score model; the ``teacher`` (also the
    discriminator's trunk and DMD's real score) is frozen."""

    def __init__(self, teacher: nn.Module, layers: tuple[int, ...], heads: int,
                 head_lr_scale: float = 1.0, *, fake_score: bool = False,
                 fake_lr_scale: float = 1.0, student_layers: tuple[int, ...] = (),
                 start: nn.Module | None = None, reference: bool = False) -> None:
        super().__init__()
        # read by train.optim: build_optimizer's learning rates, grad_norm_'s clip groups
        self.lr_scales = {"heads": head_lr_scale, "fake": fake_lr_scale}
        self.adversaries = ("heads", "fake")
        # the student: ``start`` (default the teacher) cut to ``student_layers``; with
        # ``reference`` the uncut ``start`` stays beside it, frozen, as its healing target
        source = teacher if start is None else start
        self.reference = start.requires_grad_(False).eval() \
            if reference and start is not None else None
        # ``start`` no one else keeps becomes the student itself: no second copy in memory
        kept = start is None or self.reference is not None
        self.student = keep_blocks(copy.deepcopy(source) if kept else source,
                                   student_layers).requires_grad_(True)
        # DMD's fake score model: the flow of the student's samples, from the teacher's weights
        self.fake = copy.deepcopy(teacher).requires_grad_(True) if fake_score else None
        self.teacher = teacher.requires_grad_(False).eval()
        self.layers = tuple(layers)
        dim = teacher.config.dim
        self.heads = nn.ModuleList(DiscriminatorHead(dim, heads) for _ in layers)

    def train(self, mode: bool = True) -> LADD:
        super().train(mode)
        self.teacher.eval()
        if self.reference is not None:
            self.reference.eval()
        return self

    def full_depth(self) -> nn.Module:
        """The uncut model the student was made from (its ``heal_weight`` target)."""
        return self.teacher if self.reference is None else self.reference

    def trunk(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
              velocity: bool = False):
        """The teacher's states at the heads' blocks, time embedding and embedded text for
        noised latents ``x`` at times ``t`` (and, with ``velocity``, its velocity from the
        same pass): ``WanDiT.hidden_states``."""
        return self.teacher.hidden_states(x, t, context, self.layers, velocity=velocity)

    def scores(self, states: list[torch.Tensor], e: torch.Tensor, text: torch.Tensor, *,
               frozen_heads: bool = False) -> list[torch.Tensor]:
        """Per-token scores (B, L) of every head on ``trunk`` outputs; ``frozen_heads``: the
        heads' weights take no gradient (the student's term)."""
        out = []
        for head, h in zip(self.heads, states, strict=True):
            out.append(frozen_call(head, h, text, e) if frozen_heads else head(h, text, e))
        return out


def guidance_loss(errors: torch.Tensor, huber: float) -> torch.Tensor:
    """``L_CFG`` from each item's mean squared error ``errors`` (N,): their mean, or with
    ``huber`` c > 0 the mean of their pseudo-Huber ``sqrt(e + c^2) - c``, whose gradient in
    the estimate has about the same size for every item far from its target (> c)."""
    if huber == 0:
        return errors.mean()
    return ((errors + huber**2).sqrt() - huber).mean()


class DistillTask(DiTTask):
    """LADD on a DiT latent cache (see the module docstring)."""

    name = "distill"

    def __init__(self, config: TrainConfig, cache: LatentItems) -> None:
        super().__init__(config, cache)
        d = config.distill
        if config.flow.packing:
            raise CineforgeError("a distill run takes padded batches; set flow.packing: false")
        if self.empty is None and (d.distill_weight or d.guidance_weight or d.dmd_weight) \
                and d.teacher_guidance != 1:
            raise CineforgeError(f"{cache.folder} has no empty-prompt states for the teacher's "
                                 "guidance; set distill.teacher_guidance: 1 or rebuild the cache")
        folder = teacher_folder(config)
        teacher = load_model(get_preset(config.model.preset), folder, "dit")
        if teacher.config != model_config_of(config.model, "dit")[1]:
            raise CineforgeError(f"the teacher in {folder} is not the DiT that model (preset "
                                 "and overrides) describes; the student is a copy of the "
                                 "teacher, so make model match it")
        for name, layers in (("disc_layers", d.disc_layers), ("student_layers", d.student_layers)):
            if max(layers, default=0) >= teacher.config.num_layers:
                raise CineforgeError(f"distill.{name} {layers} name blocks beyond the "
                                     f"teacher's {teacher.config.num_layers}")
        start = None
        if d.student_init:
            start = load_model(get_preset(config.model.preset), Path(d.student_init), "dit")
            if start.config != teacher.config:
                raise CineforgeError(f"distill.student_init {d.student_init} holds a DiT "
                                     f"unlike the teacher in {folder}; the student starts "
                                     "from a model of the teacher's architecture (cut with "
                                     "distill.student_layers)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the heads' default init draws from the global RNG
            self.model = LADD(teacher, d.disc_layers, d.disc_heads, d.head_lr_scale,
                              fake_score=bool(d.dmd_weight), fake_lr_scale=d.fake_lr_scale,
                              student_layers=d.student_layers, start=start,
                              reference=bool(d.heal_weight))
        self.teacher_folder = folder
        if d.trajectory_weight and cache[0].states is None:
            raise CineforgeError(f"distill.trajectory_weight trains on the teacher's samples, "
                                 f"but {cache.folder} holds data; build the task with "
                                 "build_task (it samples distill.trajectories items first)")
        self.times = flash_schedule(d.steps, d.shift)[1]
        self.val = self._student_validation_set()

    # ------------------------------------------------------------------ objective

    def loss(self, model: LADD, batch: list[list[CacheItem]],
             generator: torch.Generator) -> StepLoss:
        d, f = self.config.distill, self.config.flow
        device = next(model.parameters()).device
        total = sum(len(items) for items in batch)
        loss, tokens = torch.zeros((), device=device), 0
        sums: dict[str, float] = {}
        # DMD's two time-scale rule: the fake score trains every step, the student on 1 / k
        train_student = not (d.dmd_weight and d.fake_updates > 1) \
            or bool(torch.rand(1, generator=generator) * d.fake_updates < 1)
        for items in batch:
            n = len(items)
            x0 = torch.stack([item.latent for item in items])
            step = torch.randint(len(self.times), (n,), generator=generator)
            s = self.times[step]
            t = sample_times(n, generator, mean=d.disc_mean, std=d.disc_std)
            noise = frame_noise(tuple(x0.shape), generator, f.frame_noise_share)
            renoise = frame_noise(tuple(x0.shape), generator, f.frame_noise_share)
            context = torch.stack(self.contexts(items, torch.ones(n, dtype=torch.bool)))
            x0, s, t, noise, renoise, context = (
                v.to(device) for v in (x0, s, t, noise, renoise, context))

            x_s = _noised(x0, noise, s)
            on_path = torch.zeros(n, dtype=torch.bool)
            if items[0].states is not None:  # the teacher's samples: its states at s
                x_s = torch.stack([item.states[k] for item, k in
                                   zip(items, step.tolist(), strict=True)]).to(x_s)
                on_path = torch.ones(n, dtype=torch.bool)
            if d.rollout:
                rolled = torch.rand(n, generator=generator) < d.rollout
                x_s = self._rolled_inputs(model.student, x_s, noise, step, rolled, context,
                                          generator)
                on_path &= ~rolled
            with torch.set_grad_enabled(train_student and torch.is_grad_enabled()):
                x0_hat = x_s - _col(s, x_s) * model.student(x_s, s, context)
            part, parts = torch.zeros((), device=device), {}
            if d.dmd_weight:
                loss_fake, loss_dmd = self._distribution_matching(model, x0_hat, context,
                                                                  generator, train_student)
                part, parts["loss_fake"] = part + loss_fake, loss_fake
                if loss_dmd is not None:
                    part, parts["loss_dmd"] = part + d.dmd_weight * loss_dmd, loss_dmd
            if train_student:
                part = part + self._student_terms(model, items, x0, x0_hat, x_s, s, t, renoise,
                                                  context, on_path, parts)
            loss = loss + part * (n / total)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.item() * n / total
            tokens += sum(latent_tokens(tuple(item.latent.shape), self.patch) for item in items)
        return StepLoss(loss, sums, tokens)

    def _student_terms(self, model: LADD, items: list[CacheItem], x0: torch.Tensor,
                       x0_hat: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor,
                       t: torch.Tensor, renoise: torch.Tensor, context: torch.Tensor,
                       on_path: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The discriminator's and the student's terms but DMD's (their weighted sum), their
        values added to ``parts``. The discriminator runs only where its term is weighted."""
        d, device, n = self.config.distill, x0.device, len(items)
        part = torch.zeros((), device=device)
        real, fake = _noised(x0, renoise, t), _noised(x0_hat, renoise, t)
        v_c = None
        if d.adversarial_weight:
            with torch.no_grad():
                real_states = model.trunk(real, t, context)[:3]
            real_scores = model.scores(*real_states)
            # One trunk pass over the fake serves both players (the trunk is frozen, so its
            # detached states are those of the detached fake) and, with distillation, gives
            # the teacher's conditional velocity for the target.
            states, e, text, v_c = model.trunk(fake, t, context, velocity=bool(d.distill_weight))
            fake_scores = model.scores([h.detach() for h in states], e.detach(), text.detach())
            student_scores = model.scores(states, e, text, frozen_heads=True)
            loss_d, loss_g = adversarial_losses(real_scores, fake_scores, student_scores, d.loss)
            part = part + loss_d + d.adversarial_weight * loss_g
            parts |= {"loss_d": loss_d, "loss_g": loss_g,
                      "real_score": torch.stack([r.mean() for r in real_scores]).mean(),
                      "fake_score": torch.stack([x.mean() for x in fake_scores]).mean()}
        if d.distill_weight:
            if v_c is None:
                with torch.no_grad():
                    v_c = model.teacher(fake.detach(), t, context)
            target = self._teacher_x0(model.teacher, fake.detach(), t, context, v_c.detach())
            loss_kd = (x0_hat - target).square().mean()
            part = part + d.distill_weight * loss_kd
            parts["loss_kd"] = loss_kd
        if d.guidance_weight:
            target = self._guided_x0(model.teacher, x_s, s, context)
            errors = self._item_errors(x0_hat, target)
            part = part + d.guidance_weight * guidance_loss(errors, d.guidance_huber)
            parts["loss_cfg"] = errors.mean()
        if d.heal_weight:
            with torch.no_grad():
                target = x_s - _col(s, x_s) * model.full_depth()(x_s, s, context)
            loss_heal = (x0_hat - target).square().mean()
            part = part + d.heal_weight * loss_heal
            parts["loss_heal"] = loss_heal
        if d.trajectory_weight and bool(on_path.any()):
            on = on_path.to(device)
            errors = self._item_errors(x0_hat[on], x0[on])
            part = part + d.trajectory_weight * guidance_loss(errors, d.guidance_huber) \
                * (len(errors) / n)
            parts["loss_traj"] = errors.mean()
        return part

    def _distribution_matching(self, model: LADD, x0_hat: torch.Tensor, context: torch.Tensor,
                               generator: torch.Generator, train_student: bool
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(L_FAKE, L_DMD)`` for the student's clean estimates ``x0_hat`` (DMD2's form,
        in flow time). With ``x_t = (1 - t) sg(x0_hat) + t n'``, ``t`` from
        ``U(0.02, 0.98)`` shifted by ``distill.dmd_shift``::

            L_FAKE = mean (fake(x_t, t) - (n' - sg(x0_hat)))^2        trains the fake only
            g      = (x0_fake - x0_real) / mean|sg(x0_hat) - x0_real|  per item, no gradient
            L_DMD  = mean (x0_hat - sg(x0_hat - g))^2 / 2              trains the student only

        ``x0_real`` is the teacher's clean estimate of ``x_t`` guided by
        ``distill.teacher_guidance``, ``x0_fake`` the fake's: ``g`` is the gradient of the KL
        divergence from the teacher's distribution to the student's, at ``x0_hat``, up to
        scale, so the student's samples move toward the teacher's modes and away from its own.
        ``L_DMD`` is None when this step leaves the student alone."""
        d = self.config.distill
        n = x0_hat.shape[0]
        t = shift_time(0.02 + 0.96 * torch.rand(n, generator=generator), d.dmd_shift)
        noise = frame_noise(tuple(x0_hat.shape), generator, self.config.flow.frame_noise_share)
        t, noise = t.to(x0_hat.device), noise.to(x0_hat)
        sample = x0_hat.detach()
        x_t = _noised(sample, noise, t)
        v_fake = model.fake(x_t, t, context)
        loss_fake = (v_fake - (noise - sample)).square().mean()
        if not train_student:
            return loss_fake, None
        with torch.no_grad():
            real = self._guided_x0(model.teacher, x_t, t, context)
            fake = x_t - _col(t, x_t) * v_fake
            scale = (sample - real).abs().flatten(1).mean(1).clamp_min(1e-6)
            step = (fake - real) / _col(scale, fake)
        return loss_fake, 0.5 * (x0_hat - (sample - step)).square().mean()

    def _rolled_inputs(self, student: nn.Module, x_s: torch.Tensor, noise: torch.Tensor,
                       step: torch.Tensor, rolled: torch.Tensor, context: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
        """``x_s`` with the ``rolled`` items replaced by where the student's own flash run
        (``sampling.flash_steps``, as at sampling; fresh draws from ``generator``; no gradient)
        from their ``noise`` stands at their ``step``. Step 0 is the noise itself."""
        chosen = torch.nonzero(rolled & (step > 0)).flatten()
        if len(chosen) == 0:
            return x_s
        share = self.config.flow.frame_noise_share
        k, c = step[chosen].tolist(), context[chosen]
        sigmas = torch.cat([self.times, self.times.new_zeros(1)]).to(noise.device)
        states = []
        with torch.no_grad():
            for state in flash_steps(lambda x, t: student(x, t, c), noise[chosen], sigmas,
                                     sigmas[:-1],
                                     noise=lambda shape: frame_noise(shape, generator, share)):
                states.append(state.x)
                if len(states) == max(k):
                    break
        out = x_s.clone()
        out[chosen] = torch.stack([states[j - 1][row] for row, j in enumerate(k)]).to(out)
        return out

    def _item_errors(self, x0_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each item's mean squared error against its target, weighted by the target's
        detail weights (``distill.detail_weight``) when they are on."""
        squared = (x0_hat - target).square()
        w = self.config.distill.detail_weight
        if not w:
            return squared.flatten(1).mean(1)
        weights = latent_detail_weights(target, w, self.config.flow.detail_threshold)
        weights = weights.expand_as(squared)
        return (weights * squared).flatten(1).sum(1) / weights.flatten(1).sum(1)

    def _teacher_x0(self, teacher: nn.Module, x: torch.Tensor, t: torch.Tensor,
                    context: torch.Tensor, v_c: torch.Tensor) -> torch.Tensor:
        """The teacher's clean estimate of ``x`` at ``t`` from its conditional velocity
        ``v_c``, guided by ``teacher_guidance`` against the empty prompt."""
        w = self.config.distill.teacher_guidance
        v = v_c
        if w != 1:
            with torch.no_grad():
                empty = self.empty.to(context)[None].expand_as(context)
                v = v_c + (w - 1) * (v_c - teacher(x, t, empty))
        return x - _col(t, x) * v

    def _guided_x0(self, teacher: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   context: torch.Tensor) -> torch.Tensor:
        """The teacher's guided clean estimate of ``x`` at ``t`` (cond and uncond in one
        batch), without gradient."""
        velocity = _guided(teacher, context, self.empty.to(context),
                           self.config.distill.teacher_guidance)
        with torch.no_grad():
            return x - _col(t, x) * velocity(x, t)

    # ------------------------------------------------------------------ validation

    def _student_validation_set(self) -> list[tuple]:
        """Per held-aside item: its kind, x0 and noise repeated over the student's times, the
        times and the context (noise fixed by the run's seed)."""
        generator = torch.Generator().manual_seed(self.config.seed + _VAL_SEED)
        n = len(self.times)
        out = []
        for kind, x0, _, _, context in self.val:
            x0, context = x0[:1].expand(n, *x0.shape[1:]), context[:1].expand(n, *context.shape[1:])
            noise = frame_noise(tuple(x0.shape), generator, self.config.flow.frame_noise_share)
            out.append((kind, x0, noise, self.times, context))
        return out

    @torch.no_grad()
    def validate(self, model: LADD) -> dict[str, float]:
        student = model.student
        device = next(student.parameters()).device
        per_kind: dict[str, list[torch.Tensor]] = {}
        for kind, x0, noise, times, context in self.val:
            x0, noise, times, context = (v.to(device) for v in (x0, noise, times, context))
            x_s = _noised(x0, noise, times)
            x0_hat = x_s - _col(times, x_s) * student(x_s, times, context)
            per_kind.setdefault(kind, []).append((x0_hat - x0).square().flatten(1).mean(1).cpu())
        out: dict[str, Any] = {}
        for kind, errors in per_kind.items():
            per_time = torch.stack(errors).mean(0)
            out[f"val_{kind}_x0"] = float(per_time.mean())
            out |= {f"val_{kind}_x0@{s:.3g}": float(e)
                    for s, e in zip(self.times.tolist(), per_time, strict=True)}
        return out

    # ------------------------------------------------------------------ export

    def export(self, model: LADD, folder: Path) -> list[Path]:
        return export_dit(model.student, Path(self.config.cache.vae), Path(folder))


@torch.no_grad()
def teacher_trajectory(teacher: nn.Module, noise: torch.Tensor, context: torch.Tensor,
                       empty: torch.Tensor, *, solver: str, steps: int, shift: float,
                       guidance: float, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's guided run from ``noise`` (B, C, T, H, W) with ``solver`` over its own
    schedule of ``steps`` at ``shift`` with the times ``keep`` (descending, in (0, 1]) added:
    ``(x0 B,C,T,H,W, states B,K,C,T,H,W)``, its sample and the states it evaluated the model
    at at each of ``keep``'s K times (the first is ``noise`` itself when ``keep`` starts at 1).
    ``context`` (B, L, D) and ``empty`` (L, D): the prompt's and the empty prompt's states."""
    method = get_solver(solver)
    if method.fresh_noise:
        raise CineforgeError(f"the teacher's solver {solver!r} re-noises; its runs are no "
                             "trajectories to distil (use euler or unipc)")
    sigmas = method.schedule(steps, shift)[0][:-1]
    grid = torch.cat([sigmas, keep.to(sigmas)]).clamp(max=1.0)
    grid = torch.unique(grid, sorted=True).flip(0)  # descending, the kept times merged in
    grid = grid[torch.cat([torch.ones(1, dtype=torch.bool), grid[1:] < grid[:-1] - 1e-4])]
    at = [int(torch.argmin((grid - k).abs())) for k in keep.tolist()]
    velocity = _guided(teacher, context, empty, guidance)
    states: list[torch.Tensor] = []  # the state of each model evaluation, in grid order

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        states.append(x)
        return velocity(x, t)

    x = noise
    for step in solver_steps(method, recording, noise, torch.cat([grid, grid.new_zeros(1)])):
        x = step.x
    return x, torch.stack([states[i] for i in at], dim=1)


def ensure_trajectories(config: TrainConfig, cache: LatentItems, *,
                        progress: bool = False) -> LatentCache:
    """The teacher's samples of ``cache``'s first ``distill.trajectories`` prompts and shapes
    with their states at the student's times (``teacher_trajectory``), built or completed in
    ``distill.trajectory_dir`` (default ``{out}/trajectories``) and reused after."""
    import hashlib

    from cineforge.train.run import writable_folder

    d, f = config.distill, config.flow
    preset = get_preset(config.model.preset)
    teacher_dir = teacher_folder(config)
    folder = Path(d.trajectory_dir) if d.trajectory_dir else Path(config.out) / "trajectories"
    keep = flash_schedule(d.steps, d.shift)[1]
    sampler = preset.sampler
    digest = hashlib.sha256()
    with open(teacher_dir / "dit.safetensors", "rb") as weights:  # streamed: 14B is 28 GB
        for block in iter(lambda: weights.read(1 << 24), b""):
            digest.update(block)
    meta = {"teacher": digest.hexdigest(), "solver": sampler.solver,
            "steps": sampler.steps, "shift": sampler.shift, "guidance": d.teacher_guidance,
            "times": [round(float(k), 6) for k in keep], "seed": config.seed,
            "frame_noise_share": f.frame_noise_share, "source": str(cache.folder)}
    done = (folder / "index.json").is_file() and LatentCache(folder).complete
    if not done:
        writable_folder(folder, "trajectory folder", "set distill.trajectory_dir to another "
                        "folder")
    loaded: dict[str, Any] = {}
    text_len = model_config_of(config.model, "dit")[1].text_len

    def sample(indices: list[int], items: list[CacheItem]) -> tuple[torch.Tensor, torch.Tensor]:
        from cineforge.families.wan.dit import pad_context

        if "teacher" not in loaded:
            loaded["teacher"] = load_model(preset, teacher_dir, "dit").eval()
            loaded["empty"] = pad_context(cache.empty_text()[None], text_len)[0]
        noise = torch.cat([frame_noise((1, *item.latent.shape), torch.Generator().manual_seed(
            config.seed + _TRAJECTORY_SEED + i), f.frame_noise_share)
            for i, item in zip(indices, items, strict=True)])
        context = torch.cat([pad_context(item.text[None], text_len) for item in items])
        return teacher_trajectory(loaded["teacher"], noise, context, loaded["empty"],
                                  solver=sampler.solver, steps=sampler.steps,
                                  shift=sampler.shift, guidance=d.teacher_guidance, keep=keep)

    return build_sample_cache(folder, cache, d.trajectories, sample=sample, meta=meta,
                              shard_size=config.cache.shard_size, progress=progress)


def teacher_folder(config: TrainConfig) -> Path:
    """The teacher's weights folder: ``distill.teacher``, else the preset's own weights."""
    return weights_folder(get_preset(config.model.preset), config.distill.teacher or None)


def load_student(config: TrainConfig, state: dict[str, torch.Tensor], *, what: str) -> nn.Module:
    """The student of a distill run's ``LADD`` state dict (its ``student.`` entries), built
    like its teacher (the teacher folder's ``dit.json``)."""
    from cineforge.weights.files import read_model_config
    from cineforge.weights.keymap import load_strict

    preset = get_preset(config.model.preset)
    json = teacher_folder(config) / "dit.json"
    dit_config = read_model_config(type(preset.dit), json) if json.is_file() else preset.dit
    if config.distill.student_layers:
        dit_config = dataclasses.replace(dit_config,
                                         num_layers=len(config.distill.student_layers))
    with torch.device("meta"):
        student = preset.family.build("dit", dit_config)
    prefix = "student."
    load_strict(student, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                dtype=torch.float32, what=what)
    return student


def keep_blocks(dit: nn.Module, layers: tuple[int, ...]) -> nn.Module:
    """``dit`` (a Wan-style DiT: ``blocks``, ``config.num_layers``) with only its blocks
    ``layers``, in that order; all of them when ``layers`` is empty. In place."""
    if layers:
        dit.blocks = nn.ModuleList(dit.blocks[i] for i in layers)
        dit.config = dataclasses.replace(dit.config, num_layers=len(layers))
    return dit


def _guided(teacher: nn.Module, context: torch.Tensor, empty: torch.Tensor, scale: float):
    """``velocity(x, t)`` of the teacher guided by ``scale`` against the empty prompt's
    states ``empty`` (L, D), cond and uncond in one batch (``sampling.guided_velocity``)."""
    return guided_velocity(lambda x, t, context: teacher(x, t, context), {"context": context},
                           {"context": empty[None].expand_as(context)}, scale)


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Times (B,) as a column broadcasting over ``like``'s other dimensions."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = _col(t, x0)
    return (1 - t) * x0 + t * noise
