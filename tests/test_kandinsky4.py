"""Kandinsky 4.0 Flash: the official checkpoint layout at full size (meta), the DiT against a
reference written in the release's layout, packing, the Flash sampler against diffusers'
CogVideoXDDIMScheduler, and the tiny pipeline end to end through the API and the CLI."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXDDIMScheduler
from torch.utils.flop_counter import FlopCounterMode

import cineforge
from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families.family import detect_layout, load_components, save_components
from cineforge.families.kandinsky4.dit import (
    KANDINSKY4_DIT,
    KANDINSKY4_DIT_TINY,
    Kandinsky4DiT,
    kandinsky4_dit_flops,
)
from cineforge.families.kandinsky4.dit_keys import K4_DIT_FROM_OFFICIAL
from cineforge.families.registry import get_preset
from cineforge.io.video import read_video
from cineforge.sampling.ddpm import add_noise, flash_ddpm_schedule, renoise_steps
from cineforge.weights.keymap import load_strict
from cogvideox_oracles import tiny_t5, tiny_tokenizer
from k4_oracles import RefKandinsky4, official_state_dict, write_official_folder
from oracles import perturb

RELEASE_PARAMETERS = 5_570_276_928


def official_shapes(blocks=21, d=3072, ff=12288, time=512, text=4096, patch=64, head=64):
    """The official checkpoint's keys and shapes, as K4-FACTS §1 tabulates them."""
    shapes = {
        "time_embeddings.in_layer": (time, d), "time_embeddings.out_layer": (time, time),
        "text_embeddings.in_layer": (d, text), "visual_embeddings.in_layer": (d, patch),
        "out_layer.norm": (d,), "out_layer.out_layer": (patch, d),
        "out_layer.modulation_out": (2 * d, time),
    }
    block = {
        "visual_modulation.out_layer": (6 * d, time), "text_modulation.out_layer": (6 * d, time),
        "self_attention_norm": (d,), "self_attention.to_query_key_value": (3 * d, d),
        "self_attention.query_norm": (head,), "self_attention.key_norm": (head,),
        "self_attention.output_layer": (d, d), "feed_forward_norm": (d,),
        "feed_forward.in_layer": (ff, d), "feed_forward.out_layer": (d, ff),
    }
    for i in range(blocks):
        for j in (0, 1):
            shapes |= {f"transformer_blocks.{i}.{j}.{k}": v for k, v in block.items()}
    out = {}
    for name, shape in shapes.items():
        out[f"{name}.weight"] = shape
        out[f"{name}.bias"] = shape[:1]
    out |= {f"rope_embeddings.args_{i}": (128, n) for i, n in enumerate((8, 12, 12))}
    return out


def test_official_full_size_checkpoint_loads_strictly_with_the_release_parameter_count():
    shapes = official_shapes()
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in shapes.items()}
        model = Kandinsky4DiT(KANDINSKY4_DIT)
        reference = RefKandinsky4(KANDINSKY4_DIT)  # the test's reference has the same keys
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == shapes
    load_strict(model, K4_DIT_FROM_OFFICIAL.convert(state))
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMETERS
    assert KANDINSKY4_DIT.num_heads == 48 and KANDINSKY4_DIT.head_dim == 64


def test_official_keys_outside_the_release_are_refused():
    state = {k: torch.empty(s, device="meta") for k, s in official_shapes(blocks=1).items()}
    with pytest.raises(CineforgeError, match="match no rule"):
        K4_DIT_FROM_OFFICIAL.convert(state | {"transformer_blocks.0.2.feed_forward_norm.weight":
                                              torch.empty(3072, device="meta")})
    with torch.device("meta"):
        model = Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT, num_blocks=1))
    del state["transformer_blocks.0.1.self_attention.key_norm.bias"]
    with pytest.raises(CineforgeError, match="1 missing"):
        load_strict(model, K4_DIT_FROM_OFFICIAL.convert(state))


def _loaded(config, state) -> Kandinsky4DiT:
    with torch.device("meta"):
        model = Kandinsky4DiT(config)
    return load_strict(model, K4_DIT_FROM_OFFICIAL.convert(state)).eval()


