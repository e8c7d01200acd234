"""Few-step generation: the flash (re-noising) solver and adversarial distillation (LADD)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from cineforge import load_pipeline
from cineforge.errors import CineforgeError
from cineforge.families.family import load_model
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WanDiT
from cineforge.sampling import flash_schedule, flash_steps, frame_noise, sample
from cineforge.train.adversarial import adversarial_losses
from cineforge.train.distill import LADD, DiscriminatorHead
from cineforge.train.run import export_run, train
from oracles import perturb
from train_runs import dit_run_config, run_until

# ---------------------------------------------------------------------------- the solver


def test_flash_schedule_is_shifted_even_times():
    sigmas, times = flash_schedule(4, 1.0)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(flash_schedule(4, 3.0)[0], torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    assert torch.equal(times, sigmas[:-1])


def test_flash_steps_renoise_the_clean_estimate_with_fresh_noise():
    """With a velocity that knows the answer x0, every step's x0 is exact and the next state
    is x0 noised to the next time with the next fresh draw; the last state is x0."""
    gen = torch.Generator().manual_seed(0)
    x0, start = torch.randn(2, 4, 3, 4, 4, generator=gen), torch.randn(2, 4, 3, 4, 4, generator=gen)
    draws = [torch.randn(2, 4, 3, 4, 4, generator=gen) for _ in range(3)]
    stream = iter(draws)
    seen = []

    def velocity(x, t):
        seen.append((x.clone(), t.clone()))
        return (x - x0) / t.view(-1, 1, 1, 1, 1)

    sigmas, times = flash_schedule(4, 1.0)
    steps = list(flash_steps(velocity, start, sigmas, times, noise=lambda shape: next(stream)))
    assert [s.t for s in steps] == [1.0, 0.75, 0.5, 0.25] and steps[-1].t_next == 0.0
    torch.testing.assert_close(seen[0][0], start)
    for i, (x, t) in enumerate(seen[1:]):
        assert torch.equal(t, torch.full((2,), sigmas[i + 1].item()))
        torch.testing.assert_close(x, (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * draws[i])
    for step in steps:
        torch.testing.assert_close(step.x0, x0)
    assert torch.equal(steps[-1].x, steps[-1].x0)
    with pytest.raises(CineforgeError, match="needs noise="):
        sample(velocity, start, sigmas, times, solver="flash")


def test_flash_generation_reproduces_by_seed_and_uses_fresh_noise(tmp_path):
    """The pipeline draws the solver's fresh noise from the request's seed: the same seed
    gives the same video, another seed another; a flash run is not the Euler run."""
    pipe = load_pipeline("demo-tiny", weights=_tiny_weights(tmp_path))
    kwargs = dict(frames=9, steps=4, guidance=1.0, solver="flash")
    a, b = pipe("a red circle", seed=1, **kwargs), pipe("a red circle", seed=1, **kwargs)
    assert torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.pixels, pipe("a red circle", seed=2, **kwargs).pixels)
    euler = pipe("a red circle", seed=1, **{**kwargs, "solver": "euler"})
    assert not torch.equal(a.pixels, euler.pixels)


def _tiny_weights(tmp_path):
    from cineforge.families.family import save_components

    preset = get_preset("demo-tiny")
    torch.manual_seed(0)
    dit = preset.family.build("dit", preset.dit).init_weights(torch.Generator().manual_seed(0))
    vae = preset.family.build("vae", preset.vae)
    return save_components(tmp_path / "weights", dit=dit, vae=vae)


# ---------------------------------------------------------------------------- the trunk


def test_hidden_states_are_the_forward_pass():
    preset = get_preset("wan2.1-t2v-tiny")
    dit = WanDiT(dataclasses.replace(preset.dit, num_layers=3)).init_weights(
        torch.Generator().manual_seed(0))
    x, ctx = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 16, dit.config.text_dim)
    t = torch.tensor([0.3, 0.8])
    states, e, text, v = dit.hidden_states(x, t, ctx, (0, 2), velocity=True)
    torch.testing.assert_close(v, dit(x, t, ctx), rtol=0, atol=0)
    assert [h.shape for h in states] == [(2, 3 * 4 * 4, 32)] * 2 and text.shape == (2, 16, 32)
    torch.testing.assert_close(dit.unpatchify(dit.head(states[1], e[:, None]), (3, 4, 4)),
                               v, rtol=0, atol=0)  # the last block's states feed the head
    early, *_, none = dit.hidden_states(x, t, ctx, (0,))
    torch.testing.assert_close(early[0], states[0], rtol=0, atol=0)
    assert none is None
    with pytest.raises(CineforgeError, match="block indices in 0..2"):
        dit.hidden_states(x, t, ctx, (3,))


# ---------------------------------------------------------------------------- the objective


def test_adversarial_losses_are_hinge_and_least_squares():
    real, fake = [torch.tensor([0.5, 2.0])], [torch.tensor([-3.0, 0.0])]
    d, g = adversarial_losses(real, fake, fake, "hinge")
    torch.testing.assert_close(d, torch.tensor((0.5 + 0.0) / 2 + (0.0 + 1.0) / 2))
    torch.testing.assert_close(g, torch.tensor(1.5))
    d, g = adversarial_losses(real, fake, fake, "lsgan")
    torch.testing.assert_close(d, torch.tensor((0.25 + 1.0) / 2 + (9.0 + 0.0) / 2))
    torch.testing.assert_close(g, torch.tensor((16.0 + 1.0) / 2))


def test_discriminator_head_starts_as_a_score_of_the_normed_tokens():
    head = DiscriminatorHead(32, 4)
    x, text, e = torch.randn(2, 12, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    torch.testing.assert_close(head(x, text, e), head.score(head.norm(x))[..., 0])
    with torch.no_grad():  # once the gate opens, the text changes the video tokens' scores
        head.video_modulation.bias.normal_()
    assert not torch.allclose(head(x, text, e), head(x, torch.randn(2, 5, 32), e))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, vae_dir, cache_dir):
    """A tiny teacher: a DiT run of 2 steps, exported."""
    out = tmp_path_factory.mktemp("teacher")
    return train(dit_run_config(out, vae_dir, cache_dir, "steps=2"), progress=False)


def distill_config(out, vae_dir, cache_dir, teacher, *overrides):
    return dit_run_config(out, vae_dir, cache_dir, "task=distill", f"distill.teacher={teacher}",
                          "distill.disc_layers=[0, 1]", "distill.disc_heads=2",
                          "distill.teacher_guidance=3.0", "flow.caption_dropout=0.1", *overrides)


def test_each_term_trains_only_its_own_side(tmp_path, vae_dir, cache_dir, teacher):
    """The discriminator's terms (real and fake) reach the heads and not the student; the
    student's adversarial and distillation terms reach the student and not the heads; the
    teacher never gets a gradient."""
    def grads(*overrides, prepare=lambda model: None):
        from cineforge.train.run import build_task

        config = distill_config(tmp_path / "run", vae_dir, cache_dir, teacher, *overrides)
        task = build_task(config)
        model = task.model
        prepare(model)
        batch = task.next_batch(torch.Generator().manual_seed(0))
        model.zero_grad(set_to_none=True)
        task.loss(model, batch, torch.Generator().manual_seed(1)).loss.backward()
        norm = {part: sum(float(p.grad.abs().sum()) for p in getattr(model, part).parameters()
                          if p.grad is not None) for part in ("student", "heads", "teacher")}
        return norm, model

    both, model = grads()
    assert isinstance(model, LADD) and model.fake is None
    assert both["student"] > 0 and both["heads"] > 0 and both["teacher"] == 0
    assert all(not p.requires_grad for p in model.teacher.parameters())
    kd_only, _ = grads("distill.adversarial_weight=0")  # no adversarial term: no discriminator
    assert kd_only["heads"] == 0 and kd_only["student"] > 0
    adv_only, _ = grads("distill.distill_weight=0")
    assert adv_only["student"] > 0 and adv_only["student"] != both["student"]
    torch.testing.assert_close(torch.tensor(adv_only["heads"]), torch.tensor(both["heads"]))

    # Real and fake both train the heads: with every score inside the hinge's margin, the
    # score bias gets -1 from the real term and +1 from the fake one, which cancel (the
    # student's term reads the heads frozen).
    def constant_scores(model):
        with torch.no_grad():
            for head in model.heads:
                head.score.weight.zero_()
                head.score.bias.fill_(0.1)

    _, model = grads(prepare=constant_scores)
    for head in model.heads:
        assert head.score.bias.grad.abs().item() < 1e-6
        assert head.score.weight.grad.abs().sum() > 0


def test_distill_run_resumes_exactly_and_exports_the_student(tmp_path, vae_dir, cache_dir,
                                                            teacher):
    config = distill_config(tmp_path / "run", vae_dir, cache_dir, teacher, "steps=4")
    exported = train(config, progress=False)
    whole = run_until(config)  # resumes at the end: nothing to do
    half = distill_config(tmp_path / "half", vae_dir, cache_dir, teacher, "steps=4")
    run_until(half, stop=2)
    resumed = run_until(half)
    for name, x in whole.model.state_dict().items():
        assert torch.equal(x, resumed.model.state_dict()[name]), name
    teacher_state = load_file(teacher / "dit.safetensors")
    for name, x in whole.model.teacher.state_dict().items():  # frozen all along
        assert torch.equal(x, teacher_state[name].float()), name
    folder = export_run(tmp_path / "run", tmp_path / "export")
    assert (folder / "dit.safetensors").read_bytes() == (exported / "dit.safetensors").read_bytes()
    student = load_file(folder / "dit.safetensors")
    ema = whole.ema.model.student.state_dict()
    assert student.keys() == ema.keys()
    assert all(torch.equal(student[k].float(), v.half().float()) for k, v in ema.items())
    assert any(not torch.equal(student[k], teacher_state[k]) for k in student)
    assert (folder / "vae.safetensors").is_file()


def test_distill_errors_are_clear(tmp_path, vae_dir, cache_dir, teacher):
    from cineforge.train.run import build_task

    with pytest.raises(CineforgeError, match="is not the DiT that model"):
        build_task(distill_config(tmp_path / "a", vae_dir, cache_dir, teacher,
                                  "model.overrides.num_layers=3"))
    with pytest.raises(CineforgeError, match="name blocks beyond the teacher's 2"):
        build_task(distill_config(tmp_path / "b", vae_dir, cache_dir, teacher,
                                  "distill.disc_layers=[1, 2]"))
    with pytest.raises(CineforgeError, match="distill.loss must be one of"):
        distill_config(tmp_path / "c", vae_dir, cache_dir, teacher, "distill.loss=wgan")


def test_fresh_heads_train_at_their_own_learning_rate(tmp_path, vae_dir, cache_dir, teacher):
    from cineforge.train.optim import build_optimizer
    from cineforge.train.run import build_task

    config = distill_config(tmp_path / "run", vae_dir, cache_dir, teacher,
                            "distill.head_lr_scale=10", "optim.lr=1e-3")
    model = build_task(config).model
    groups = build_optimizer(model, config.optim).param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert [lr_of[id(p)] for p in model.heads.parameters()] == pytest.approx([1e-2] * len(
        list(model.heads.parameters())))
    assert [lr_of[id(p)] for p in model.student.parameters()] == pytest.approx([1e-3] * len(
        list(model.student.parameters())))
    assert not any(id(p) in lr_of for p in model.teacher.parameters())


def test_heads_gradients_are_clipped_apart_from_the_students(tmp_path, vae_dir, cache_dir,
                                                             teacher):
    """Heads with gradients 100x the student's do not scale the student's down: each side
    is clipped to the limit on its own, and the norm reported is the student's."""
    from cineforge.train.optim import grad_norm_
    from cineforge.train.run import build_task

    model = build_task(distill_config(tmp_path / "run", vae_dir, cache_dir, teacher)).model
    for side, size in ((model.student, 1e-3), (model.heads, 1e-1)):
        for p in side.parameters():
            p.grad = torch.full_like(p, size)
    student = torch.cat([p.grad.flatten() for p in model.student.parameters()]).clone()
    heads_norm = torch.cat([p.grad.flatten() for p in model.heads.parameters()]).norm()
    assert heads_norm > 1.0 > student.norm()  # the heads alone exceed the limit

    norm = grad_norm_(model, 1.0)
    assert norm == pytest.approx(float(student.norm()), rel=1e-4)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.student.parameters()]),
                               student)  # under the limit: untouched
    clipped = torch.cat([p.grad.flatten() for p in model.heads.parameters()]).norm()
    assert float(clipped) == pytest.approx(1.0, rel=1e-4)


