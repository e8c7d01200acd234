"""The demo's image-to-video: its DiT takes a clean first latent frame (Wan 2.2 TI2V's
per-token times, the demo's own position table and pooled caption included), training mixes
image-to-video clip sub-batches in (``flow.first_frame``), and ``demo-i2v`` generates from an
image through the API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.families.demo import DEMO_DIT_TINY
from cineforge.families.demo.dit import DemoDiT
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import pad_context
from cineforge.train.run import build_task
from packed_items import gen
from train_runs import dit_run_config

I2V_MODEL = ("model.preset=demo-i2v-tiny", "model.overrides.in_channels=16",
             "model.overrides.out_channels=16")  # the tiny cache's latents have 16 channels


def _trained_demo_dit() -> DemoDiT:
    """The tiny demo DiT with every path live: position table, a non-zero pooled caption
    layer and output layer."""
    model = DemoDiT(DEMO_DIT_TINY).init_weights(gen(0))
    nn.init.normal_(model.text_pool_embedding[2].weight, std=0.5, generator=gen(1))
    nn.init.normal_(model.head.head.weight, std=0.1, generator=gen(2))
    return model.eval()


def test_first_frame_at_time_zero_is_the_plain_forward():
    """When every token is clean (t = 0) the first-frame path must equal the plain forward:
    the first frame's clean time embedding carries the pooled caption too. Otherwise frame 0
    is replaced and modulated as clean while the others follow t."""
    model = _trained_demo_dit()
    g = gen(3)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    context = pad_context(torch.randn(2, 5, 384, generator=g), DEMO_DIT_TINY.text_len)
    first = x[:, :, :1]
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.0, context, first=first), model(x, 0.0, context),
                                   rtol=1e-5, atol=1e-6)
        noisy = torch.cat([torch.randn_like(first), x[:, :, 1:]], dim=2)
        out = model(noisy, 0.7, context, first=first)
        assert torch.equal(out, model(x, 0.7, context, first=first))  # frame 0 replaced
        assert (out - model(x, 0.7, context)).abs().max() > 1e-3      # and modulated clean
        with pytest.raises(CineforgeError, match="do not fit"):
            model(x, 0.7, context, first=x[:, :, :2])


def test_first_frame_training_loss_is_the_mse_on_later_frames(tmp_path, vae_dir, cache_dir):
    """With ``flow.first_frame: 1`` every clip sub-batch trains image-to-video: the loss is a
    hand computation with the same draws, the model given each clip's clean first frame and
    its errors counted on the other frames only; images train as before."""
    config = dit_run_config(tmp_path, vae_dir, cache_dir, *I2V_MODEL, "flow.first_frame=1",
                            "flow.caption_dropout=0")
    task = build_task(config)
    nn.init.normal_(task.model.head.head.weight, std=0.1)  # a non-zero prediction
    batch = task.next_batch(torch.Generator().manual_seed(0))
    assert {items[0].latent.shape[1] > 1 for items in batch} == {True, False}  # image, clip
    out = task.loss(task.model, batch, torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    draws = torch.rand(len(batch), generator=g) < 1.0
    assert draws.all()
    total, count = 0.0, 0
    for items in batch:
        torch.rand(len(items), generator=g)  # caption dropout (0)
        t = torch.sigmoid(torch.randn(len(items), generator=g))
        noise = [torch.randn(i.latent.shape, generator=g) for i in items]
        for item, ti, n in zip(items, t, noise, strict=True):
            context = pad_context(item.text[None], 32)
            x0 = item.latent[None]
            clip = x0.shape[2] > 1
            with torch.no_grad():
                x_t = (1 - ti) * x0 + ti * n[None]
                pred = task.model(x_t, ti[None], context, first=x0[:, :, :1] if clip else None)
            errors = (pred - (n[None] - x0)) ** 2
            if clip:
                errors = errors[:, :, 1:]
            total, count = total + float(errors.sum()), count + errors.numel()
    assert out.loss.item() == pytest.approx(total / count, rel=1e-4)
    assert set(out.parts) == {"loss_image", "loss_video_i2v"}
    assert set(task.validate(task.model)) >= {"val_video_loss", "val_video_i2v_loss",
                                              "val_image_loss"}


def test_first_frame_training_needs_a_model_that_takes_it(tmp_path, vae_dir, cache_dir):
    with pytest.raises(CineforgeError, match="does not take"):
        build_task(dit_run_config(tmp_path, vae_dir, cache_dir, "flow.first_frame=0.5"))
    with pytest.raises(CineforgeError, match="flow.packing: false"):
        dit_run_config(tmp_path, vae_dir, cache_dir, *I2V_MODEL, "flow.first_frame=0.5",
                       "flow.packing=true")
    with pytest.raises(CineforgeError, match=r"flow.first_frame must be in \[0, 1\]"):
        dit_run_config(tmp_path, vae_dir, cache_dir, "flow.first_frame=1.5")


def test_demo_i2v_generates_from_an_image_and_keeps_it_as_frame_zero(tmp_path):
    """``demo-i2v`` through the API: frame 0 of the latents is the encoded image, so the
    decoded first frame is the VAE's reconstruction of the image whatever the prompt; without
    an image it is text-to-video; ``demo`` itself refuses an image."""
    import cineforge
    from cineforge.families.family import save_components

    preset = get_preset("demo-i2v-tiny")
    torch.manual_seed(0)
    dit = _trained_demo_dit()
    save_components(tmp_path, dit=dit, vae=preset.family.build("vae", preset.vae))
    pipe = cineforge.load_pipeline(preset.name, tmp_path, device="cpu")
    image = torch.randint(0, 256, (preset.height, preset.width, 3), dtype=torch.uint8)
    a = pipe("a red ball moves left", steps=2, image=image, seed=1)
    b = pipe("a blue square moves up", steps=2, image=image, seed=2)
    assert a.frames.shape == (preset.frames, preset.height, preset.width, 3)
    assert torch.equal(torch.as_tensor(a.frames[0]), torch.as_tensor(b.frames[0]))
    assert not torch.equal(torch.as_tensor(a.frames[-1]), torch.as_tensor(b.frames[-1]))
    text_only = pipe("a red ball moves left", steps=2, seed=1)
    assert not torch.equal(torch.as_tensor(a.frames[0]), torch.as_tensor(text_only.frames[0]))
    plain = cineforge.load_pipeline("demo-tiny", tmp_path, device="cpu")
    with pytest.raises(CineforgeError, match="image"):
        plain("a red ball", steps=1, image=image)
