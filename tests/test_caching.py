"""Step caching (TeaCache, MagCache), batched guidance and guidance truncation, on a tiny Wan
DiT with random weights."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

import cineforge.pipelines.common as common
from cineforge.cli.generate import build_request
from cineforge.cli.options import GenerateOptions, add_generate_arguments
from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.families.wan.pipeline import TextToVideo
from cineforge.sampling.caching import MAX_SKIPS, MagCache, TeaCache, make_cache

STEPS = 8
# (t, mean|v|) of the tiny model's guided velocity, recorded by calibrate() below
MAGNITUDES: list[tuple[float, float]] = []


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny DiT runs fastest on one thread (and does not stall on busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_pipeline() -> tuple[TextToVideo, list[int]]:
    """A tiny Wan pipeline (random weights, non-zero head) and the batch sizes its DiT saw."""
    g = torch.Generator().manual_seed(0)
    dit = WanDiT(WAN_DIT_TINY).init_weights(g).eval()
    with torch.no_grad():
        nn.init.normal_(dit.head.head.weight, std=0.5, generator=g)
    seen: list[int] = []
    dit.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    return TextToVideo(Components(dit, vae=None, text_encoder=None)), seen


def inputs(uncond_len: int = 8):
    g = torch.Generator().manual_seed(1)
    cond = {"context": torch.randn(1, 8, 32, generator=g)}
    uncond = {"context": torch.randn(1, uncond_len, 32, generator=g)}
    return cond, uncond, torch.randn(1, 16, 3, 8, 8, generator=g)


def run(guidance: float = 5.0, **options) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Final latents, every step's latents and the DiT's batch sizes of one sampling run."""
    pipe, seen = tiny_pipeline()
    cond, uncond, noise = inputs(options.pop("uncond_len", 8))
    xs = [s.x for s in pipe.sample(cond, uncond, noise, steps=STEPS, guidance=guidance,
                                   shift=3.0, **options)]
    return xs[-1], xs, seen


def magnitudes() -> list[tuple[float, float]]:
    if not MAGNITUDES:
        pipe, _ = tiny_pipeline()
        cond, uncond, noise = inputs()
        r = get_preset("demo-tiny").request("x", steps=STEPS, guidance=5.0, shift=3.0,
                                            width=32, height=32, frames=9)
        pipe.conditions = lambda prompts, r: (cond, uncond)
        pipe.initial_latents = lambda r, batch: noise
        pipe.check = lambda r: None
        MAGNITUDES.extend(pipe.calibrate_magnitudes(r))
    return MAGNITUDES


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    peak, mse = b.abs().max().item(), ((a - b) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


@pytest.mark.parametrize("name", ["tea", "mag"])
def test_threshold_zero_equals_no_cache_bitwise(name):
    _, plain, calls = run()
    _, cached, cached_calls = run(cache=make_cache(name, 0.0, magnitudes()))
    assert cached_calls == calls == [2] * STEPS
    assert all(torch.equal(a, b) for a, b in zip(cached, plain, strict=True))


@pytest.mark.parametrize(("name", "threshold", "skips", "bound"),
                         [("tea", 0.2, 2, 35.0), ("mag", 0.005, 3, 28.0)])
def test_positive_threshold_skips_dit_calls_and_stays_close(name, threshold, skips, bound):
    plain, _, calls = run()
    cached, _, cached_calls = run(cache=make_cache(name, threshold, magnitudes()))
    quality = psnr(cached, plain)
    print(f"{name} {threshold}: {len(cached_calls)} of {len(calls)} DiT calls, "
          f"PSNR {quality:.1f} dB")
    assert len(cached_calls) <= len(calls) - skips
    assert quality >= bound  # measured: tea 0.2 -> 6 calls, 40.1 dB; mag 0.005 -> 5, 32.0 dB
    assert not torch.equal(cached, plain)


def test_magcache_skips_at_most_max_skips_in_a_row():
    calls = []

    def velocity(x, t):
        calls.append(float(t[0]))
        return x

    flat = [(0.0, 1.0), (1.0, 1.0)]  # gamma = 1: no estimated change at all
    cache = MagCache(velocity, 0.1, flat)
    x = torch.ones(1)
    for i in range(9):
        cache(x, torch.tensor([1 - i / 10]))
    assert (cache.evaluated, cache.skipped) == (3, 6)  # evaluate, skip MAX_SKIPS, repeat
    assert MAX_SKIPS == 3
    tea = TeaCache(velocity, 0.0)
    for _ in range(3):
        tea(x, torch.ones(1))  # the input does not change, yet threshold 0 never skips
    assert tea.skipped == 0


def test_batched_guidance_equals_two_forwards(monkeypatch):
    batched, _, calls = run()
    monkeypatch.setattr(common, "batchable", lambda cond, uncond: False)
    two, _, two_calls = run()
    assert calls == [2] * STEPS and two_calls == [1] * (2 * STEPS)
    torch.testing.assert_close(batched, two, rtol=0, atol=1e-5)


def test_conditioning_of_unequal_lengths_runs_as_two_forwards():
    _, _, calls = run(uncond_len=5)  # cannot share a batch: no error, two calls per step
    assert calls == [1] * (2 * STEPS)


def test_guidance_until_one_is_plain_cfg_and_less_saves_forwards():
    plain, _, calls = run()
    full, _, full_calls = run(guidance_until=1.0)
    assert torch.equal(full, plain) and full_calls == calls
    half, _, half_calls = run(guidance_until=0.5)
    assert half_calls == [2] * (STEPS // 2) + [1] * (STEPS // 2)  # DiT samples: 12 of 16
    assert not torch.allclose(half, plain, atol=1e-3)
    none, _, none_calls = run(guidance_until=0.0)
    cond_only, _, _ = run(guidance=1.0)
    assert none_calls == [1] * STEPS and torch.equal(none, cond_only)


@pytest.mark.parametrize(("fields", "field"), [
    ({"cache": "fast"}, "cache"),
    ({"cache_threshold": -0.1}, "cache_threshold"),
    ({"cache_threshold": float("nan")}, "cache_threshold"),
    ({"guidance_until": 1.5}, "guidance_until"),
    ({"guidance_until": float("inf")}, "guidance_until"),
    ({"cache": "mag", "cache_threshold": 0.1}, "cache"),  # demo-tiny has no calibration
])
def test_request_checks_name_the_field(fields, field):
    preset = get_preset("demo-tiny")
    with pytest.raises(CineforgeError) as err:
        preset.family.check_request(preset, preset.request("a red circle", **fields))
    assert err.value.fields[0] == field


def test_demo_preset_carries_its_calibration_and_cli_flags_reach_the_request():
    assert len(get_preset("demo").request("x").cache_magnitudes) >= 2
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["a red circle", "--cache", "mag", "--cache-threshold", "0.1",
                              "--guidance-until", "0.5"])
    r = build_request(GenerateOptions.from_args(args))
    assert (r.cache, r.cache_threshold, r.guidance_until) == ("mag", 0.1, 0.5)
    assert r.cache_magnitudes == get_preset("demo").sampler.magnitudes
    default = build_request(GenerateOptions.from_args(parser.parse_args(["a red circle"])))
    assert (default.cache, default.cache_threshold, default.guidance_until) == ("none", 0, 1)
