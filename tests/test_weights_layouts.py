"""Loading a preset from each folder layout: official (sharded), diffusers, cineforge."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from safetensors.torch import save_file

from cineforge.errors import CineforgeError
from cineforge.families.family import detect_layout, load_components, load_model, save_components
from cineforge.families.registry import get_preset
from cineforge.families.wan.dit import WanDiT
from cineforge.families.wan.vae import WanVAE
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_OFFICIAL
from oracles import official_vae_state_dict, perturb, tiny_wan_transformer, tiny_wan_vae

PRESET = get_preset("wan2.1-t2v-tiny")


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([0.3]),
            torch.randn(1, 77, 384, generator=g))


def _reference_models():
    torch.manual_seed(0)
    return perturb(WanDiT(PRESET.dit), 5), perturb(WanVAE(PRESET.vae), 6, scale=0.02)


def _write_official(folder, dit, vae, shards=2):
    """The release layout: sharded DiT safetensors + index, VAE as a ``.pth`` state dict."""
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ours = vae.state_dict()
    official = {k: ours[WAN_VAE_FROM_OFFICIAL.target(k)]
                for k in official_vae_state_dict(PRESET.vae, lambda *s: None)}
    torch.save(official, folder / "Wan2.1_VAE.pth")


def test_official_sharded_layout_loads_exactly(tmp_path):
    dit, vae = _reference_models()
    _write_official(tmp_path, dit, vae)
    assert detect_layout(PRESET, tmp_path) == "official"
    parts = load_components(PRESET, tmp_path)
    for ours, ref in ((parts.dit, dit), (parts.vae, vae)):
        got, want = ours.state_dict(), ref.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert parts.text_encoder.max_length == PRESET.dit.text_len


def test_official_layout_missing_shard_and_corrupt_vae(tmp_path):
    dit, vae = _reference_models()
    _write_official(tmp_path, dit, vae)
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CineforgeError, match="00002-of-00002.safetensors"):
        load_model(PRESET, tmp_path, "dit")
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CineforgeError, match="Wan2.1_VAE.pth"):
        load_model(PRESET, tmp_path, "vae")


def test_diffusers_layout_matches_diffusers_models(tmp_path):
    transformer, vae = tiny_wan_transformer(text_dim=384), tiny_wan_vae()
    WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path)
    assert detect_layout(PRESET, tmp_path) == "diffusers"
    dit = load_model(PRESET, tmp_path, "dit")
    x, t, ctx = _inputs()
    with torch.no_grad():
        want = transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=ctx).sample
        got = dit(x, t, ctx)
    assert (got - want).abs().max().item() <= 1e-4
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ours_vae = load_model(PRESET, tmp_path, "vae")
    with torch.no_grad():
        want = vae.decode(ours_vae.denormalize(z)).sample.clamp(-1, 1)
    assert (ours_vae.decode(z) - want).abs().max().item() <= 1e-4


def test_wrong_preset_for_the_files_is_a_clear_error(tmp_path):
    dit, vae = _reference_models()
    _write_official(tmp_path, dit, vae)
    with pytest.raises(CineforgeError, match="do not fit the model"):
        load_model(get_preset("wan2.1-t2v-1.3b"), tmp_path, "dit")


def test_bf16_load_keeps_values(tmp_path):
    dit, vae = _reference_models()
    _write_official(tmp_path, dit, vae)
    loaded = load_model(PRESET, tmp_path, "dit", dtype=torch.bfloat16)
    w = loaded.patch_embedding.weight
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float(), dit.patch_embedding.weight.bfloat16().float())


def test_embedded_preset_loads_without_a_folder(tmp_path, monkeypatch):
    from cineforge.families import family

    dit, vae = _reference_models()
    save_components(tmp_path / "toy", dit=dit, vae=vae, dtype=torch.float16)
    monkeypatch.setattr(family, "ASSETS", tmp_path)
    embedded = dataclasses.replace(PRESET, embedded="toy")
    parts = load_components(embedded, None)
    assert parts.dit.patch_embedding.weight.dtype == torch.float32  # fp16 files, fp32 model
    torch.testing.assert_close(parts.dit.patch_embedding.weight,
                               dit.patch_embedding.weight.half().float())
    with pytest.raises(CineforgeError, match="needs weights=DIR"):
        load_components(PRESET, None)


def test_cineforge_export_is_built_from_its_own_config(tmp_path):
    """A cineforge-layout folder with ``dit.json`` (what ``cineforge train`` exports) loads
    the model that config describes, here with a larger position table, under the preset it
    was trained for; without the JSON the preset's config is used, and refuses those weights."""
    from cineforge.weights.files import write_model_config

    demo = get_preset("demo-tiny")
    grown = dataclasses.replace(demo.dit, position_table=(5, 4, 6))
    assert grown != demo.dit
    torch.manual_seed(0)
    dit = perturb(demo.family.build("dit", grown), 7)
    vae = demo.family.build("vae", demo.vae)
    save_components(tmp_path, dit=dit, vae=vae)
    with pytest.raises(CineforgeError, match="shape mismatches .*pos_table"):
        load_model(demo, tmp_path, "dit")
    write_model_config(grown, tmp_path / "dit.json")
    loaded = load_model(demo, tmp_path, "dit")
    assert loaded.config == grown
    x, t, ctx = _inputs()
    x = x[:, : grown.in_channels]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ctx), dit(x, t, ctx), rtol=0, atol=1e-5)
    write_model_config(vae.config, tmp_path / "dit.json")  # the wrong kind of config
    with pytest.raises(CineforgeError, match="holds a CompactVAEConfig, not a DemoDiTConfig"):
        load_model(demo, tmp_path, "dit")
