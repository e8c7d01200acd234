"""cineforge.sampling against diffusers' schedulers (the oracle), plus guidance and noise."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from cineforge.errors import CineforgeError
from cineforge.sampling import (
    classifier_free_guidance,
    euler_schedule,
    euler_steps,
    flow_sigmas,
    frame_noise,
    get_solver,
    guided_velocity,
    initial_noise,
    sample,
    unipc_schedule,
    unipc_steps,
)

STEPS_SHIFTS = [(s, sh) for s in (1, 2, 4, 10, 25) for sh in (1.0, 3.0, 5.0)]


def _unipc_oracle(shift: float) -> UniPCMultistepScheduler:
    """The scheduler configuration of the official Wan 2.1 diffusers checkpoints."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )


def _linear_velocity(seed: int = 0):
    """A deterministic velocity: a random linear map of x plus a t-dependent drift."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(8, 8, generator=g) * 0.3
    drift = torch.randn(8, generator=g)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ weight.T + torch.cos(3 * t)[:, None] * drift - t[:, None] * x

    return velocity


@pytest.mark.parametrize(("steps", "shift"), STEPS_SHIFTS)
def test_schedules_equal_diffusers(steps, shift):
    euler = FlowMatchEulerDiscreteScheduler(shift=shift)
    euler.set_timesteps(steps)
    assert torch.equal(flow_sigmas(steps, shift), euler.sigmas)
    sigmas, times = euler_schedule(steps, shift)
    assert torch.equal(sigmas * 1000, torch.cat([euler.timesteps, torch.zeros(1)]))
    assert torch.equal(times, sigmas[:-1])

    unipc = _unipc_oracle(shift)
    unipc.set_timesteps(steps)
    sigmas, times = unipc_schedule(steps, shift)
    assert torch.equal(sigmas, unipc.sigmas)
    assert torch.equal((times.double() * 1000).round().long(), unipc.timesteps)


def test_flow_sigmas_known_values():
    # shift 3, 4 steps: timesteps [1000, 857.69, 602.15, 8.93] (MACHINE-NOTES)
    expected = torch.tensor([1.0, 0.8576923, 0.6021506, 0.0089286, 0.0])
    torch.testing.assert_close(flow_sigmas(4, 3.0), expected, atol=1e-6, rtol=0)
    sigmas, times = unipc_schedule(4, 3.0)
    assert sigmas[0] == torch.tensor(1.0 - 1e-6)
    assert torch.equal(times * 1000, torch.tensor([999.0, 900.0, 750.0, 500.0]))


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_steps_raise(steps):
    with pytest.raises(CineforgeError, match="steps"):
        flow_sigmas(steps)
    with pytest.raises(CineforgeError, match="steps"):
        unipc_schedule(steps, 3.0)


@pytest.mark.parametrize("steps", [1, 4, 10, 25])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_euler_matches_diffusers_step(steps, shift):
    velocity = _linear_velocity()
    x = initial_noise((3, 8), torch.Generator().manual_seed(1))
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    sigmas, times = euler_schedule(steps, shift)
    ref = x
    worst = 0.0
    for step, t in zip(euler_steps(velocity, x, sigmas, times), sched.timesteps, strict=True):
        v = velocity(ref, (t / 1000).expand(3))  # diffusers hands the model t in 0..1000
        ref = sched.step(v, t, ref).prev_sample
        worst = max(worst, (step.x - ref).abs().max().item())
    assert worst <= 1e-5
    assert step.index == steps - 1 and step.t_next == 0.0


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_unipc_matches_diffusers_step(steps, shift):
    velocity = _linear_velocity()
    x = initial_noise((3, 8), torch.Generator().manual_seed(1))
    sched = _unipc_oracle(shift)
    sched.set_timesteps(steps)
    sigmas, times = unipc_schedule(steps, shift)
    ref = x
    worst = 0.0
    for step, t in zip(unipc_steps(velocity, x, sigmas, times), sched.timesteps, strict=True):
        v = velocity(ref, (t / 1000).float().expand(3))  # integer timestep / 1000
        ref = sched.step(v, t, ref).prev_sample
        worst = max(worst, (step.x - ref).abs().max().item())
    assert worst <= 1e-5
    assert ref.abs().max() > 0.1  # the trajectory did go somewhere


def test_unipc_is_more_accurate_than_euler():
    """On dx/dt = -x + c the exact flow is known; UniPC-2 beats Euler at equal steps."""
    c = torch.tensor([0.5, -1.0])

    def velocity(x, t):
        return c - x  # dx/dt = c - x, so x(0) = c + (x(1) - c) * e

    x1 = torch.tensor([[2.0, 3.0]])
    exact = c + (x1 - c) * torch.exp(torch.tensor(1.0))
    sigmas = torch.linspace(1, 0, 11)
    err_euler = (sample(velocity, x1, sigmas, solver="euler") - exact).abs().max()
    err_unipc = (sample(velocity, x1, sigmas, solver="unipc") - exact).abs().max()
    assert err_unipc < err_euler / 5


def test_steps_yield_records_and_x0():
    velocity = _linear_velocity()
    x = torch.ones(2, 8)
    sigmas = flow_sigmas(3, 3.0)
    seen_t = []
    steps = list(euler_steps(lambda x, t: seen_t.append(t) or velocity(x, t), x, sigmas))
    assert [s.index for s in steps] == [0, 1, 2] and all(s.total == 3 for s in steps)
    assert seen_t[0].shape == (2,) and seen_t[0].dtype == torch.float32
    torch.testing.assert_close(seen_t[1], sigmas[1].expand(2))
    v0 = velocity(x, sigmas[0].expand(2))
    torch.testing.assert_close(steps[0].x0, x - sigmas[0] * v0)
    torch.testing.assert_close(sample(velocity, x, sigmas), steps[-1].x)


def test_get_solver_registry():
    assert get_solver("euler").steps is euler_steps
    assert get_solver("unipc").schedule is unipc_schedule
    with pytest.raises(CineforgeError,
                       match="unknown solver .heun.; choose one of euler, flash, unipc"):
        get_solver("heun")


def test_bad_schedule_shapes_raise():
    with pytest.raises(CineforgeError, match="sigmas"):
        next(euler_steps(_linear_velocity(), torch.ones(1, 8), torch.ones(1)))
    with pytest.raises(CineforgeError, match="times"):
        next(unipc_steps(_linear_velocity(), torch.ones(1, 8), flow_sigmas(3), torch.ones(2)))


def _text_model():
    """model(x, t, context, scale) -> v that mixes each sample with its own context only."""
    weight = torch.randn(4, 8)

    def model(x, t, context, gain=1.0):
        return gain * (x * t[:, None] + context.mean(1) @ weight)

    return model


def test_classifier_free_guidance_formula_and_scale_one():
    model = _text_model()
    x, t = torch.randn(2, 8), torch.full((2,), 0.7)
    cond, uncond = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    v_c, v_u = model(x, t, cond), model(x, t, uncond)
    calls = []

    def cond_fn(x, t):
        return model(x, t, cond)

    def uncond_fn(x, t):
        calls.append(1)
        return model(x, t, uncond)

    guided = classifier_free_guidance(cond_fn, uncond_fn, 5.0)
    torch.testing.assert_close(guided(x, t), v_u + 5.0 * (v_c - v_u))
    assert len(calls) == 1

    calls.clear()
    plain = classifier_free_guidance(cond_fn, uncond_fn, 1.0)
    torch.testing.assert_close(plain(x, t), v_c)
    assert calls == []


def test_batched_guidance_equals_two_calls():
    model = _text_model()
    x, t = torch.randn(2, 8), torch.full((2,), 0.3)
    cond = {"context": torch.randn(2, 5, 4), "gain": 2.0}
    uncond = {"context": torch.randn(2, 5, 4), "gain": 2.0}
    two = guided_velocity(model, cond, uncond, 6.0, batched=False)(x, t)
    one = guided_velocity(model, cond, uncond, 6.0, batched=True)(x, t)
    torch.testing.assert_close(one, two, atol=1e-6, rtol=0)
    v_c, v_u = model(x, t, **cond), model(x, t, **uncond)
    torch.testing.assert_close(one, v_u + 6.0 * (v_c - v_u), atol=1e-6, rtol=0)
    with pytest.raises(CineforgeError, match="pad"):
        guided_velocity(model, cond, {"context": torch.randn(2, 3, 4), "gain": 2.0}, 6.0)
    with pytest.raises(CineforgeError, match="differs"):
        guided_velocity(model, cond, {"context": torch.randn(2, 5, 4), "gain": 1.0}, 6.0)


def test_initial_noise_is_seeded_and_cpu_drawn():
    a = initial_noise((2, 3, 4), torch.Generator().manual_seed(42))
    b = initial_noise((2, 3, 4), torch.Generator().manual_seed(42), dtype=torch.float64)
    c = initial_noise((2, 3, 4), torch.Generator().manual_seed(43))
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    assert torch.equal(a, b.float()) and not torch.equal(a, c)
    assert torch.equal(a, torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(42)))
    assert initial_noise((2,), torch.Generator().manual_seed(0), device="meta").is_meta


def test_frame_noise_is_unit_normal_with_the_asked_correlation_between_frames():
    shape = (2, 16, 5, 32, 32)
    assert torch.equal(frame_noise(shape, torch.Generator().manual_seed(3)),
                       torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    for share in (0.3, 0.7):
        x = initial_noise(shape, torch.Generator().manual_seed(4), frame_share=share)
        assert abs(x.var().item() - 1) < 0.02 and abs(x.mean().item()) < 0.02
        frames = x.transpose(0, 2).reshape(5, -1)  # T, everything else
        corr = torch.corrcoef(frames)[~torch.eye(5, dtype=torch.bool)]
        assert (corr - share).abs().max() < 0.03, (share, corr)
    image = frame_noise((1, 16, 1, 8, 8), torch.Generator().manual_seed(5), 0.5)
    assert abs(image.var().item() - 1) < 0.3  # one frame: still unit variance
    with pytest.raises(CineforgeError, match=r"in \[0, 1\)"):
        frame_noise(shape, torch.Generator(), 1.0)


def test_unipc_with_guidance_reproduces_wan_pipeline_latents():
    """Our loop + batched CFG over a tiny diffusers Wan DiT == WanPipeline(output_type="latent")."""
    from diffusers import WanPipeline, WanTransformer3DModel

    dit = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=dit, scheduler=_unipc_oracle(3.0)
    )
    prompt, negative = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    reference = pipe(
        prompt_embeds=prompt, negative_prompt_embeds=negative, height=32, width=32,
        num_frames=9, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
        generator=torch.Generator().manual_seed(7),
    ).frames

    def model(x, t, context):  # the 0..1000 timestep conversion lives at the model boundary
        return dit(hidden_states=x, timestep=t * 1000, encoder_hidden_states=context)[0]

    velocity = guided_velocity(model, {"context": prompt}, {"context": negative}, 5.0)
    sigmas, times = unipc_schedule(4, 3.0)
    x = initial_noise((1, 16, 3, 4, 4), torch.Generator().manual_seed(7))
    with torch.no_grad():
        latents = sample(velocity, x, sigmas, times, solver="unipc")
    assert (latents - reference).abs().max() <= 1e-5
