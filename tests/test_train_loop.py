"""The trainer on tiny configs: exact resume, overfitting, logs, export, latent cache, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cineforge.cli.main import main
from cineforge.data.latents import LatentCache, build_latent_cache
from cineforge.errors import CineforgeError
from cineforge.families.family import load_model
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WanDiTConfig
from cineforge.families.wan.vae import WanVAEConfig
from cineforge.train.checkpoint import load_checkpoint
from cineforge.train.config import load_config
from cineforge.train.data import shapes_world
from cineforge.train.dit_task import VAL_TIMES, latent_detail_weights
from cineforge.train.export import save_weights
from cineforge.train.loop import Trainer
from cineforge.train.models import load_vae
from cineforge.train.run import build_task, export_run, train
from cineforge.weights.files import read_model_config
from train_runs import CONFIGS, TINY, FakeText, dit_run_config, run_until


def vae_run_config(out, *overrides):
    return load_config(CONFIGS / "tiny_vae.yaml", [f"out={out}", *overrides])


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for name, x in a.model.state_dict().items():
        assert torch.equal(x, b.model.state_dict()[name]), name
    for name, x in a.ema.model.state_dict().items():
        assert torch.equal(x, b.ema.model.state_dict()[name]), f"ema {name}"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for k in sa:
        assert all(torch.equal(sa[k][m], sb[k][m]) for m in sa[k]), f"optimizer state {k}"
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()
    assert a.task.data_state() == b.task.data_state()
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def train_records(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _comparable(records: list[dict]) -> list[tuple]:
    """Per-step numbers that must agree between runs (not timings)."""
    return [(r["step"], r.get("loss"), r.get("grad_norm"), r.get("lr"), r.get("val_image_loss"))
            for r in records]


# ----------------------------------------------------------------------------- resume


def test_vae_resume_is_exact(tmp_path):
    straight = run_until(vae_run_config(tmp_path / "a"))
    run_until(vae_run_config(tmp_path / "b"), stop=2)  # "crash" after the step-2 checkpoint
    resumed = run_until(vae_run_config(tmp_path / "b"))
    assert straight.step == resumed.step == 4
    assert_same_state(straight, resumed)
    assert _comparable(train_records(tmp_path / "a")) == _comparable(train_records(tmp_path / "b"))


def test_dit_resume_is_exact_and_log_has_fields(tmp_path, vae_dir, cache_dir):
    straight = run_until(dit_run_config(tmp_path / "a", vae_dir, cache_dir))
    partial = run_until(dit_run_config(tmp_path / "b", vae_dir, cache_dir), stop=3)
    assert partial.step == 3  # the newest checkpoint is step 2: step 3 is redone
    resumed = run_until(dit_run_config(tmp_path / "b", vae_dir, cache_dir))
    assert resumed.step == 4
    assert_same_state(straight, resumed)
    records = train_records(tmp_path / "b")
    assert _comparable(train_records(tmp_path / "a")) == _comparable(records)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]  # no duplicate
    train_keys = {"step", "loss", "lr", "grad_norm", "weight_norm", "step_time", "tokens_per_s",
                  "loss_image", "loss_video"}
    assert train_keys <= set(records[0])
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert {"val_image_loss", "val_video_loss", "val_video_loss@0.98"} <= set(val[0])
    per_time = [val[0][f"val_video_loss@{t:g}"] for t in VAL_TIMES]
    assert val[0]["val_video_loss"] == pytest.approx(sum(per_time) / len(per_time))


def assert_same_tree(a, b, where: str = "state") -> None:
    """Nested dicts, lists and tuples of tensors and plain values, equal exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, where


def test_dit_packed_resume_is_exact(tmp_path, vae_dir, cache_dir):
    config = lambda out: dit_run_config(out, vae_dir, cache_dir, "flow.packing=true")  # noqa: E731
    straight = run_until(config(tmp_path / "a"))
    run_until(config(tmp_path / "b"), stop=3)  # "crash" after step 3: the newest checkpoint is 2
    resumed = Trainer(config(tmp_path / "b"), build_task(config(tmp_path / "b")), tmp_path / "b")
    fresh = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    assert resumed.resume() == 2
    # Right after resume the trainer holds the saved step-2 state, all of it (weights, EMA,
    # optimiser, schedule, random states, data position), which a fresh start cannot equal.
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000002.pt")
    assert_same_tree(resumed.state_dict(), saved)
    assert any(not torch.equal(v, fresh[k]) for k, v in resumed.model.state_dict().items())
    for _ in resumed.steps():
        pass
    assert_same_state(straight, resumed)
    packs = [r for r in train_records(tmp_path / "b") if r["kind"] == "train"]
    assert [r["step"] for r in packs] == [1, 2, 3, 4]  # step 3 redone, its first record dropped
    assert _comparable(train_records(tmp_path / "a")) == _comparable(train_records(tmp_path / "b"))
    assert all(r["tokens_per_s"] > 0 for r in packs) and "loss_pack" in packs[0]


