"""One test walks the registry: every preset's family is the registered one and builds its
models; every folder layout of every family, written with the layout's own file and key
names, is detected and loads back into the same tensors, strictly.

A layout is written from a tiny model of ours with random values: its tensors are renamed to
the names of the upstream module tree (the diffusers model of the same size, or the Wan
release's VAE as ``oracles`` writes it out), which the upstream model must accept strictly
where one exists, and saved under the file names the release uses."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    Kandinsky5I2VPipeline,
    Kandinsky5T2IPipeline,
    Kandinsky5T2VPipeline,
    Kandinsky5Transformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)
from safetensors.torch import save_file
from torch import nn

from cineforge.families.family import Family, Preset, detect_layout, load_model
from cineforge.families.kandinsky5.dit import Kandinsky5DiTConfig
from cineforge.families.kandinsky5.dit_keys import K5_DIT_FROM_DIFFUSERS, K5_DIT_FROM_OFFICIAL
from cineforge.families.kandinsky5.flux_vae import FluxVAEConfig
from cineforge.families.kandinsky5.flux_vae_keys import FLUX_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky5.hunyuan_vae import HunyuanVAEConfig
from cineforge.families.kandinsky5.hunyuan_vae_keys import HUNYUAN_VAE_FROM_DIFFUSERS
from cineforge.families.registry import FAMILIES, PRESETS
from cineforge.families.wan.dit import WanDiTConfig
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.families.wan.i2v_keys import WAN_I2V_DIT_FROM_DIFFUSERS, WAN_I2V_DIT_FROM_OFFICIAL
from cineforge.families.wan.vae import WanVAEConfig
from cineforge.families.wan.vae22_keys import WAN22_VAE_FROM_DIFFUSERS, WAN22_VAE_FROM_OFFICIAL
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS, WAN_VAE_FROM_OFFICIAL
from cineforge.weights.keymap import KeyMap
from cogvideox_oracles import write_registry_layout
from k4_oracles import write_official_folder
from oracles import official_vae_state_dict, perturb
from wan22_oracles import diffusers_vae22, official_vae22_state_dict

PAIRS = [(f.name, layout) for f in FAMILIES.values() for layout in f.layouts]


# ------------------------------------------------------------ upstream models at tiny size


def _wan_dit(c: WanDiTConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, text_dim=c.text_dim,
        freq_dim=c.freq_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm, qk_norm="rms_norm_across_heads", eps=c.eps,
    )


def _wan_vae(c: WanVAEConfig) -> AutoencoderKLWan:
    return AutoencoderKLWan(base_dim=c.base_dim, z_dim=c.z_dim, dim_mult=list(c.dim_mult),
                            num_res_blocks=c.num_res_blocks,
                            temperal_downsample=list(c.temporal_downsample))


def _k5_dit(c: Kandinsky5DiTConfig) -> Kandinsky5Transformer3DModel:
    return Kandinsky5Transformer3DModel(
        in_visual_dim=c.in_channels, in_text_dim=c.text_dim, in_text_dim2=c.pooled_dim,
        time_dim=c.time_dim, out_visual_dim=c.out_channels, patch_size=c.patch_size,
        model_dim=c.model_dim, ff_dim=c.ff_dim, num_text_blocks=c.num_text_blocks,
        num_visual_blocks=c.num_visual_blocks, axes_dims=c.axes_dims, visual_cond=c.visual_cond,
    )


def _hunyuan_vae(c: HunyuanVAEConfig) -> AutoencoderKLHunyuanVideo:
    return AutoencoderKLHunyuanVideo(
        block_out_channels=c.block_out_channels, latent_channels=c.latent_channels,
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
        mid_block_add_attention=c.mid_attention,
    )


def _flux_vae(c: FluxVAEConfig) -> AutoencoderKL:
    n = len(c.dim_mult)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(c.widths), layers_per_block=c.num_res_blocks,
        latent_channels=c.z_dim, norm_num_groups=c.norm_groups, use_quant_conv=False,
        use_post_quant_conv=False,
    )


# ------------------------------------------------------------------------- renaming


def _renamed(ours: nn.Module, names: Iterable[str], keymap: KeyMap) -> dict[str, torch.Tensor]:
    """``ours``'s tensors under a layout's key ``names``: ``keymap`` takes each name to one of
    our keys (the names travel through ``convert`` as index tensors); every tensor of ours
    must be named."""
    names = list(names)
    index = keymap.convert({k: torch.full((1, 1), i) for i, k in enumerate(names)})
    state = ours.state_dict()
    assert index.keys() == state.keys(), set(index) ^ set(state)
    return {names[int(i)]: state[k].contiguous() for k, i in index.items()}


def _into(upstream: nn.Module, ours: nn.Module, keymap: KeyMap) -> nn.Module:
    """The upstream model holding our values (it must take every one of its keys)."""
    upstream.load_state_dict(_renamed(ours, upstream.state_dict(), keymap), strict=True)
    return upstream


# -------------------------------------------------------------- one writer per layout

Writer = Callable[[Path, Preset, nn.Module, nn.Module], None]


def _write_cineforge(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
    for name, model in (("dit", dit), ("vae", vae)):
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, folder / f"{name}.safetensors")


def _write_wan_official(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
    """Wan2.1-T2V: the DiT in the release's module names (ours), the VAE as a ``.pth``."""
    save_file(_renamed(dit, dit.state_dict(), WAN_DIT_FROM_OFFICIAL),
              folder / "diffusion_pytorch_model.safetensors")
    release = official_vae_state_dict(preset.vae, lambda *shape: None)
    torch.save(_renamed(vae, release, WAN_VAE_FROM_OFFICIAL), folder / "Wan2.1_VAE.pth")


