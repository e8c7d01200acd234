"""Training config loading/overrides, and the flow-matching math (pure functions, fast)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from cineforge.errors import CineforgeError
from cineforge.train.config import ModelSpec, TrainConfig, load_config
from cineforge.train.flow import caption_keep_mask, flow_pair, sample_times
from cineforge.train.models import model_config
from cineforge.train.optim import lr_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS).with_suffix(""))
                                        for p in CONFIGS.rglob("*.yaml")
                                        if p.name != "recipe.yaml"))
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.task == ("vae" if name.endswith("vae") else
                           "distill" if "flash" in name else "dit")
    model_config(config.model, "vae" if config.task == "vae" else "dit")  # valid too


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: vae\nsteps: 10\noptim: {lr: 1.0e-3, betas: [0.9, 0.95]}\n")
    config = load_config(path, ["optim.lr=3e-4", "steps=2000", "flow.packing=true",
                                "model.overrides.base_dim=16", "optim.betas=[0.8, 0.9]"])
    assert config.steps == 2000 and config.task == "vae"
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.optim.betas == (0.8, 0.9)
    assert config.flow.packing is True
    assert config.model.overrides == {"base_dim": 16}
    assert config.optim.weight_decay == TrainConfig().optim.weight_decay  # defaults kept


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'; valid keys of optim: lr, betas"),
        ("stepz=3", "unknown config key 'stepz'; valid keys: task, seed, steps"),
        ("steps=many", "config key 'steps' must be int, got 'many'"),
        ("flow.packing=3", "config key 'flow.packing' must be bool"),
        ("optim.schedule=linear", "optim.schedule must be 'cosine' or 'constant'"),
        ("optim.betas=[0.9]", "config key 'optim.betas' must be"),
        ("task=gan", "task must be one of ('vae', 'dit', 'distill')"),
        ("distill.loss=wgan", "distill.loss must be one of ('hinge', 'lsgan')"),
        ("distill.disc_layers=[1, 1]", "distill.disc_layers must list distinct block indices"),
        ("steps", "is not of the form key=value"),
        ("data.frames=16", "data.frames must be 4k+1"),
        ("data.layout=middle", "data.layout must be one of ('free', 'centred')"),
        ("data.backgrounds=[grey]", "data.backgrounds must name some of"),
        ("data.motions=[sideways]", "data.motions must name some of"),
        ("data.object_scale=2", "data.object_scale must be in [0.5, 1.25], got 2"),
        ("flow.detail_weight=-1", "flow.detail_weight must be >= 0"),
    ],
)
def test_config_errors_name_the_problem(override, message):
    with pytest.raises(CineforgeError, match=re.escape(message)):
        load_config(None, [override])


def test_model_override_errors():
    def dit(preset: str, **overrides):
        return model_config(ModelSpec(preset, overrides), "dit")[1]

    with pytest.raises(CineforgeError, match="unknown WanDiTConfig field 'dims'.*valid: dim"):
        dit("wan2.1-t2v-tiny", dims=3)
    with pytest.raises(CineforgeError, match="not divisible by num_heads"):
        dit("wan2.1-t2v-tiny", dim=33)
    with pytest.raises(CineforgeError, match="unknown preset 'huge'"):
        dit("huge")
    with pytest.raises(CineforgeError, match="unknown DemoDiTConfig field 'abs_position'"):
        dit("demo", abs_position=True)
    # lists from YAML become tuples; the latent statistics follow z_dim
    family, config = model_config(ModelSpec("wan2.1-t2v-tiny",
                                            {"dim_mult": [1, 2, 2, 2], "z_dim": 8}), "vae")
    assert config.dim_mult == (1, 2, 2, 2) and config.latents_std == (1.0,) * 8
    assert family.name == "wan2.1"


def test_missing_config_file(tmp_path):
    with pytest.raises(CineforgeError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_base_config_is_merged_section_by_section(tmp_path):
    (tmp_path / "a.yaml").write_text("task: dit\nsteps: 10\noptim: {lr: 1.0e-3, warmup: 5}\n"
                                      "model: {preset: wan2.1-t2v-tiny, "
                                      "overrides: {dim: 32, num_heads: 2}}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nsteps: 20\noptim: {lr: 2.0e-4}\n"
                                             "model: {overrides: {dim: 64}}\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\ndata: {object_scale: 1.25}\n")
    config = load_config(tmp_path / "c.yaml", ["optim.warmup=7"])
    assert (config.task, config.steps, config.optim.lr, config.optim.warmup) == ("dit", 20, 2e-4, 7)
    assert config.model.overrides == {"dim": 64, "num_heads": 2}  # merged, not replaced
    assert config.data.object_scale == 1.25
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(CineforgeError, match="is its own base .*break the cycle"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(CineforgeError, match=r"config file not found: .*gone.yaml \(the base of"):
        load_config(tmp_path / "c.yaml")


def test_lr_schedule_warmup_then_cosine():
    optim = TrainConfig().optim  # lr factor: warmup 100, cosine to 0.1
    assert lr_factor(0, optim, 1000) == pytest.approx(0.01)
    assert lr_factor(99, optim, 1000) == pytest.approx(1.0)
    assert lr_factor(550, optim, 1000) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(1000, optim, 1000) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- flow math


def test_flow_pair_matches_hand_computation():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    noise = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    t = torch.tensor([0.25, 1.0])
    x_t, v = flow_pair(x0, noise, t)
    # row 0: 0.75 * x0 + 0.25 * noise; row 1 (t = 1): pure noise
    torch.testing.assert_close(x_t, torch.tensor([[0.75, -1.25], [-1.0, 2.0]]))
    torch.testing.assert_close(v, torch.tensor([[-1.0, 3.0], [-1.5, 2.0]]))
    # v is the time derivative of x_t
    eps = 1e-3
    ahead, _ = flow_pair(x0, noise, t - eps)
    torch.testing.assert_close((x_t - ahead) / eps, v, atol=1e-3, rtol=0)


def test_timestep_sampler_statistics():
    g = torch.Generator().manual_seed(0)
    n = 40_000
    plain = sample_times(n, g, kind="logit_normal")
    shifted = sample_times(n, g, kind="logit_normal", shift=3.0)
    assert float(plain.min()) > 0.0 and float(plain.max()) < 1.0
    # logit-normal(0, 1) has median 1/2; shift 3 maps it to 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert abs(float(plain.median()) - 0.5) < 0.01
    assert abs(float(shifted.median()) - 0.75) < 0.01
    assert float((shifted > 0.5).float().mean()) > 0.7  # mass moved toward t = 1
    # logit-normal with std 1: P(t < sigmoid(1)) = Phi(1) = 0.8413
    assert abs(float((plain < 1 / (1 + math.exp(-1))).float().mean()) - 0.8413) < 0.01
    # uniform, shifted: E[3u / (1 + 2u)] = 1.5 * (1 - ln(3) / 2)
    uniform = sample_times(n, g, kind="uniform", shift=3.0)
    assert abs(float(uniform.mean()) - 1.5 * (1 - math.log(3) / 2)) < 0.005
    # the draws come from the generator alone
    again = sample_times(5, torch.Generator().manual_seed(1), kind="uniform")
    torch.testing.assert_close(again, torch.rand(5, generator=torch.Generator().manual_seed(1)))


def test_caption_dropout_rate():
    g = torch.Generator().manual_seed(0)
    keep = caption_keep_mask(50_000, 0.3, g)
    assert abs(1 - float(keep.float().mean()) - 0.3) < 0.01
    assert bool(caption_keep_mask(100, 0.0, g).all())
    assert not bool(caption_keep_mask(100, 1.0, g).any())