def test_init_starts_a_fresh_run_from_weights(tmp_path, vae_dir, cache_dir):
    """``init``: a new run starts from a checkpoint's EMA weights (or a safetensors state
    dict) with a fresh optimiser and step count; an existing checkpoint of the new run still
    wins on resume; weights of another model shape are refused."""
    first = run_until(dit_run_config(tmp_path / "a", vae_dir, cache_dir))
    ckpt = tmp_path / "a" / "checkpoints" / "step-00000004.pt"
    train(dit_run_config(tmp_path / "b", vae_dir, cache_dir, f"init={ckpt}", "steps=1"),
          progress=False)
    trainer = Trainer(dit_run_config(tmp_path / "c", vae_dir, cache_dir, f"init={ckpt}"),
                      build_task(dit_run_config(tmp_path / "c", vae_dir, cache_dir)),
                      tmp_path / "c")
    trainer.initialise(ckpt)
    assert trainer.step == 0 and not trainer.optimizer.state_dict()["state"]
    for name, x in first.ema.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], x), name
        assert torch.equal(trainer.ema.model.state_dict()[name], x), f"ema {name}"
    save_weights(first.ema.model, tmp_path / "w.safetensors")
    trainer.initialise(tmp_path / "w.safetensors")  # fp16 file: equal up to its rounding
    for name, x in first.ema.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], x, atol=2e-3, rtol=1e-3)
    resumed = run_until(dit_run_config(tmp_path / "b", vae_dir, cache_dir, "init=/nowhere.pt",
                                       "steps=1"))
    assert resumed.step == 1  # resumed from b's own checkpoint; init is not read
    wider = dit_run_config(tmp_path / "d", vae_dir, cache_dir, f"init={ckpt}",
                           "model.overrides.ffn_dim=96")
    with pytest.raises(CineforgeError, match="init weights .* do not fit the model"):
        train(wider, progress=False)


def test_init_fresh_adds_new_modules_to_trained_weights(tmp_path, vae_dir, cache_dir):
    """A model that gained a module (the demo DiT's ``position_table``) starts from weights
    without it only when ``init_fresh`` names the module; the new module keeps its fresh
    initialisation and every other weight is loaded."""
    demo = ("model.preset=demo-tiny", "model.overrides.pooled_text=false",  # Wan tiny latents:
            "model.overrides.in_channels=16", "model.overrides.out_channels=16")
    first = run_until(dit_run_config(tmp_path / "a", vae_dir, cache_dir, *demo,
                                     "model.overrides.position_table=[]"))
    ckpt = tmp_path / "a" / "checkpoints" / "step-00000004.pt"
    grown = demo
    with pytest.raises(CineforgeError, match="1 missing .*pos_table"):
        train(dit_run_config(tmp_path / "b", vae_dir, cache_dir, f"init={ckpt}", *grown),
              progress=False)
    config = dit_run_config(tmp_path / "c", vae_dir, cache_dir, f"init={ckpt}", *grown,
                            "init_fresh=[pos_table]")
    trainer = Trainer(config, build_task(config), tmp_path / "c")
    fresh = trainer.model.pos_table.detach().clone()
    trainer.initialise(ckpt)
    own = trainer.model.state_dict()
    assert torch.equal(own["pos_table"], fresh) and fresh.abs().max() > 0
    for name, x in first.ema.model.state_dict().items():
        assert torch.equal(own[name], x), name
    trained = tmp_path / "grown.safetensors"  # init weights that hold the module: re-initialised
    save_file({**own, "pos_table": torch.ones_like(fresh)}, trained)
    trainer.initialise(trained)
    assert torch.equal(trainer.model.pos_table, fresh)


