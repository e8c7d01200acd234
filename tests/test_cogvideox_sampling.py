"""CogVideoX's discrete-time sampling (cineforge.sampling.ddpm) against diffusers'
CogVideoXDDIMScheduler and CogVideoXDPMScheduler (the oracles): alphas, timesteps, and whole
sampling runs over the same model, with the DPM solver's noise from the same generator."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from cineforge.errors import CineforgeError
from cineforge.sampling.ddpm import (
    cogvideox_alphas_cumprod,
    cogvideox_schedule,
    ddim_steps,
    ddpm_steps,
    dpm_steps,
    trailing_timesteps,
    x0_from_v,
)

SHAPE = (2, 3, 4, 5, 6)  # B, T, C, H, W: diffusers' CogVideoX latent layout


def _oracle(cls, snr_shift_scale: float):
    """The scheduler configuration of the CogVideoX releases (scheduler_config.json)."""
    return cls(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        set_alpha_to_one=True, timestep_spacing="trailing", snr_shift_scale=snr_shift_scale,
    )


def _model(seed: int = 0):
    """A deterministic v-prediction: a random channel mix of x plus a timestep-dependent drift."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 4, generator=g) * 0.3
    drift = torch.randn(4, 5, 6, generator=g)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = torch.cos(t / 300.0).view(-1, *[1] * (x.dim() - 1))
        return torch.einsum("dc,btchw->btdhw", mix, x) + phase * drift - 0.1 * x

    return predict


@pytest.mark.parametrize("shift", [1.0, 3.0, 2.5])
def test_alphas_equal_diffusers(shift):
    ref = _oracle(CogVideoXDDIMScheduler, shift).alphas_cumprod
    ours = cogvideox_alphas_cumprod(shift)
    assert ours.dtype == torch.float64 and torch.equal(ours, ref)
    assert ours[-1] == 0 and 0.99 < ours[0] < 1  # zero terminal SNR
    assert torch.equal(cogvideox_alphas_cumprod(shift), _oracle(CogVideoXDPMScheduler,
                                                                shift).alphas_cumprod)


def test_alphas_without_rescale_keep_terminal_snr():
    ref = CogVideoXDDIMScheduler(snr_shift_scale=3.0, rescale_betas_zero_snr=False)
    ours = cogvideox_alphas_cumprod(3.0, rescale_zero_snr=False)
    assert torch.equal(ours, ref.alphas_cumprod) and ours[-1] > 0


def test_trailing_timesteps_equal_diffusers():
    ref = _oracle(CogVideoXDDIMScheduler, 1.0)
    extra = []
    for steps in range(1, 1001):
        ref.set_timesteps(steps)
        ours = trailing_timesteps(steps)
        assert len(ours) == steps and ours.dtype == torch.int64
        if len(ref.timesteps) != steps:  # diffusers' float arange adds a -1 for a few counts
            extra.append(steps)
            assert ref.timesteps[-1] == -1
        assert torch.equal(ours, ref.timesteps[:steps]), steps
    assert 0 < len(extra) < 100  # e.g. 61 steps
    assert trailing_timesteps(4).tolist() == [999, 749, 499, 249]
    assert trailing_timesteps(50)[:3].tolist() == [999, 979, 959]


def test_bad_steps_and_shift_are_errors():
    with pytest.raises(CineforgeError, match="steps"):
        trailing_timesteps(0)
    with pytest.raises(CineforgeError, match="steps"):
        trailing_timesteps(1001)
    with pytest.raises(CineforgeError, match="SNR shift"):
        cogvideox_alphas_cumprod(0.0)
    with pytest.raises(CineforgeError, match="unknown"):
        ddpm_steps("euler", _model(), torch.zeros(SHAPE), cogvideox_schedule(2, 1.0))


@pytest.mark.parametrize(("steps", "shift"), [(50, 3.0), (7, 1.0), (3, 3.0), (1, 1.0)])
def test_ddim_run_equals_diffusers(steps, shift):
    predict = _model()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ref = _oracle(CogVideoXDDIMScheduler, shift)
    ref.set_timesteps(steps)
    want, want_x0 = x.clone(), []
    for t in ref.timesteps:
        v = predict(want, t.float().expand(SHAPE[0]))
        want, x0 = ref.step(v, t, want, return_dict=False)
        want_x0.append(x0)

    schedule = cogvideox_schedule(steps, shift)
    got = list(ddim_steps(predict, x.clone(), schedule))
    assert [s.index for s in got] == list(range(steps)) and got[0].total == steps
    err = max((got[-1].x - want).abs().max().item(),
              max((s.x0 - w).abs().max().item() for s, w in zip(got, want_x0, strict=True)))
    print(f"DDIM {steps} steps, shift {shift}: max abs diff {err:.2e}")
    assert err <= 1e-5
    assert got[0].t == 0.999 and got[-1].t_next == 0.0


@pytest.mark.parametrize(("steps", "shift"), [(50, 1.0), (6, 3.0), (3, 1.0), (2, 1.0)])
def test_dpm_run_equals_diffusers(steps, shift):
    """The pipeline's loop of diffusers: ``step(v, x0_prev, t, t_back, x, generator=g)``; our
    solver gets its noise from a generator in the same state."""
    predict = _model(1)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    ref = _oracle(CogVideoXDPMScheduler, shift)
    ref.set_timesteps(steps)
    g_ref = torch.Generator().manual_seed(3)
    want, old = x.clone(), None
    for i, t in enumerate(ref.timesteps):
        v = predict(want, t.float().expand(SHAPE[0]))
        back = ref.timesteps[i - 1] if i > 0 else None
        want, old = ref.step(v, old, t, back, want, generator=g_ref, return_dict=False)

    g = torch.Generator().manual_seed(3)
    steps_run = list(dpm_steps(predict, x.clone(), cogvideox_schedule(steps, shift),
                               lambda: torch.randn(SHAPE, generator=g)))
    err = (steps_run[-1].x - want).abs().max().item()
    print(f"DPM {steps} steps, shift {shift}: max abs diff {err:.2e}")
    assert err <= 1e-5
    if 1000 % steps == 0:  # the last step reaches the clean end (a = 1) and returns x0
        assert torch.equal(steps_run[-1].x, steps_run[-1].x0)
    # as many draws as diffusers (two on a second-order step): the generators end level
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=g_ref))


def test_first_dpm_step_is_pure_noise_reparametrised():
    """At a_t = 0 the input is pure noise: x0 = -v, and the step is sqrt(a_p) x0 +
    sqrt(1 - a_p) z whatever x is."""
    schedule = cogvideox_schedule(4, 1.0)
    v = torch.randn(SHAPE)
    z = torch.randn(SHAPE)
    step = next(dpm_steps(lambda x, t: v, torch.randn(SHAPE), schedule, lambda: z))
    a_p = float(schedule.alpha(999 - 250))
    torch.testing.assert_close(step.x0, -v)
    torch.testing.assert_close(step.x, a_p**0.5 * -v + (1 - a_p) ** 0.5 * z)
    torch.testing.assert_close(x0_from_v(step.x, v, 0.25), 0.5 * step.x - 0.75**0.5 * v)