def test_guidance_distillation_targets_the_guided_teacher_at_the_student_input(
        tmp_path, vae_dir, cache_dir, teacher):
    """The student starts as the teacher, so at guidance 1 the target is its own output
    (loss 0); at guidance 3 the target is the explicitly guided teacher estimate."""
    from cineforge.train.run import build_task

    def first_step(guidance):
        config = distill_config(tmp_path / f"g{guidance}", vae_dir, cache_dir, teacher,
                                "distill.guidance_weight=1", "distill.distill_weight=0",
                                f"distill.teacher_guidance={guidance}")
        task = build_task(config)
        batch = task.next_batch(torch.Generator().manual_seed(0))
        return task, task.loss(task.model, batch, torch.Generator().manual_seed(1)).parts

    assert first_step(1.0)[1]["loss_cfg"] < 1e-10
    task, _ = first_step(3.0)
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 16, 3, 4, 4, generator=gen), torch.tensor([0.9, 0.4])
    ctx = torch.randn(2, task.text_len, 384, generator=gen)
    dit = perturb(copy.deepcopy(task.model.teacher), seed=1)  # text matters (a 2-step run's
    empty = task.empty[None].expand_as(ctx)                   # barely does)
    with torch.no_grad():
        v_c, v_u = dit(x, t, ctx), dit(x, t, empty)
    assert (v_c - v_u).abs().max() > 1e-2
    want = x - t.view(-1, 1, 1, 1, 1) * (v_u + 3.0 * (v_c - v_u))
    torch.testing.assert_close(task._guided_x0(dit, x, t, ctx), want, rtol=1e-5, atol=1e-5)