def test_packed_and_padded_losses_agree(tmp_path, vae_dir, cache_dir):
    """The same items, times, noise and texts give the same errors through
    ``forward_packed`` (one sequence) as through per-shape padded batches."""
    task = build_task(dit_run_config(tmp_path, vae_dir, cache_dir))
    torch.nn.init.normal_(task.model.head.head.weight, std=0.1)
    g = torch.Generator().manual_seed(0)
    items = [task.cache[i] for i in (0, 1, 2, 3, 4, 5)]
    t = torch.rand(len(items), generator=g)
    x0 = [i.latent for i in items]
    noise = [torch.randn(x.shape, generator=g) for x in x0]
    context = task.contexts(items, torch.ones(len(items), dtype=torch.bool))
    with torch.no_grad():
        packed = task._packed_errors(task.model, x0, noise, t, context)
        padded = torch.cat([task._padded_errors(task.model, x[None], n[None], ti[None], c[None])
                            .flatten() for x, n, ti, c in zip(x0, noise, t, context, strict=True)])
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_frame_noise_share_shapes_the_training_and_validation_noise(tmp_path, vae_dir,
                                                                    cache_dir, monkeypatch):
    """``flow.frame_noise_share`` reaches every noise draw of the DiT task (training and
    validation): the frames of the drawn noise correlate at about that share."""
    from cineforge.train import dit_task

    seen = []
    draw = dit_task.frame_noise
    monkeypatch.setattr(dit_task, "frame_noise",
                        lambda shape, g, share: seen.append(share) or draw(shape, g, share))
    config = dit_run_config(tmp_path, vae_dir, cache_dir, "flow.frame_noise_share=0.6")
    task = build_task(config)
    clips = [noise for _, _, noise, _, _ in task._validation_set(list(range(len(task.cache))))
             if noise.shape[2] > 1]  # (times, C, T, H, W) per clip
    task.loss(task.model, task.next_batch(torch.Generator().manual_seed(0)),
              torch.Generator().manual_seed(1))
    assert seen and set(seen) == {0.6}
    first, second = (torch.cat([n[:, :, k].flatten() for n in clips]) for k in (0, 1))
    corr = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert len(clips) >= 2 and 0.45 < corr < 0.75, corr