def _write_wan_diffusers(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
    WanPipeline(
        tokenizer=None, text_encoder=None,
        transformer=_into(_wan_dit(preset.dit), dit, WAN_DIT_FROM_DIFFUSERS),
        vae=_into(_wan_vae(preset.vae), vae, WAN_VAE_FROM_DIFFUSERS),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    ).save_pretrained(folder)


def _write_wan_i2v_official(folder: Path, preset: Preset, dit: nn.Module,
                            vae: nn.Module) -> None:
    """Wan2.1-I2V: as the T2V release, with the image path's keys (``img_emb.proj``...)."""
    save_file(_renamed(dit, dit.state_dict(), WAN_I2V_DIT_FROM_OFFICIAL),
              folder / "diffusion_pytorch_model.safetensors")
    release = official_vae_state_dict(preset.vae, lambda *shape: None)
    torch.save(_renamed(vae, release, WAN_VAE_FROM_OFFICIAL), folder / "Wan2.1_VAE.pth")


def _write_wan_i2v_diffusers(folder: Path, preset: Preset, dit: nn.Module,
                             vae: nn.Module) -> None:
    c = preset.dit
    transformer = WanTransformer3DModel(
        patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, text_dim=c.text_dim,
        freq_dim=c.freq_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm, qk_norm="rms_norm_across_heads", eps=c.eps,
        image_dim=c.image_dim, added_kv_proj_dim=c.dim,
    )
    WanPipeline(
        tokenizer=None, text_encoder=None,
        transformer=_into(transformer, dit, WAN_I2V_DIT_FROM_DIFFUSERS),
        vae=_into(_wan_vae(preset.vae), vae, WAN_VAE_FROM_DIFFUSERS),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    ).save_pretrained(folder)


def _write_wan_experts_official(folder: Path, preset: Preset, dit: nn.Module,
                                vae: nn.Module) -> None:
    """Wan2.2-A14B: each expert in the release's names under ``high_noise_model/`` and
    ``low_noise_model/``, the VAE as ``Wan2.1_VAE.pth``."""
    for name in ("high_noise_model", "low_noise_model"):
        expert = getattr(dit, name)
        (folder / name).mkdir()
        save_file(_renamed(expert, expert.state_dict(), WAN_DIT_FROM_OFFICIAL),
                  folder / name / "diffusion_pytorch_model.safetensors")
    release = official_vae_state_dict(preset.vae, lambda *shape: None)
    torch.save(_renamed(vae, release, WAN_VAE_FROM_OFFICIAL), folder / "Wan2.1_VAE.pth")


def _write_wan_experts_diffusers(folder: Path, preset: Preset, dit: nn.Module,
                                 vae: nn.Module) -> None:
    high, low = (_into(_wan_dit(preset.dit), expert, WAN_DIT_FROM_DIFFUSERS)
                 for expert in (dit.high_noise_model, dit.low_noise_model))
    WanPipeline(
        tokenizer=None, text_encoder=None, transformer=high, transformer_2=low,
        vae=_into(_wan_vae(preset.vae), vae, WAN_VAE_FROM_DIFFUSERS),
        scheduler=FlowMatchEulerDiscreteScheduler(), boundary_ratio=preset.dit.boundary,
    ).save_pretrained(folder)


def _write_wan22_official(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
    """Wan2.2-TI2V-5B: the DiT in the release's module names, the VAE as ``Wan2.2_VAE.pth``."""
    save_file(_renamed(dit, dit.state_dict(), WAN_DIT_FROM_OFFICIAL),
              folder / "diffusion_pytorch_model.safetensors")
    release = official_vae22_state_dict(preset.vae, lambda *shape: None)
    torch.save(_renamed(vae, release, WAN22_VAE_FROM_OFFICIAL), folder / "Wan2.2_VAE.pth")


def _write_wan22_diffusers(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
    WanPipeline(
        tokenizer=None, text_encoder=None,
        transformer=_into(_wan_dit(preset.dit), dit, WAN_DIT_FROM_DIFFUSERS),
        vae=_into(diffusers_vae22(preset.vae), vae, WAN22_VAE_FROM_DIFFUSERS),
        scheduler=FlowMatchEulerDiscreteScheduler(), expand_timesteps=True,
    ).save_pretrained(folder)


def _k5_writers(pipeline: type, make_vae: Callable, vae_keys: KeyMap,
                vae_dir: str) -> dict[str, Writer]:
    """Kandinsky 5's diffusers folder, and its release folder: ``model/<dit_file>`` in
    diffusers' DiT names plus the VAE's diffusers folder at ``vae_dir``."""

    def diffusers(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
        pipeline(
            transformer=_into(_k5_dit(preset.dit), dit, K5_DIT_FROM_DIFFUSERS),
            vae=_into(make_vae(preset.vae), vae, vae_keys), text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(),
        ).save_pretrained(folder)

    def official(folder: Path, preset: Preset, dit: nn.Module, vae: nn.Module) -> None:
        (folder / "model").mkdir()
        with torch.device("meta"):
            names = _k5_dit(preset.dit).state_dict()
        save_file(_renamed(dit, names, K5_DIT_FROM_OFFICIAL),
                  folder / "model" / f"{preset.dit_file}.safetensors")
        _into(make_vae(preset.vae), vae, vae_keys).save_pretrained(folder / vae_dir)

    return {"diffusers": diffusers, "official": official}


_K5_VIDEO = _k5_writers(Kandinsky5T2VPipeline, _hunyuan_vae, HUNYUAN_VAE_FROM_DIFFUSERS, "vae")
_K5_IMAGE = _k5_writers(Kandinsky5T2IPipeline, _flux_vae, FLUX_VAE_FROM_DIFFUSERS, "flux/vae")
_K5_I2V = _k5_writers(Kandinsky5I2VPipeline, _hunyuan_vae, HUNYUAN_VAE_FROM_DIFFUSERS, "vae")

WRITERS: dict[tuple[str, str], Writer] = {
    ("demo", "cineforge"): _write_cineforge,
    ("demo-i2v", "cineforge"): _write_cineforge,
    ("wan2.1", "cineforge"): _write_cineforge,
    ("wan2.1", "diffusers"): _write_wan_diffusers,
    ("wan2.1", "official"): _write_wan_official,
    ("wan2.1-i2v", "cineforge"): _write_cineforge,
    ("wan2.1-i2v", "diffusers"): _write_wan_i2v_diffusers,
    ("wan2.1-i2v", "official"): _write_wan_i2v_official,
    ("wan2.2-t2v-a14b", "cineforge"): _write_cineforge,
    ("wan2.2-t2v-a14b", "diffusers"): _write_wan_experts_diffusers,
    ("wan2.2-t2v-a14b", "official"): _write_wan_experts_official,
    ("wan2.2-i2v-a14b", "cineforge"): _write_cineforge,
    ("wan2.2-i2v-a14b", "diffusers"): _write_wan_experts_diffusers,
    ("wan2.2-i2v-a14b", "official"): _write_wan_experts_official,
    ("wan2.2-ti2v", "cineforge"): _write_cineforge,
    ("wan2.2-ti2v", "diffusers"): _write_wan22_diffusers,
    ("wan2.2-ti2v", "official"): _write_wan22_official,
    ("kandinsky5", "cineforge"): _write_cineforge,
    ("kandinsky5", "diffusers"): _K5_VIDEO["diffusers"],
    ("kandinsky5", "official"): _K5_VIDEO["official"],
    ("kandinsky5-i2v", "cineforge"): _write_cineforge,
    ("kandinsky5-i2v", "diffusers"): _K5_I2V["diffusers"],
    ("kandinsky5-i2v", "official"): _K5_I2V["official"],
    ("kandinsky5-image", "cineforge"): _write_cineforge,
    ("kandinsky5-image", "diffusers"): _K5_IMAGE["diffusers"],
    ("kandinsky5-image", "official"): _K5_IMAGE["official"],
    ("cogvideox", "cineforge"): _write_cineforge,
    ("cogvideox", "diffusers"): write_registry_layout,
    ("cogvideox-i2v", "cineforge"): _write_cineforge,
    ("cogvideox-i2v", "diffusers"): write_registry_layout,
    ("kandinsky4", "cineforge"): _write_cineforge,
    ("kandinsky4", "official"): write_official_folder,
}


# ---------------------------------------------------------------------------- the tests


def _tiny_preset(family: Family) -> Preset:
    """The family's first preset with the family's tiny configs; its text-encoder spec gets
    the tiny DiT's widths (nothing here loads a text encoder)."""
    preset = next((p for p in PRESETS.values() if p.family is family), None)
    if preset is None:
        pytest.fail(f"family {family.name!r} has no preset in the registry")
    dit = family.tiny_dit
    text = dataclasses.replace(preset.text, dim=dit.text_dim,
                               pooled_dim=dit.pooled_dim if preset.text.pooled_dim else None)
    return dataclasses.replace(preset, dit=dit, vae=family.tiny_vae, text_encoder=text)


@functools.cache
def _our_models(family_name: str) -> tuple[nn.Module, nn.Module]:
    """The family's tiny DiT and VAE, every parameter perturbed (no two tensors alike)."""
    family = FAMILIES[family_name]
    torch.manual_seed(0)
    return (perturb(family.build("dit", family.tiny_dit), 1),
            perturb(family.build("vae", family.tiny_vae), 2, scale=0.02))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_has_a_registered_family_that_builds_it(name):
    """The preset's family is the registry's object; its tiny configs and the preset's own
    build (on the meta device) into the family's classes; its default request passes."""
    preset = PRESETS[name]
    family = preset.family
    assert preset.name == name
    assert FAMILIES.get(family.name) is family
    with torch.device("meta"):
        for part in ("dit", "vae"):
            tiny_config = getattr(family, f"tiny_{part}")
            assert type(getattr(preset, part)) is type(tiny_config)
            for config in (tiny_config, getattr(preset, part)):
                model = family.build(part, config)
                assert type(model) is family.model_class(part) and model.config == config
                assert all(p.is_meta for p in model.parameters())
    image = torch.zeros(3, preset.height, preset.width) if family.pipeline.image_to_video else None
    family.check_request(preset, preset.request("a red ball", image=image))  # defaults honoured


def test_every_writer_is_for_a_registered_layout():
    assert set(WRITERS) <= set(PAIRS), set(WRITERS) - set(PAIRS)


@pytest.mark.parametrize(("family_name", "layout"), PAIRS, ids=[f"{f}-{lay}" for f, lay in PAIRS])
def test_every_layout_of_every_family_loads_strictly(family_name, layout, tmp_path):
    write = WRITERS.get((family_name, layout))
    if write is None:
        pytest.fail(f"family {family_name!r} has a layout {layout!r} this test cannot write: "
                    "add its writer to WRITERS")
    family = FAMILIES[family_name]
    preset = _tiny_preset(family)
    dit, vae = _our_models(family_name)
    write(tmp_path, preset, dit, vae)
    assert detect_layout(preset, tmp_path) == layout
    for part, want in (("dit", dit), ("vae", vae)):
        got = load_model(preset, tmp_path, part)
        assert type(got) is type(want) and got.config == want.config
        got_state, want_state = got.state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys()
        assert all(torch.equal(got_state[k], want_state[k]) for k in want_state), part