@pytest.mark.parametrize(("attention", "groups", "rope_scale"), [
    ("sdpa", (1, 1, 1), (1.0, 1.0, 1.0)),  # the 480p release: one group
    ("local_global", (1, 2, 2), (1.0, 2.0, 2.0)),  # the release's HD setting
])
def test_dit_equals_the_release_layout_reference(attention, groups, rope_scale):
    """Official keys -> key map -> our DiT equals the reference on a release-style pack: two
    clips of one size with different frame counts, each with its own text and timestep."""
    config = dataclasses.replace(KANDINSKY4_DIT_TINY, attention=attention, rope_scale=rope_scale)
    state = official_state_dict(config)
    reference = RefKandinsky4(config)
    reference.load_state_dict(state, strict=True)
    ours = _loaded(config, state)
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(16, n, 8, 8, generator=g) for n in (3, 2)]
    texts = [torch.randn(n, 32, generator=g) for n in (5, 3)]
    t = torch.tensor([749.0, 249.0])
    with torch.no_grad():
        want = reference(torch.cat(clips, 1).permute(1, 2, 3, 0), torch.cat(texts), t, [3, 2],
                         [5, 3], groups, rope_scale)
        got = torch.cat(ours.forward_packed(clips, t, texts), 1).permute(1, 2, 3, 0)
        alone = ours(clips[0][None], t[:1], texts[0][None])[0].permute(1, 2, 3, 0)
    assert (got - want).abs().max() <= 1e-4
    assert (alone - want[:3]).abs().max() <= 1e-4
    assert want.abs().max() > 1


def test_packed_items_of_any_shape_equal_forward_alone():
    torch.manual_seed(2)
    model = Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT_TINY, attention="local_global"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    g = torch.Generator().manual_seed(3)
    items = [torch.randn(16, *s, generator=g) for s in ((2, 8, 8), (1, 4, 4), (1, 8, 4))]
    texts = [torch.randn(n, 32, generator=g) for n in (4, 7, 1)]
    t = torch.tensor([999.0, 499.0, 3.0])
    with torch.no_grad():
        packed = model.eval().forward_packed(items, t, texts)
        for i, (x, y) in enumerate(zip(items, texts, strict=True)):
            alone = model(x[None], t[i : i + 1], y[None])[0]
            assert (packed[i] - alone).abs().max() <= 1e-5
            assert packed[i].shape == x.shape


@pytest.mark.parametrize(("attention", "groups"), [("sdpa", 1), ("local_global", 4)])
def test_flops_estimate_counts_every_matmul_and_attention(attention, groups, monkeypatch):
    """``kandinsky4_dit_flops`` = the matmuls torch's FlopCounterMode counts + the attention
    scores and values of every SDPA call (counted by a wrapper: 4 B h Lq Lk D)."""
    sdpa, scores = F.scaled_dot_product_attention, []

    def counting(q, k, v, **kwargs):
        scores.append(4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3])
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT_TINY, attention=attention))
    x, text = torch.randn(2, 16, 2, 8, 8), torch.randn(2, 5, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x, torch.tensor([1.0, 2.0]), text)
    matmuls = sum(n for op, n in counter.get_flop_counts()["Global"].items()
                  if str(op) in ("aten.mm", "aten.addmm", "aten.bmm"))
    assert len(scores) == 2 * model.config.num_blocks
    assert matmuls + sum(scores) == kandinsky4_dit_flops(model.config, x.shape, 5, groups)


def test_dit_refuses_what_it_cannot_run():
    with pytest.raises(CineforgeError, match="NABLA"):
        Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT_TINY, attention="nabla"))
    model = Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT_TINY, rope_max_pos=4))
    with pytest.raises(CineforgeError, match="4 positions per axis"):
        model(torch.zeros(1, 16, 1, 10, 4), 999, torch.zeros(1, 3, 32))
    with pytest.raises(CineforgeError, match="T5 encoder"):
        model(torch.zeros(1, 16, 1, 4, 4), 999, torch.zeros(1, 3, 16))


# ------------------------------------------------------------------------- Flash sampler


def _diffusers_scheduler() -> CogVideoXDDIMScheduler:
    """CogVideoX-5B's scheduler config (diffusers' conversion script), as the release loads."""
    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
        timestep_spacing="trailing", set_alpha_to_one=True, snr_shift_scale=1.0,
        clip_sample=False)