def test_pseudo_huber_guidance_loss_pulls_far_and_near_items_alike():
    """With c > 0 an item 100x farther from its target gets a gradient of about the same size
    (squared error: 10x larger); c = 0 is the plain mean squared error."""
    from cineforge.train.distill import guidance_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 64, generator=gen)
    estimate = (target + torch.randn(2, 64, generator=gen)
                * torch.tensor([[10.0], [0.1]])).requires_grad_()
    errors = (estimate - target).square().mean(1)
    assert guidance_loss(errors, 0.0).item() == pytest.approx(errors.mean().item())

    def grad_norms(huber):
        (grad,) = torch.autograd.grad(guidance_loss((estimate - target).square().mean(1), huber),
                                      estimate)
        return grad.norm(dim=1)

    far, near = grad_norms(0.0)
    assert far / near == pytest.approx(100, rel=0.3)
    far, near = grad_norms(0.01)
    assert far / near == pytest.approx(1, rel=0.05)
    with pytest.raises(Exception, match="guidance_huber"):
        from cineforge.train.config import DistillObjective
        DistillObjective(guidance_huber=-1)


def test_rollout_inputs_are_where_the_students_own_flash_run_stands(
        tmp_path, vae_dir, cache_dir, teacher):
    """A rolled item's input at step k is state k of the flash solver run by the student from
    the item's noise with the same fresh draws; other items and step 0 keep the noised data;
    a rollout share outside [0, 1] is refused."""
    from cineforge.train.config import DistillObjective
    from cineforge.train.run import build_task

    task = build_task(distill_config(tmp_path / "run", vae_dir, cache_dir, teacher,
                                     "distill.steps=4", "distill.rollout=1.0"))
    student = perturb(copy.deepcopy(task.model.student), seed=3)
    gen = torch.Generator().manual_seed(0)
    n = 6
    noise, data = torch.randn(n, 16, 3, 4, 4, generator=gen), torch.randn(n, 16, 3, 4, 4)
    context = torch.randn(n, task.text_len, 384, generator=gen)
    step = torch.tensor([0, 1, 2, 3, 3, 2])
    rolled = torch.tensor([True, True, True, True, False, True])
    x_s = data + 0.5
    out = task._rolled_inputs(student, x_s, noise, step, rolled, context,
                              torch.Generator().manual_seed(7))

    chosen = torch.tensor([1, 2, 3, 5])  # rolled with a step > 0, drawn for in this order
    share = task.config.flow.frame_noise_share
    draws = torch.Generator().manual_seed(7)
    from cineforge.sampling import frame_noise
    stream = (frame_noise((4, 16, 3, 4, 4), draws, share) for _ in range(3))
    sigmas = torch.cat([task.times, torch.zeros(1)])
    with torch.no_grad():
        states = [s.x for s in flash_steps(lambda x, t: student(x, t, context[chosen]),
                                           noise[chosen], sigmas, task.times,
                                           noise=lambda shape: next(stream))]
    for row, i in enumerate(chosen.tolist()):
        torch.testing.assert_close(out[i], states[step[i] - 1][row], rtol=1e-5, atol=1e-5)
    for i in (0, 4):  # step 0, and an item not rolled
        assert torch.equal(out[i], x_s[i])
    assert (out[3] - states[1][2]).abs().max() > 1e-3  # the step matters
    with pytest.raises(Exception, match="distill.rollout"):
        DistillObjective(rollout=1.5)