def test_packing_without_forward_packed_is_a_clear_error():
    from cineforge.train.dit_task import _require_packing

    with pytest.raises(CineforgeError, match="flow.packing needs Linear.forward_packed"):
        _require_packing(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- objectives


def _fixed_batch_losses(config, steps: int) -> tuple[float, float]:
    """Loss on one fixed batch with fixed draws (times, noise, dropout) before and after
    ``steps`` training steps on exactly that batch and those draws."""
    trainer = Trainer(config, build_task(config), config.out)
    batch = trainer.task.next_batch(torch.Generator().manual_seed(0))
    trainer.task.next_batch = lambda generator: batch

    def measure() -> float:
        with torch.no_grad():
            draws = torch.Generator().manual_seed(1)
            return trainer.task.loss(trainer.model, batch, draws).loss.item()

    before = measure()
    for _ in range(steps):
        trainer.generator.manual_seed(1)
        trainer.train_step()
    return before, measure()


def test_dit_overfits_a_fixed_batch(tmp_path, vae_dir, cache_dir):
    config = dit_run_config(tmp_path, vae_dir, cache_dir, "optim.lr=3e-3", "optim.warmup=0",
                            "steps=30")
    before, after = _fixed_batch_losses(config, 30)
    assert after < 0.5 * before, (before, after)


def test_vae_overfits_a_fixed_batch(tmp_path):
    config = vae_run_config(tmp_path, "optim.lr=3e-3", "optim.warmup=0", "steps=15",
                            "vae.sample=false")
    before, after = _fixed_batch_losses(config, 15)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("packing, detail", [(False, 0.0), (False, 3.0), (True, 3.0)])
def test_dit_loss_is_the_flow_matching_mse(tmp_path, vae_dir, cache_dir, packing, detail):
    """The task's loss equals a hand computation with the same random draws: the mean squared
    velocity error, or with ``flow.detail_weight`` its mean weighted by the clean latents'
    detail weights (padded and packed alike)."""
    config = dit_run_config(tmp_path, vae_dir, cache_dir, "flow.caption_dropout=0.5",
                            f"flow.packing={str(packing).lower()}", f"flow.detail_weight={detail}",
                            "flow.detail_threshold=0.3")
    task = build_task(config)
    torch.nn.init.normal_(task.model.head.head.weight, std=0.1)  # a non-zero prediction
    batch = task.next_batch(torch.Generator().manual_seed(0))
    out = task.loss(task.model, batch, torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    total, weight_sum, numel = 0.0, 0.0, 0
    for items in batch:
        keep = torch.rand(len(items), generator=g) >= 0.5
        t = torch.sigmoid(torch.randn(len(items), generator=g))  # logit-normal, shift 1
        noise = [torch.randn(i.latent.shape, generator=g) for i in items]
        for item, k, ti, n in zip(items, keep, t, noise, strict=True):
            text = item.text if k else task.cache.empty_text()
            context = torch.cat([text, text.new_zeros(32 - len(text), 384)])[None]
            x0 = item.latent[None]
            with torch.no_grad():
                pred = task.model((1 - ti) * x0 + ti * n[None], ti[None], context)
            w = torch.ones_like(x0)
            if detail:
                w = w * latent_detail_weights(item.latent, detail, 0.3)
            total += float((w * (pred - (n[None] - x0)) ** 2).sum())
            weight_sum, numel = weight_sum + float(w.sum()), numel + x0.numel()
    assert 1.2 * numel < weight_sum < 3.5 * numel if detail else weight_sum == numel  # a mix
    assert out.loss.item() == pytest.approx(total / weight_sum, rel=1e-4)
    assert out.work == sum(i.latent[0].numel() // 4 for items in batch for i in items)


def test_latent_detail_weights_mark_objects_not_smooth_backgrounds():
    ramp = torch.linspace(-2, 2, 16).view(1, 1, 1, 16).expand(16, 3, 16, 16).clone()
    assert latent_detail_weights(ramp, 4.0, 1.2).eq(1.0).all()  # smooth: weight 1 everywhere
    scene = ramp.clone()
    scene[3, :, 5:8, 9:12] += 3.0  # a 3x3 object in one channel
    w = latent_detail_weights(scene, 4.0, 1.2)
    assert w.shape == (1, 3, 16, 16)
    assert w[:, :, 5:8, 9:12].eq(5.0).all()  # the object, in every frame it is in
    assert w[:, :, 4:9, 8:13].eq(5.0).all()  # grown by one latent pixel
    assert w[:, :, :3].eq(1.0).all() and w[:, :, 10:].eq(1.0).all()  # far away


def test_activation_checkpointing_changes_nothing(tmp_path, vae_dir, cache_dir):
    plain = run_until(dit_run_config(tmp_path / "a", vae_dir, cache_dir, "steps=2"))
    ckpt = run_until(dit_run_config(tmp_path / "b", vae_dir, cache_dir, "steps=2",
                                    "activation_checkpointing=true"))
    for name, x in plain.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[name], x, rtol=0, atol=1e-6)
    with pytest.raises(CineforgeError, match="declares no offload_blocks"):
        Trainer(vae_run_config(tmp_path / "c", "activation_checkpointing=true"),
                build_task(vae_run_config(tmp_path / "c")), tmp_path / "c")


# ----------------------------------------------------------------------------- export


def test_dit_run_exports_fp16_weights_the_loader_accepts(tmp_path, vae_dir, cache_dir):
    config = dit_run_config(tmp_path / "run", vae_dir, cache_dir, "steps=2")
    folder = train(config, progress=False)
    for name in ("dit", "vae"):
        tensors = load_file(folder / f"{name}.safetensors")
        assert {x.dtype for x in tensors.values()} == {torch.float16}
    preset = dataclasses.replace(
        get_preset("wan2.1-t2v-tiny"), dit=read_model_config(WanDiTConfig, folder / "dit.json"),
        vae=read_model_config(WanVAEConfig, folder / "vae.json"))
    dit = load_model(preset, folder, "dit")
    ema = run_until(config).ema.model.state_dict()  # resumes at the end: nothing to do
    for name, x in dit.state_dict().items():
        assert torch.equal(x, ema[name].half().float()), name
    load_model(preset, folder, "vae")
    again = export_run(tmp_path / "run", tmp_path / "again")
    for name in ("dit.safetensors", "vae.safetensors", "dit.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    raw = load_file(export_run(tmp_path / "run", tmp_path / "raw", raw=True) / "dit.safetensors")
    trained = run_until(config).model.state_dict()
    assert all(torch.equal(raw[k].float(), v.half().float()) for k, v in trained.items())
    assert any(not torch.equal(raw[k], v) for k, v in load_file(folder / "dit.safetensors").items())


def test_vae_export_measures_latent_statistics(tmp_path):
    folder = train(vae_run_config(tmp_path / "run", "steps=1"), progress=False)
    config = read_model_config(WanVAEConfig, folder / "vae.json")
    assert config.latents_std != (1.0,) * 16 and min(config.latents_std) > 0
    vae = load_vae(TINY, folder)
    video = shapes_world(load_config(CONFIGS / "tiny_vae.yaml").data, "stats")[0]["video"]
    z = vae.encode(video[None])
    assert float(z.abs().mean()) < 5.0  # normalised latents are O(1)


# ----------------------------------------------------------------------------- latent cache


class CrashingWorld:
    """A dataset whose item ``crash_at`` raises, like a process killed mid-shard."""

    def __init__(self, world, crash_at: int) -> None:
        self.world, self.crash_at = world, crash_at

    def __getitem__(self, i: int) -> dict:
        if i == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.world[i]


def test_latent_cache_round_trip_and_resume_after_crash(tmp_path, vae_dir, cache_dir):
    data = load_config(CONFIGS / "tiny_dit.yaml").data
    world = shapes_world(data, "cache")
    meta = {"latent_channels": 16, "text_dim": 384, "text_len": 32}
    vae = load_vae(TINY, vae_dir)
    args = dict(encode_video=vae.encode, encode_text=FakeText().encode, meta=meta, shard_size=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_latent_cache(tmp_path, CrashingWorld(world, 9), 12, **args)
    partial = LatentCache(tmp_path)
    assert len(partial) == 8 and not partial.complete  # the first shard survived
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.safetensors", "index.json", "shard-00000.safetensors"]
    cache = build_latent_cache(tmp_path, world, 12, **args)
    reference = LatentCache(cache_dir)  # built in one go, same settings
    assert cache.complete and len(cache) == 12
    for i in range(12):
        item, ref = cache[i], reference[i]
        assert torch.equal(item.latent, ref.latent) and torch.equal(item.text, ref.text)
        assert item.caption == world[i]["caption"] == cache.caption(i)
        expected = vae.encode(world[i]["video"][None])[0]
        torch.testing.assert_close(item.latent, expected, atol=2e-3, rtol=1e-3)  # fp16
        states = FakeText().encode([item.caption])
        assert item.text.shape == (int(states.mask.sum()), 384)
        torch.testing.assert_close(item.text, states.states[0, : len(item.text)],
                                   atol=2e-3, rtol=1e-3)
        assert cache.attributes(i)["objects"][0]["shape"] in item.caption
    assert cache.empty_text().shape == (2, 384)  # start and end token of ""
    with pytest.raises(CineforgeError, match=r"other settings \(meta\)"):
        build_latent_cache(tmp_path, world, 12, **{**args, "meta": {**meta, "text_len": 16}})


def test_build_cache_with_minilm(tmp_path, vae_dir, capsys):
    from cineforge.train.run import build_cache

    overrides = [f"out={tmp_path}", f"cache.vae={vae_dir}", f"cache.dir={tmp_path / 'latents'}",
                 "cache.items=3"]
    cache = build_cache(load_config(CONFIGS / "tiny_dit.yaml", overrides), progress=False)
    assert cache.complete and cache.meta["text_dim"] == 384 == cache[0].text.shape[1]
    assert cache.meta["vae"] == json.loads((vae_dir / "vae.json").read_text())
    assert cache.empty_text().shape == (2, 384)  # [CLS] [SEP]
    # the CLI finds it complete and built with the same settings: nothing to encode
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert main(["train", "cache", "--config", str(CONFIGS / "tiny_dit.yaml"), *sets,
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "latents")
    # a distillation's config names the cache it trains on: the same command builds it
    assert main(["train", "cache", "--config", str(CONFIGS / "tiny_dit.yaml"), *sets,
                 "--set", "task=distill", "--set", f"distill.teacher={vae_dir}",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "latents")


def test_cache_meta_records_set_world_knobs_only(vae_dir):
    """Unset curriculum knobs (the whole world) stay out of the cache's meta, so caches built
    before a knob existed still match; a set knob is recorded, so a cache of a narrowed world
    is never taken for the whole one."""
    from cineforge.train.run import cache_meta

    def source(*overrides):
        config = load_config(CONFIGS / "tiny_dit.yaml", [f"cache.vae={vae_dir}", *overrides])
        return cache_meta(config)["source"]

    whole = source()
    assert not {"backgrounds", "motions", "object_scale"} & set(whole)
    assert source("data.object_scale=1.0") == whole
    narrow = source("data.backgrounds=[gray]", "data.motions=[left, up]",
                    "data.object_scale=1.25")
    assert narrow["backgrounds"] == ("gray",) and narrow["motions"] == ("left", "up")
    assert narrow["object_scale"] == 1.25
    knobs = ("backgrounds", "motions", "object_scale")
    assert {k: v for k, v in narrow.items() if k not in knobs} == whole


def test_cache_meta_leaves_a_default_decoder_size_out(tmp_path):
    """The compact VAE's decoder size came later: at its default it stays out of the meta,
    so caches encoded before still match; a VAE with its own decoder size records it."""
    from cineforge.families.demo.vae import COMPACT_VAE_TINY
    from cineforge.train.run import cache_meta
    from cineforge.weights.files import write_model_config

    metas = {}
    for name, vae in (("plain", COMPACT_VAE_TINY),
                      ("wide", dataclasses.replace(COMPACT_VAE_TINY, decoder_widths=(8, 32)))):
        (tmp_path / name).mkdir()
        write_model_config(vae, tmp_path / name / "vae.json")
        config = load_config(CONFIGS / "tiny_dit.yaml",
                             ["model.preset=demo-tiny", f"cache.vae={tmp_path / name}"])
        metas[name] = cache_meta(config)["vae"]
    assert not {"decoder_widths", "decoder_res_blocks"} & set(metas["plain"])
    assert metas["plain"]["widths"] == (8, 16) and metas["wide"]["decoder_widths"] == (8, 32)


# ----------------------------------------------------------------------------- CLI


def test_cli_train_resume_export(tmp_path, capsys):
    config = str(CONFIGS / "tiny_vae.yaml")
    base = ["train", "vae", "--config", config, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--set", "steps=2"]) == 0
    assert main([*base, "--set", "steps=3"]) == 0  # resumes at 2, runs step 3
    steps = [r["step"] for r in train_records(tmp_path / "run") if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    assert main(["train", "export", "--run", str(tmp_path / "run"), "--out",
                 str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "vae.safetensors").is_file()
    assert main([*base, "--resume", "no"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "dit", "--config", str(CONFIGS / "tiny_vae.yaml")], "is a 'vae' config"),
        (["train", "cache", "--config", str(CONFIGS / "tiny_vae.yaml")],
         "is a 'vae' config; it has no latent cache"),
        (["train", "vae", "--config", str(CONFIGS / "tiny_vae.yaml"), "--set", "device=gpu0"],
         "unknown device 'gpu0'"),
        (["train", "vae", "--config", str(CONFIGS / "tiny_vae.yaml"), "--set", "optim.lrr=1"],
         "unknown config key 'optim.lrr'"),
        (["train", "export", "--run", "/nonexistent/run"], "config file not found"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_log_averages_each_part_over_the_steps_that_report_it():
    """A part some steps do not report (an image-to-video sub-batch drawn on some steps only)
    is averaged over the steps that report it; parts of earlier steps are not dropped."""
    from types import SimpleNamespace

    from cineforge.train.loop import StepRecord

    def record(step, parts):
        return StepRecord(step, 1.0, parts, 1e-3, 0.5, 2.0, 10)

    trainer = SimpleNamespace(step=3, model=torch.nn.Linear(2, 2),
                              task=SimpleNamespace(work_unit="tokens"))
    window = [record(1, {"loss_image": 0.2, "loss_video_i2v": 0.4}),
              record(2, {"loss_image": 0.4, "loss_video": 0.1}),
              record(3, {"loss_image": 0.6, "loss_video": 0.3})]
    summary = Trainer._summary(trainer, window)
    assert summary["loss_image"] == pytest.approx(0.4)
    assert summary["loss_video"] == pytest.approx(0.2)
    assert summary["loss_video_i2v"] == pytest.approx(0.4)
    assert summary["tokens_per_s"] == pytest.approx(5.0)