def test_flash_timesteps_and_alphas_equal_cogvideox_ddim():
    scheduler, ours = _diffusers_scheduler(), flash_ddpm_schedule()
    scheduler.set_timesteps(4)
    assert ours.timesteps.tolist() == scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert (ours.alphas_cumprod - scheduler.alphas_cumprod.double()).abs().max() <= 1e-12
    alphas = ours.alphas_cumprod[ours.timesteps]
    assert (alphas - torch.tensor([0.0, 0.03317, 0.24236, 0.65419], dtype=torch.float64)
            ).abs().max() <= 5e-6
    assert alphas[0] == 0  # pure noise at the first step


def _velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the DiT that depends on x and t."""
    return torch.tanh(x) * (t[:, None, None, None, None] / 1000) - 0.3 * x


def test_flash_steps_equal_diffusers_add_noise_and_x0():
    """Each step: diffusers' add_noise to t with the same fresh noise, then the x0 of its
    DDIM step from the same v (``pred_original_sample``)."""
    scheduler, g = _diffusers_scheduler(), torch.Generator().manual_seed(4)
    scheduler.set_timesteps(4)
    shape = (2, 16, 3, 4, 6)
    draws = [torch.randn(shape, generator=g) for _ in range(5)]
    want = draws[0]
    for t, z in zip(scheduler.timesteps, draws[1:], strict=True):
        x_t = scheduler.add_noise(want, z, t)
        v = _velocity(x_t, t.float().expand(shape[0]))
        want = scheduler.step(v, t, x_t).pred_original_sample
    stream = iter(draws[1:])
    steps = list(renoise_steps(_velocity, draws[0], flash_ddpm_schedule(), lambda s: next(stream)))
    assert [s.t for s in steps] == [0.999, 0.749, 0.499, 0.249] and steps[-1].t_next == 0
    assert (steps[-1].x - want).abs().max() <= 1e-5
    a = flash_ddpm_schedule().alpha(749)
    x, z = draws[0], draws[1]
    assert (add_noise(x, z, a) - scheduler.add_noise(x, z, torch.tensor(749))).abs().max() == 0


# ------------------------------------------------------------------------- the pipeline

TINY = "kandinsky4-t2v-tiny"
PROMPT = "a red fox runs through the snow"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    preset = get_preset(TINY)
    torch.manual_seed(0)
    dit = perturb(preset.family.build("dit", preset.dit), seed=5, scale=0.2)
    vae = perturb(preset.family.build("vae", preset.vae), seed=6, scale=0.02)
    return save_components(tmp_path_factory.mktemp("k4"), dit=dit, vae=vae)


def test_tiny_pipeline_runs_and_its_noise_is_the_release_stream_of_the_seed(weights):
    """API run: 4 DiT calls at t = 999..249; the first sees exactly the second channel-last
    draw of the seed's generator (the first is the discarded initial latents, as the
    release draws them)."""
    pipe = cineforge.load_pipeline(TINY, weights=weights, device="cpu")
    seen = []
    hook = pipe.runner.dit.register_forward_hook(
        lambda module, args, out: seen.append((args[0].clone(), args[1].clone())))
    try:
        video = pipe(PROMPT, frames=9, width=32, height=32, seed=7)
    finally:
        hook.remove()
    assert video.frames.shape == (9, 32, 32, 3) and video.fps == 8
    assert [float(t) for _, t in seen] == [999.0, 749.0, 499.0, 249.0]
    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(1, 3, 4, 4, 16, generator=g) for _ in range(2)]
    assert torch.equal(seen[0][0], draws[1].permute(0, 4, 1, 2, 3))
    assert video.numpy().std() > 1


def test_cli_reproduces_the_api_file_and_flash_incompatible_requests_are_refused(
        weights, tmp_path):
    api = cineforge.load_pipeline(TINY, weights=weights)(PROMPT, seed=3, width=32, height=32)
    (want,) = api.save(tmp_path / "api.mp4")
    out = tmp_path / "cli.mp4"
    assert main(["generate", PROMPT, "--preset", TINY, "--weights", str(weights), "--seed", "3",
                 "--size", "32x32", "--out", str(out)]) == 0
    assert out.read_bytes() == want.read_bytes()
    frames, fps = read_video(out)
    assert frames.shape == (9, 32, 32, 3) and fps == 8
    preset = get_preset(TINY)
    for fields, flag in (({"guidance": 5.0}, "guidance"), ({"steps": 8}, "steps"),
                         ({"solver": "euler"}, "solver"), ({"width": 40}, "size"),
                         ({"frames": 5}, "frames")):
        with pytest.raises(CineforgeError) as error:
            preset.family.check_request(preset, preset.request(PROMPT, **fields))
        assert flag in error.value.fields


def test_release_folder_loads_dit_vae_and_unmasked_t5(tmp_path):
    """The release's files (the DiT's .pt, CogVideoX-5B's vae/, text_encoder/, tokenizer/)
    load strictly for the release preset at toy size; T5 gives all text_len rows, padding
    rows included (no mask), and the DiT takes them."""
    from cineforge.families.kandinsky4 import T5_XXL

    tokenizer = tiny_tokenizer()
    t5 = tiny_t5(len(tokenizer))
    release = get_preset("kandinsky4-t2v-flash")
    preset = dataclasses.replace(
        release, dit=dataclasses.replace(KANDINSKY4_DIT_TINY, text_len=12),
        vae=get_preset(TINY).vae, text_encoder=dataclasses.replace(T5_XXL, dim=32))
    torch.manual_seed(0)
    dit = perturb(preset.family.build("dit", preset.dit), seed=1)
    vae = perturb(preset.family.build("vae", preset.vae), seed=2, scale=0.02)
    write_official_folder(tmp_path, preset, dit, vae, text=(t5, tokenizer))
    assert detect_layout(preset, tmp_path) == "official"
    parts = load_components(preset, tmp_path)
    for got, want in ((parts.dit, dit), (parts.vae, vae)):
        assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())
    text = parts.text_encoder.encode(["a red ball"])
    assert text.states.shape == (1, 12, 32) and text.mask.sum() < 12
    assert text.states[0, ~text.mask[0]].abs().sum(-1).min() > 0  # padding rows are states
    with torch.no_grad():
        assert parts.dit(torch.zeros(1, 16, 1, 4, 4), 999, text.states).shape == (1, 16, 1, 4, 4)


def test_release_preset_sizes():
    from cineforge.families.kandinsky4 import SIZES

    preset = get_preset("kandinsky4-t2v-flash")
    assert (preset.height, preset.width) in SIZES and preset.fps == 8
    assert preset.request(PROMPT).frames == 97  # 12 s: 25 latent frames
    for height, width in SIZES:
        preset.family.check_request(preset, preset.request(PROMPT, width=width, height=height))


def test_release_rope_tables_are_checked_before_they_are_dropped(tmp_path):
    """The key map drops the release's stored RoPE tables; they must be the angles the model
    derives: the release's own tables pass, a table of other positions is refused."""
    from cineforge.families.family import load_model
    from cineforge.families.kandinsky4.dit_keys import check_rope_tables

    config = KANDINSKY4_DIT_TINY
    tables = {k: v for k, v in RefKandinsky4(config).state_dict().items()
              if k.startswith("rope_embeddings.")}
    assert len(tables) == 3
    check_rope_tables(tables, config)
    for key in tables:
        for bad in (tables[key] * 2, tables[key][:64]):
            with pytest.raises(CineforgeError, match=f"{key} in the Kandinsky 4.0 checkpoint "
                                                     "is not the RoPE table"):
                check_rope_tables(tables | {key: bad}, config)
    from cineforge.families.kandinsky4 import T5_XXL

    preset = dataclasses.replace(get_preset("kandinsky4-t2v-flash"), dit=config,
                                 vae=get_preset(TINY).vae,
                                 text_encoder=dataclasses.replace(T5_XXL, dim=config.text_dim))
    dit = perturb(preset.family.build("dit", config), seed=1)
    write_official_folder(tmp_path, preset, dit, preset.family.build("vae", preset.vae))
    load_model(preset, tmp_path, "dit")  # the release's tables pass on the loading path
    state = torch.load(tmp_path / "kandinsky4_distil_512.pt")
    state["rope_embeddings.args_1"] = state["rope_embeddings.args_1"] / 2  # HD's scaled table
    torch.save(state, tmp_path / "kandinsky4_distil_512.pt")
    with pytest.raises(CineforgeError, match="rope_embeddings.args_1 in the Kandinsky 4.0"):
        load_model(preset, tmp_path, "dit")