def test_guidance_error_weights_the_targets_objects_and_edges(tmp_path, vae_dir, cache_dir,
                                                               teacher):
    """With distill.detail_weight w the error of an element near an object of the target
    weighs 1 + w, elsewhere 1 (the flow loss's weights, from the target); w = 0 is the plain
    mean; a negative weight is refused."""
    from cineforge.train.config import DistillObjective
    from cineforge.train.dit_task import latent_detail_weights
    from cineforge.train.run import build_task

    target = torch.zeros(2, 16, 3, 8, 8)
    target[:, :, :, 2:4, 2:4] = 3.0  # an object: its pixels and their neighbours are salient
    error = torch.zeros_like(target)
    error[0, 0, 0, 3, 3] = 1.0  # item 0: a miss on the object
    error[1, 0, 0, 7, 7] = 1.0  # item 1: the same miss in the flat corner
    tasks = {w: build_task(distill_config(tmp_path / f"w{w}", vae_dir, cache_dir, teacher,
                                          f"distill.detail_weight={w}")) for w in (0.0, 4.0)}
    plain = tasks[0.0]._item_errors(target + error, target)
    torch.testing.assert_close(plain, torch.full((2,), 1.0 / target[0].numel()))
    weighted = tasks[4.0]._item_errors(target + error, target)
    w = latent_detail_weights(target, 4.0, tasks[4.0].config.flow.detail_threshold)
    assert w[0, 0, 0, 3, 3] == 5.0 and w[1, 0, 0, 7, 7] == 1.0
    total = w.expand_as(target)[0].sum()
    torch.testing.assert_close(weighted, torch.stack([5.0 / total, 1.0 / total]))
    with pytest.raises(Exception, match="distill.detail_weight"):
        DistillObjective(detail_weight=-1)


