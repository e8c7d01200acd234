"""The compact causal VAE (the demo's): shapes, causality, image = first latent frame,
gradients, errors, and its way through the trainer's export and loader."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.families.demo.vae import COMPACT_VAE_TINY, CompactVAE, CompactVAEConfig
from cineforge.train.config import ModelSpec
from cineforge.train.export import save_weights
from cineforge.train.models import load_vae, model_config, read_vae_config
from cineforge.train.run import build_task
from cineforge.weights.files import write_model_config
from oracles import perturb


@pytest.fixture(scope="module")
def vae() -> CompactVAE:
    torch.manual_seed(0)
    return perturb(CompactVAE(COMPACT_VAE_TINY), seed=1, scale=0.05).eval()


def _video(frames: int, height: int = 16, width: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, frames, height, width, generator=g) * 2 - 1


def test_shapes_and_ratios(vae):
    mu, logvar = vae.encode_moments(_video(9))
    assert mu.shape == logvar.shape == (2, 4, 3, 8, 12)  # widths (8, 16): 2x spatial
    assert vae.decode(vae.encode(_video(9))).shape == (2, 3, 9, 16, 24)
    assert vae.decode(vae.encode(_video(1))).shape == (2, 3, 1, 16, 24)


def test_image_is_the_first_latent_frame_of_any_clip(vae):
    clip = _video(9)
    torch.testing.assert_close(vae.encode(clip[:, :, :1]), vae.encode(clip)[:, :, :1],
                               rtol=0, atol=1e-6)


def test_encoder_and_decoder_are_causal(vae):
    clip = _video(13)
    changed = clip.clone()
    changed[:, :, 5:] = _video(8, seed=1)  # frames of latent chunks 2 and 3 only
    a, b = vae.encode(clip), vae.encode(changed)
    assert (a[:, :, :2] - b[:, :, :2]).abs().max() == 0
    assert (a[:, :, 2:] - b[:, :, 2:]).abs().max() > 1e-3
    z = a.clone()
    z[:, :, 2:] = 0.0
    x, y = vae.decode(a), vae.decode(z)
    assert (x[:, :, :5] - y[:, :, :5]).abs().max() == 0  # frames 0-4 come from latents 0-1
    assert (x[:, :, 5:] - y[:, :, 5:]).abs().max() > 1e-3


def test_channels_last_stacks_give_the_plain_layout_numbers(vae, monkeypatch):
    import cineforge.families.demo.vae as module

    clip = _video(9)
    with torch.no_grad():
        fast = vae.encode_moments(clip), vae.decode(vae.encode(clip))
        monkeypatch.setattr(module, "_channels_last", lambda x: x.contiguous())
        plain = vae.encode_moments(clip), vae.decode(vae.encode(clip))
    assert fast[1].is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = perturb(CompactVAE(COMPACT_VAE_TINY), seed=2, scale=0.05)
    mu, logvar = model.moments(_video(5))
    (model.decode_raw(mu).square().mean() + logvar.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_bad_inputs_raise(vae):
    with pytest.raises(CineforgeError, match="4k\\+1 frames"):
        vae.encode(_video(6))
    with pytest.raises(CineforgeError, match="divisible by 2"):
        vae.encode(_video(5, height=15))
    with pytest.raises(CineforgeError, match="latents shaped"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="norm_groups"):
        CompactVAEConfig(widths=(12, 16), norm_groups=8)


def test_trainer_config_export_and_load_round_trip(tmp_path, vae):
    spec = ModelSpec("demo-tiny", {"widths": [8, 16, 16]})
    family, config = model_config(spec, "vae")
    assert isinstance(config, CompactVAEConfig) and config.spatial_ratio == 4
    assert family.vae_class is CompactVAE
    save_weights(vae, tmp_path / "vae.safetensors", dtype=torch.float32)
    write_model_config(vae.config, tmp_path / "vae.json")
    assert json.loads((tmp_path / "vae.json").read_text())["type"] == "CompactVAEConfig"
    assert read_vae_config(spec, tmp_path / "vae.json") == vae.config
    loaded = load_vae(spec, tmp_path)
    assert isinstance(loaded, CompactVAE)
    clip = _video(5)
    torch.testing.assert_close(loaded.encode(clip), vae.encode(clip), rtol=0, atol=0)
    with pytest.raises(CineforgeError, match="unknown CompactVAEConfig field"):
        model_config(ModelSpec("demo", {"base_dim": 16}), "vae")
    with pytest.raises(CineforgeError, match="holds a CompactVAEConfig, not a WanVAEConfig"):
        load_vae(ModelSpec("wan2.1-t2v-tiny"), tmp_path)  # another family's VAE


def test_detail_weights_mark_small_objects_not_smooth_backgrounds():
    from cineforge.train.vae_task import pixel_detail_weights as detail_weights

    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 1, 64).expand(1, 3, 2, 64, 64).clone()
    assert detail_weights(ramp, 10.0).eq(1.0).all()  # a gradient background: weight 1
    scene = ramp.clone()
    scene[:, :, :, 20:28, 30:38] = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1, 1)
    w = detail_weights(scene, 10.0)
    assert w.shape == (1, 1, 2, 64, 64)
    assert w[..., 20:28, 30:38].eq(11.0).all()  # the object itself
    assert w[..., 50:, :10].eq(1.0).all() and w[..., :5, 55:].eq(1.0).all()  # far away


def test_edge_error_is_the_l1_distance_between_image_gradients():
    from cineforge.train.vae_task import edge_error

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 2, 5, 6, generator=gen), torch.randn(2, 3, 2, 5, 6, generator=gen)
    grads = lambda v: (v[..., :, 1:] - v[..., :, :-1], v[..., 1:, :] - v[..., :-1, :])  # noqa: E731
    (xw, xh), (yw, yh) = grads(x), grads(y)
    want = ((xw - yw).abs().mean() + (xh - yh).abs().mean()) / 2
    torch.testing.assert_close(edge_error(x - y, None), want)
    assert edge_error(x + 0.3, None) == edge_error(x, None)  # a constant offset has no edges

    # Weighted: each difference counts with the larger weight of its two pixels; a weight of 1
    # everywhere is the plain mean, and weight only on one column pair isolates that pair.
    ones = torch.ones(2, 1, 2, 5, 6)
    torch.testing.assert_close(edge_error(x - y, ones), want)
    w = torch.zeros(2, 1, 2, 5, 6)
    w[..., 2] = 1.0  # column 2: horizontal differences 1-2 and 2-3, vertical ones in column 2
    err = x - y
    horizontal = (err[..., 2:4] - err[..., 1:3]).abs()  # differences (1,2) and (2,3)
    vertical = (err[..., 1:, 2] - err[..., :-1, 2]).abs()
    expected = (horizontal.sum() / (2 * 2 * 2 * 5 * 3) + vertical.sum() / (2 * 2 * 4 * 3)) / 2
    torch.testing.assert_close(edge_error(err, w), expected)


def test_decoder_only_training_keeps_the_encoder_and_its_latent_statistics(tmp_path, vae):
    from safetensors.torch import load_file

    from cineforge.train.config import load_config
    from cineforge.train.run import train
    from train_runs import CONFIGS

    source = tmp_path / "source"
    stats = {"latents_mean": (0.5, -0.25, 0.1, 2.0), "latents_std": (1.5, 0.5, 3.0, 0.75)}
    source.mkdir()
    save_weights(vae, source / "vae.safetensors")
    write_model_config(dataclasses.replace(vae.config, **stats), source / "vae.json")
    sets = ["model.preset=demo-tiny", "vae.decoder_only=true", "steps=2", "optim.lr=0.01"]
    config = load_config(CONFIGS / "tiny_vae.yaml",
                         [f"out={tmp_path / 'run'}", f"init={source / 'vae.safetensors'}", *sets])
    export = train(config, progress=False)

    before, after = load_file(source / "vae.safetensors"), load_file(export / "vae.safetensors")
    encoder = tuple(f"{name}." for name in CompactVAE.encoder_modules)
    assert {k for k in after if k.startswith(encoder)} and set(after) == set(before)
    for name, weight in after.items():
        if name.startswith(encoder):
            assert torch.equal(weight, before[name]), f"encoder weight {name} changed"
    changed = [k for k in after
               if not k.startswith(encoder) and not torch.equal(after[k], before[k])]
    assert len(changed) > len(after) // 4  # the decoder trained
    spec = ModelSpec("demo-tiny")
    assert read_vae_config(spec, export / "vae.json") == read_vae_config(spec, source / "vae.json")

    with pytest.raises(CineforgeError, match="set init to its vae.safetensors"):
        build_task(load_config(CONFIGS / "tiny_vae.yaml", [f"out={tmp_path / 'x'}", *sets]))
    with pytest.raises(CineforgeError, match="not supported for the Wan"):
        build_task(load_config(CONFIGS / "tiny_vae.yaml",
                               [f"out={tmp_path / 'y'}", "vae.decoder_only=true"]))


def test_a_wider_decoder_trains_afresh_behind_a_kept_encoder(tmp_path, vae):
    from safetensors.torch import load_file

    from cineforge.train.config import load_config
    from cineforge.train.run import train
    from train_runs import CONFIGS

    wide = dataclasses.replace(vae.config, decoder_widths=(16, 24), decoder_res_blocks=2)
    model = CompactVAE(wide)
    assert model.decode_raw(model.moments(_video(5))[0]).shape == (2, 3, 5, 16, 24)
    assert model.up[0].conv1.in_channels == 24 and len(model.up) == 2 + 1 + 2
    with pytest.raises(ValueError, match="one per level"):
        CompactVAEConfig(widths=(8, 16), decoder_widths=(16,), z_dim=4, norm_groups=4,
                         latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)

    source = tmp_path / "source"
    source.mkdir()
    save_weights(vae, source / "vae.safetensors")
    write_model_config(vae.config, source / "vae.json")
    decoder = [m for m in dict(model.named_children()) if m not in CompactVAE.encoder_modules]
    config = load_config(CONFIGS / "tiny_vae.yaml", [
        f"out={tmp_path / 'run'}", f"init={source / 'vae.safetensors'}", "steps=2",
        "model.preset=demo-tiny", "model.overrides.decoder_widths=[16, 24]",
        "model.overrides.decoder_res_blocks=2", "vae.decoder_only=true",
        f"init_fresh=[{', '.join(decoder)}]"])
    export = train(config, progress=False)
    before, after = load_file(source / "vae.safetensors"), load_file(export / "vae.safetensors")
    for name in CompactVAE.encoder_modules:
        keys = [k for k in before if k.startswith(name + ".")]
        assert keys and all(torch.equal(after[k], before[k]) for k in keys), name
    assert after["from_latent.weight"].shape == (24, 4, 3, 3)
    assert read_vae_config(ModelSpec("demo-tiny"), export / "vae.json") == wide


def test_critic_terms_each_train_only_their_own_player(vae):
    from cineforge.train.vae_task import PatchCritic, VAEWithCritic

    torch.manual_seed(0)
    model = VAEWithCritic(CompactVAE(COMPACT_VAE_TINY), PatchCritic(8), critic_lr_scale=2.0)
    video = _video(5, 16, 16)
    assert model.critic(video).shape == (2 * 5, 4, 4)  # one score per 4x4 pixels per frame
    decoded = model.vae.decode_raw(model.vae.moments(video)[0])
    loss_d, loss_g = model.critic_losses(video, decoded)
    critic = list(model.critic.parameters())
    vae_params = list(model.vae.parameters())

    grads = torch.autograd.grad(loss_d, critic + vae_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(critic)])
    assert all(g is None for g in grads[len(critic):])  # the fake is detached for the critic
    grads = torch.autograd.grad(loss_g, critic + vae_params, allow_unused=True)
    assert all(g is None for g in grads[: len(critic)])  # the critic's weights are frozen here
    decoder = [g for (name, _), g in zip(model.vae.named_parameters(), grads[len(critic):],
                                          strict=True)
               if not name.startswith(tuple(CompactVAE.encoder_modules))]
    assert decoder and all(g is not None for g in decoder)

    with torch.no_grad():  # a critic that scores 0 everywhere: the hinge's margins
        model.critic.net[-1].weight.zero_()
        model.critic.net[-1].bias.zero_()
    loss_d, loss_g = model.critic_losses(video, decoded)
    assert loss_d.item() == pytest.approx(2.0) and loss_g.item() == 0.0


def test_adversarial_decoder_training_exports_a_bare_vae_and_resumes(tmp_path, vae):
    from safetensors.torch import load_file

    from cineforge.train.checkpoint import load_checkpoint
    from cineforge.train.config import load_config
    from cineforge.train.run import train
    from train_runs import CONFIGS

    source = tmp_path / "source"
    source.mkdir()
    save_weights(vae, source / "vae.safetensors")
    write_model_config(vae.config, source / "vae.json")
    sets = [f"init={source / 'vae.safetensors'}", "model.preset=demo-tiny",
            "vae.decoder_only=true", "vae.adversarial=0.1", "vae.critic_width=8",
            "vae.critic_lr_scale=4", "optim.lr=0.01", "checkpoint_every=1"]
    config = load_config(CONFIGS / "tiny_vae.yaml", [f"out={tmp_path / 'run'}", "steps=2", *sets])
    export = train(config, progress=False)
    before, after = load_file(source / "vae.safetensors"), load_file(export / "vae.safetensors")
    assert set(after) == set(before)  # the critic stays out of the export
    encoder = tuple(f"{name}." for name in CompactVAE.encoder_modules)
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith(encoder))
    assert any(not torch.equal(after[k], before[k]) for k in after if not k.startswith(encoder))

    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*"))
    state = load_checkpoint(checkpoints[-1])
    assert any(k.startswith("critic.") for k in state["model"])
    again = load_config(CONFIGS / "tiny_vae.yaml", [f"out={tmp_path / 'run'}", "steps=3", *sets])
    resumed = train(again, progress=False)  # continues from step 2 with the critic's state
    assert load_checkpoint(sorted((tmp_path / "run" / "checkpoints").glob("*"))[-1])["step"] == 3
    assert set(load_file(resumed / "vae.safetensors")) == set(before)

    from cineforge.train.loop import Trainer

    start = load_config(CONFIGS / "tiny_vae.yaml", [f"out={tmp_path / 'next'}", "steps=1", *sets])
    trainer = Trainer(start, build_task(start), tmp_path / "next")
    trainer.initialise(checkpoints[-1])  # a critic run's checkpoint: its critic too, not fresh
    saved = state["ema"]["model"]  # a file init takes the EMA weights
    assert all(torch.equal(v, saved[k]) for k, v in trainer.model.state_dict().items())