# ---------------------------------------------------------------- the teacher's trajectories


def test_teacher_trajectory_keeps_its_solvers_states_at_the_student_times(tmp_path, teacher):
    """The teacher's guided run over its own schedule with the student's times merged in:
    the sample is that run's end, and the kept states are where it stood at those times
    (the first is the noise); a re-noising solver is refused."""
    from cineforge.families.family import load_model
    from cineforge.sampling import euler_schedule, euler_steps
    from cineforge.sampling.guidance import guided_velocity
    from cineforge.train.distill import teacher_trajectory

    dit = perturb(load_model(get_preset("wan2.1-t2v-tiny"), teacher, "dit"), seed=2)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 16, 3, 4, 4, generator=gen)
    context, empty = torch.randn(2, 32, 384, generator=gen), torch.randn(32, 384, generator=gen)
    keep = flash_schedule(4, 2.0)[1]  # 1, .857, .667, .4
    x0, states = teacher_trajectory(dit, noise, context, empty, solver="euler", steps=4,
                                    shift=3.0, guidance=3.0, keep=keep)
    assert states.shape == (2, 4, 16, 3, 4, 4)
    own = euler_schedule(4, 3.0)[0]  # 1, .95, .86, .60, 0
    grid = torch.tensor(sorted({round(v, 5) for v in own[:-1].tolist() + keep.tolist()},
                               reverse=True) + [0.0])
    assert len(grid) == 4 + 3 + 1  # 1 is in both; the other three student times are added
    velocity = guided_velocity(lambda x, t, context: dit(x, t, context), {"context": context},
                               {"context": empty[None].expand_as(context)}, 3.0)
    with torch.no_grad():
        run = [noise] + [s.x for s in euler_steps(velocity, noise, grid)]
    torch.testing.assert_close(x0, run[-1], rtol=1e-4, atol=1e-4)
    for k, time in enumerate(keep.tolist()):
        at = int(torch.argmin((grid - time).abs()))
        torch.testing.assert_close(states[:, k], run[at], rtol=1e-4, atol=1e-4)
    assert torch.equal(states[:, 0], noise)
    assert (states[:, 3] - states[:, 2]).abs().max() > 1e-2
    with pytest.raises(CineforgeError, match="re-noises"):
        teacher_trajectory(dit, noise, context, empty, solver="flash", steps=4, shift=3.0,
                           guidance=3.0, keep=keep)


def test_sample_cache_resumes_after_a_crash_as_if_never_stopped(tmp_path, cache_dir):
    """A sample cache keeps its source's prompts and attributes with the sampler's latents and
    states; a build that crashed mid-way continues after its last shard and ends equal to an
    uninterrupted one; asking for more items than the source has is refused."""
    from cineforge.data.latents import LatentCache, build_sample_cache

    source = LatentCache(cache_dir)

    def sample(indices, items, fail_at=None):
        if fail_at in indices:
            raise RuntimeError("crash")
        latents = torch.stack([item.latent * 0 + i for i, item in zip(indices, items, strict=True)])
        return latents, torch.stack([latents + k for k in range(3)], dim=1)

    whole = build_sample_cache(tmp_path / "whole", source, 7, sample=sample, meta={"m": 1},
                               shard_size=3)
    with pytest.raises(RuntimeError, match="crash"):
        build_sample_cache(tmp_path / "crashed", source, 7, shard_size=3, meta={"m": 1},
                           sample=lambda i, it: sample(i, it, fail_at=4))
    assert len(LatentCache(tmp_path / "crashed")) == 3  # the first shard survived
    def after_first_shard(indices, items):
        assert min(indices) >= 3, "the written shard was sampled again"
        return sample(indices, items)

    resumed = build_sample_cache(tmp_path / "crashed", source, 7, sample=after_first_shard,
                                 meta={"m": 1}, shard_size=3)
    assert len(whole) == len(resumed) == 7 and whole.complete
    for i in range(7):
        a, b = whole[i], resumed[i]
        assert torch.equal(a.latent, b.latent) and torch.equal(a.states, b.states)
        assert torch.equal(a.latent, torch.full_like(a.latent, i))
        assert a.states.shape == (3, *a.latent.shape)
        assert torch.equal(a.text, source[i].text) and a.caption == source.caption(i)
        assert whole.attributes(i) == source.attributes(i)
    assert torch.equal(whole.empty_text(), source.empty_text())
    assert source[0].states is None
    with pytest.raises(CineforgeError, match="cannot sample 99 items"):
        build_sample_cache(tmp_path / "more", source, 99, sample=sample, meta={})


def test_trajectory_loss_starts_the_student_on_the_teachers_path(tmp_path, vae_dir, cache_dir,
                                                                 teacher):
    """With distill.trajectories the run trains on the teacher's samples: each item's input is
    its trajectory's state at the item's time and the trajectory term is the distance of the
    student's clean estimate from the teacher's sample; the samples are built once and
    reused; trajectory_weight without trajectories is refused."""
    from cineforge.train.config import DistillObjective
    from cineforge.train.run import build_task

    config = distill_config(tmp_path / "run", vae_dir, cache_dir, teacher, "distill.steps=4",
                            "distill.trajectories=8", "distill.trajectory_weight=1",
                            "distill.guidance_weight=0", "distill.distill_weight=0",
                            "distill.adversarial_weight=0")
    task = build_task(config)
    assert len(task.cache) == 8 and task.cache.folder == tmp_path / "run" / "trajectories"
    seen = []
    hook = task.model.student.register_forward_hook(
        lambda module, args, out: seen.append((args[0], args[1], out.detach())))
    batch = task.next_batch(torch.Generator().manual_seed(0))
    parts = task.loss(task.model, batch, torch.Generator().manual_seed(1)).parts
    hook.remove()
    errors = []
    for items, (x, s, v) in zip(batch, seen, strict=True):
        for row, item in enumerate(items):
            k = int(torch.argmin((task.times - s[row]).abs()))
            assert torch.equal(x[row], item.states[k])
            x0_hat = x[row] - s[row] * v[row]
            errors.append(float((x0_hat - item.latent).square().mean()))
    assert parts["loss_traj"] == pytest.approx(sum(errors) / len(errors), rel=1e-4)
    mtime = (task.cache.folder / "index.json").stat().st_mtime_ns
    assert len(build_task(config).cache) == 8  # reused, not rebuilt
    assert (task.cache.folder / "index.json").stat().st_mtime_ns == mtime
    with pytest.raises(Exception, match="needs the teacher's trajectories"):
        DistillObjective(trajectory_weight=1.0)


def _dmd_grads(tmp_path, vae_dir, cache_dir, teacher, *overrides, seed=1):
    """Gradient sums per part of a DMD-only distill run's first step, the task and parts."""
    from cineforge.train.run import build_task

    config = distill_config(tmp_path / "dmd", vae_dir, cache_dir, teacher,
                            "distill.dmd_weight=1", "distill.adversarial_weight=0",
                            "distill.distill_weight=0", *overrides)
    task = build_task(config)
    model = task.model
    batch = task.next_batch(torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    out = task.loss(model, batch, torch.Generator().manual_seed(seed))
    out.loss.backward()
    norm = {part: sum(float(p.grad.abs().sum()) for p in getattr(model, part).parameters()
                      if p.grad is not None) for part in ("student", "fake", "heads", "teacher")}
    return norm, task, out.parts


def test_distribution_matching_moves_the_student_toward_the_guided_teacher(
        tmp_path, vae_dir, cache_dir, teacher):
    """DMD: the fake score starts as the teacher, so without guidance the real and fake
    estimates agree and the student gets no gradient (the fake does); with guidance the
    student's step is the scaled difference of the two estimates, taken by hand here."""
    norm, task, parts = _dmd_grads(tmp_path, vae_dir, cache_dir, teacher,
                                   "distill.teacher_guidance=1")
    assert isinstance(task.model.fake, torch.nn.Module)
    assert norm["student"] < 1e-9 and norm["fake"] > 0
    assert norm["heads"] == 0 and norm["teacher"] == 0
    assert parts["loss_dmd"] < 1e-12 and parts["loss_fake"] > 0

    # By hand: one item, its clean estimate, the DMD step, against the loss's gradient.
    model = task.model
    task.config = dataclasses.replace(task.config, distill=dataclasses.replace(
        task.config.distill, teacher_guidance=3.0))
    perturb(model.teacher, seed=1)  # text matters (a 2-step run's barely does)
    gen = torch.Generator().manual_seed(5)
    x0_hat = torch.randn(2, 16, 3, 4, 4, generator=gen).requires_grad_(True)
    ctx = torch.randn(2, task.text_len, 384, generator=gen)
    draws = torch.Generator().manual_seed(9)
    loss_fake, loss_dmd = task._distribution_matching(model, x0_hat, ctx, draws, True)
    loss_dmd.backward()
    draws = torch.Generator().manual_seed(9)  # the same t and noise, drawn again
    t = 0.02 + 0.96 * torch.rand(2, generator=draws)
    noise = frame_noise((2, 16, 3, 4, 4), draws, task.config.flow.frame_noise_share)
    col = t.view(-1, 1, 1, 1, 1)
    x_t = (1 - col) * x0_hat.detach() + col * noise
    empty = task.empty[None].expand_as(ctx)
    with torch.no_grad():
        v_c, v_u, v_f = (model.teacher(x_t, t, ctx), model.teacher(x_t, t, empty),
                         model.fake(x_t, t, ctx))
    real = x_t - col * (v_u + 3.0 * (v_c - v_u))
    fake = x_t - col * v_f
    scale = (x0_hat.detach() - real).abs().flatten(1).mean(1).view(-1, 1, 1, 1, 1)
    want = (fake - real) / scale / x0_hat.numel()
    assert want.abs().max() > 1e-6
    torch.testing.assert_close(x0_hat.grad, want, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(loss_fake, (v_f - (noise - x0_hat.detach())).square().mean(),
                               rtol=1e-5, atol=1e-7)


def test_distribution_matching_trains_the_fake_more_often_than_the_student(
        tmp_path, vae_dir, cache_dir, teacher):
    """distill.fake_updates k: a step trains the student with probability 1 / k (no
    gradient reaches it otherwise, so AdamW leaves it alone) and the fake every step; the
    fake and the heads are adversaries, clipped and scheduled on their own."""
    from cineforge.train.optim import build_optimizer

    seen = []
    for seed in range(12):
        norm, task, parts = _dmd_grads(tmp_path, vae_dir, cache_dir, teacher,
                                       "distill.fake_updates=4", "distill.fake_lr_scale=5",
                                       "optim.lr=1e-3", seed=seed)
        assert norm["fake"] > 0 and norm["heads"] == 0
        trained = any(p.grad is not None for p in task.model.student.parameters())
        assert trained == ("loss_dmd" in parts)
        seen.append(trained)
    assert 1 <= sum(seen) <= 8  # about 3 of 12
    groups = build_optimizer(task.model, task.config.optim).param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert [lr_of[id(p)] for p in task.model.fake.parameters()] == pytest.approx(
        [5e-3] * len(list(task.model.fake.parameters())))
    assert task.model.adversaries == ("heads", "fake")
    with pytest.raises(CineforgeError, match="fake_updates >= 1"):
        distill_config(tmp_path / "bad", vae_dir, cache_dir, teacher, "distill.dmd_weight=1",
                       "distill.fake_updates=0")


def test_a_shallower_student_starts_from_the_teachers_blocks_and_exports_its_depth(
        tmp_path, vae_dir, cache_dir, teacher):
    """distill.student_layers [1]: the student is the teacher with block 1 only (the other
    weights shared); a run with DMD trains it, and its export loads as a 1-block model."""
    from cineforge.train.run import build_task

    config = distill_config(tmp_path / "run", vae_dir, cache_dir, teacher, "steps=2",
                            "distill.student_layers=[1]", "distill.dmd_weight=1",
                            "distill.adversarial_weight=0", "distill.distill_weight=0")
    model = build_task(config).model
    assert len(model.student.blocks) == 1 and model.student.config.num_layers == 1
    assert len(model.teacher.blocks) == 2 and len(model.fake.blocks) == 2
    for name, x in model.student.state_dict().items():
        source = name.replace("blocks.0.", "blocks.1.")
        assert torch.equal(x, model.teacher.state_dict()[source]), name
    folder = train(config, progress=False)
    student = load_file(folder / "dit.safetensors")
    assert not any(k.startswith("blocks.1.") for k in student)
    assert export_run(tmp_path / "run", tmp_path / "again").is_dir()  # from the checkpoint
    dit = load_model(get_preset(config.model.preset), folder, "dit")
    assert len(dit.blocks) == 1
    ema = load_file(folder / "dit.safetensors")
    assert all(torch.equal(dit.state_dict()[k], v.float()) for k, v in ema.items())
    with pytest.raises(CineforgeError, match="increasing order"):
        distill_config(tmp_path / "bad", vae_dir, cache_dir, teacher,
                       "distill.student_layers=[1, 0]")
    with pytest.raises(CineforgeError, match="student_layers .* beyond the teacher's 2"):
        build_task(distill_config(tmp_path / "far", vae_dir, cache_dir, teacher,
                                  "distill.student_layers=[0, 2]"))


def test_a_cut_student_starts_from_its_init_and_heals_toward_the_uncut_model(
        tmp_path, vae_dir, cache_dir, teacher):
    """distill.student_init: the student is that model (not the teacher) cut to
    student_layers; heal_weight regresses it onto the uncut model's one-call estimate, which
    is 0 uncut and falls as the cut student trains; the uncut model stays frozen."""
    from cineforge.train.dit_task import export_dit
    from cineforge.train.run import build_task

    dit = load_model(get_preset("wan2.1-t2v-tiny"), teacher, "dit")
    (start := tmp_path / "start").mkdir()
    export_dit(perturb(dit, seed=5), teacher, start)

    def task(name, *overrides):
        return build_task(distill_config(
            tmp_path / name, vae_dir, cache_dir, teacher, f"distill.student_init={start}",
            "distill.heal_weight=1", "distill.adversarial_weight=0",
            "distill.distill_weight=0", "optim.lr=1e-3", "optim.warmup=0", *overrides))

    def heal_loss(t):
        batch = t.next_batch(torch.Generator().manual_seed(0))
        return float(t.loss(t.model, batch, torch.Generator().manual_seed(1)).parts["loss_heal"])

    assert heal_loss(task("uncut")) < 1e-10  # the student is the model it regresses onto
    cut = task("cut", "distill.student_layers=[1]", "steps=30")
    model = cut.model
    reference = model.full_depth()
    assert reference is model.reference and len(reference.blocks) == 2
    assert not any(p.requires_grad for p in reference.parameters())
    for name, x in model.student.state_dict().items():
        assert torch.equal(x, reference.state_dict()[name.replace("blocks.0.", "blocks.1.")])
    assert not torch.equal(reference.blocks[1].ffn[0].weight, model.teacher.blocks[1].ffn[0].weight)
    before = heal_loss(cut)
    assert before > 1e-4
    folder = train(cut.config, progress=False)
    trained = task("cut2", "distill.student_layers=[1]")
    trained.model.student.load_state_dict(
        {k: v.float() for k, v in load_file(folder / "dit.safetensors").items()})
    assert heal_loss(trained) < 0.7 * before

    unhealed = task("plain", "distill.student_layers=[1]", "distill.heal_weight=0",
                    "distill.guidance_weight=1").model  # the start itself, cut: no reference
    assert unhealed.reference is None and unhealed.full_depth() is unhealed.teacher
    for name, x in unhealed.student.state_dict().items():
        assert torch.equal(x, reference.state_dict()[name.replace("blocks.0.", "blocks.1.")])

    other = WanDiT(dataclasses.replace(dit.config, num_layers=3))
    (wrong := tmp_path / "wrong").mkdir()
    export_dit(other, teacher, wrong)
    with pytest.raises(CineforgeError, match="student_init .* unlike the teacher"):
        build_task(distill_config(tmp_path / "w", vae_dir, cache_dir, teacher,
                                  f"distill.student_init={wrong}", "distill.heal_weight=1"))
