"""LoRA files in each key format onto the tiny Wan, Kandinsky 5 and demo DiTs: the weights each
changes, merged == unmerged, parity with diffusers' own LoRA loading, errors, the CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import WanPipeline
from safetensors.torch import save_file

from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.families.demo import DEMO_FAMILY, DEMO_TINY
from cineforge.families.family import save_components
from cineforge.families.kandinsky5 import KANDINSKY5
from cineforge.families.kandinsky5.dit import K5_DIT_TINY, Kandinsky5DiT
from cineforge.families.registry import get_preset
from cineforge.families.wan import WAN21
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT, pad_context
from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS
from cineforge.families.wan.vae import WanVAE
from cineforge.io.video import read_video
from cineforge.weights.keymap import load_strict
from cineforge.weights.lora import LoraFile, LoraLinear, apply_loras, read_loras
from oracles import perturb, tiny_wan_transformer

RANK = 4
TINY = "wan2.1-t2v-tiny"
WAN_KEYMAPS = {name: layout.dit.keymap for name, layout in WAN21.layouts.items()}
K5_KEYMAPS = {name: layout.dit.keymap for name, layout in KANDINSKY5.layouts.items()}
# Our module -> its diffusers name (WanTransformer3DModel), written from diffusers' modules.
WAN_DIFFUSERS_NAMES = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.1.cross_attn.o": "blocks.1.attn2.to_out.0",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
    "head.head": "proj_out",
}


def _wan(seed: int = 1) -> WanDiT:
    """The tiny Wan DiT with the diffusers oracle's (perturbed, non-trivial) weights."""
    with torch.device("meta"):
        model = WanDiT(WAN_DIT_TINY)
    state = WAN_DIT_FROM_DIFFUSERS.convert(tiny_wan_transformer(seed).state_dict())
    return load_strict(model, state)


def _pairs(model, modules, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A random (down, up) pair of rank ``RANK`` for each of our linear ``modules``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in modules:
        w = model.get_submodule(name).weight
        out[name] = (0.3 * torch.randn(RANK, w.shape[1], generator=g),
                     0.3 * torch.randn(w.shape[0], RANK, generator=g))
    return out


def _diffusers_file(pairs, names=WAN_DIFFUSERS_NAMES) -> dict[str, torch.Tensor]:
    sd = {}
    for ours, (down, up) in pairs.items():
        sd[f"transformer.{names[ours]}.lora_A.weight"] = down
        sd[f"transformer.{names[ours]}.lora_B.weight"] = up
    return sd


def _official_file(pairs, alpha: float, down="lora_A", up="lora_B") -> dict[str, torch.Tensor]:
    """LightX2V / ComfyUI style: official names under ``diffusion_model.``; ``head.head``
    carries no alpha (as in the released files)."""
    sd = {}
    for ours, (a, b) in pairs.items():
        sd[f"diffusion_model.{ours}.{down}.weight"] = a
        sd[f"diffusion_model.{ours}.{up}.weight"] = b
        if ours != "head.head":
            sd[f"diffusion_model.{ours}.alpha"] = torch.tensor(alpha)
    return sd


def _kohya_file(pairs, alpha: float) -> dict[str, torch.Tensor]:
    sd = {}
    for ours, (a, b) in pairs.items():
        stem = "lora_unet_" + ours.replace(".", "_")
        sd[f"{stem}.lora_down.weight"] = a
        sd[f"{stem}.lora_up.weight"] = b
        sd[f"{stem}.alpha"] = torch.tensor(alpha)
    return sd


def _expected(model, pairs, scale, alpha_of) -> dict[str, torch.Tensor]:
    """Our state dict after ``W + scale * alpha / rank * up @ down`` on each pair."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for ours, (down, up) in pairs.items():
        sd[f"{ours}.weight"] += scale * alpha_of(ours) / RANK * up @ down
    return sd


def _assert_state(model, expected):
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k in got:
        torch.testing.assert_close(got[k], expected[k], atol=1e-6, rtol=0, msg=k)


def _wan_inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    return x, torch.tensor([0.4]), pad_context(torch.randn(1, 6, 32, generator=g), 16)


@pytest.mark.parametrize("fmt", ["diffusers", "official", "official-down-up", "kohya"])
def test_each_format_changes_exactly_its_weights(fmt):
    model = _wan()
    pairs = _pairs(model, WAN_DIFFUSERS_NAMES)
    alpha = 2.0
    state, alpha_of = {
        "diffusers": (_diffusers_file(pairs), lambda m: RANK),
        "official": (_official_file(pairs, alpha), lambda m: RANK if m == "head.head" else alpha),
        "official-down-up": (_official_file(pairs, alpha, "lora_down", "lora_up"),
                             lambda m: RANK if m == "head.head" else alpha),
        "kohya": (_kohya_file(pairs, alpha), lambda m: alpha),
    }[fmt]
    expected = _expected(model, pairs, 0.7, alpha_of)
    apply_loras(model, [LoraFile(fmt, state, 0.7)], WAN_KEYMAPS)
    _assert_state(model, expected)


def test_official_full_deltas_for_norms_and_biases():
    model = _wan()
    g = torch.Generator().manual_seed(5)
    diffs = {
        "blocks.0.norm3.weight": "diffusion_model.blocks.0.norm3.diff",
        "blocks.0.norm3.bias": "diffusion_model.blocks.0.norm3.diff_b",
        "blocks.1.self_attn.norm_k.weight": "diffusion_model.blocks.1.self_attn.norm_k.diff",
        "blocks.0.self_attn.q.bias": "diffusion_model.blocks.0.self_attn.q.diff_b",
    }
    params = dict(model.named_parameters())
    state = {key: torch.randn(params[ours].shape, generator=g) for ours, key in diffs.items()}
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for ours, key in diffs.items():
        expected[ours] += 0.5 * state[key]
    apply_loras(model, [LoraFile("diffs", state, 0.5)], WAN_KEYMAPS)
    _assert_state(model, expected)


def test_merged_equals_unmerged_with_stacked_loras():
    base = _wan()
    first = _official_file(_pairs(base, WAN_DIFFUSERS_NAMES, seed=1), alpha=8.0)
    first["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.randn(32)  # merged either way
    second = _kohya_file(_pairs(base, ["blocks.0.self_attn.q", "blocks.1.ffn.2"], seed=2), 1.0)
    loras = [LoraFile("a", first, 0.8), LoraFile("b", second, -1.5)]
    merged = apply_loras(_wan(), loras, WAN_KEYMAPS)
    unmerged = apply_loras(_wan(), loras, WAN_KEYMAPS, merge=False)
    q = unmerged.blocks[0].self_attn.q
    assert isinstance(q, LoraLinear) and len(q.paths) == 2  # both LoRAs stack on it
    with torch.no_grad():
        plain, a, b = base(*_wan_inputs()), merged(*_wan_inputs()), unmerged(*_wan_inputs())
    assert (a - plain).abs().max() > 0.1  # the LoRAs change the output
    assert (a - b).abs().max().item() <= 1e-5


def _diffusers_with(state_file, scale):
    ref = tiny_wan_transformer()
    lora = WanPipeline.lora_state_dict(str(state_file))  # diffusers' own format conversion
    ref.load_lora_adapter(lora, prefix="transformer", adapter_name="x")
    ref.set_adapters(["x"], weights=[scale])
    return ref


@pytest.mark.parametrize("fmt", ["diffusers", "official", "kohya"])
def test_same_output_as_diffusers_lora_loading(fmt, tmp_path):
    ours = _wan()
    pairs = _pairs(ours, WAN_DIFFUSERS_NAMES)
    if fmt == "kohya":  # musubi-tuner's files cover every linear layer of the blocks only
        pairs = _pairs(ours, [f"blocks.{i}.{m}" for i in range(2) for m in
                              ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                               "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                               "ffn.0", "ffn.2")])
    state = {"diffusers": lambda: _diffusers_file(pairs),
             "official": lambda: _official_file(pairs, alpha=2.0),
             "kohya": lambda: _kohya_file(pairs, alpha=2.0)}[fmt]()
    if fmt == "official":  # a bias delta, which diffusers reads as PEFT's lora_B.bias
        state["diffusion_model.blocks.0.self_attn.q.diff_b"] = 0.5 * torch.randn(32)
    save_file(state, tmp_path / "lora.safetensors")
    ref = _diffusers_with(tmp_path / "lora.safetensors", 0.6)
    apply_loras(ours, read_loras([(tmp_path / "lora.safetensors", 0.6)]), WAN_KEYMAPS)
    x, t, context = _wan_inputs()
    with torch.no_grad():
        expected = ref(x, t * 1000, context, return_dict=False)[0]
        got = ours(x, t, context)
        plain = tiny_wan_transformer()(x, t * 1000, context, return_dict=False)[0]
    assert (expected - plain).abs().max() > 0.1  # diffusers applied the LoRA
    assert (got - expected).abs().max().item() <= 1e-4


def test_kandinsky5_diffusers_format():
    torch.manual_seed(0)
    model = perturb(Kandinsky5DiT(K5_DIT_TINY), seed=3)
    modules = ["visual_transformer_blocks.1.cross_attention.to_query",
               "text_transformer_blocks.0.feed_forward.in_layer",
               "out_layer.out_layer"]
    pairs = _pairs(model, modules)
    state = _diffusers_file(pairs, names={m: m for m in modules})
    state |= {f"transformer.{m}.alpha": torch.tensor(1.0) for m in modules}
    expected = _expected(model, pairs, 1.0, lambda m: 1.0)
    unmerged = apply_loras(copy.deepcopy(model), [LoraFile("k5", state)], K5_KEYMAPS,
                           merge=False)
    apply_loras(model, [LoraFile("k5", state)], K5_KEYMAPS)
    _assert_state(model, expected)
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 6, 32, generator=g)
    pooled, t = torch.randn(1, 16, generator=g), torch.tensor([0.3])
    with torch.no_grad():
        diff = (model(x, t, text, pooled) - unmerged(x, t, text, pooled)).abs().max().item()
    assert diff <= 1e-5


def test_demo_takes_official_and_kohya_names():
    torch.manual_seed(0)
    model = DEMO_FAMILY.build("dit", DEMO_TINY.dit)
    pairs = _pairs(model, ["blocks.0.cross_attn.k", "blocks.1.ffn.0"])
    expected = _expected(model, pairs, 1.0, lambda m: 2.0)
    keymaps = {name: layout.dit.keymap for name, layout in DEMO_FAMILY.layouts.items()}
    apply_loras(model, [LoraFile("kohya", _kohya_file(pairs, alpha=2.0))], keymaps)
    _assert_state(model, expected)


def test_unmatched_keys_are_listed():
    model = _wan()
    state = _diffusers_file(_pairs(model, WAN_DIFFUSERS_NAMES))
    for i in range(5):
        state[f"transformer.blocks.0.attn1.to_z{i}.lora_A.weight"] = torch.zeros(RANK, 32)
    with pytest.raises(CineforgeError) as err:
        apply_loras(model, [LoraFile("LoRA bad", state)], WAN_KEYMAPS)
    message = str(err.value)
    assert "\n" not in message and "5 keys" in message
    assert "transformer.blocks.0.attn1.to_z0.lora_A.weight" in message and "..." in message
    state = {"blocks.0.self_attn.q.weight": torch.zeros(32, 32)}  # a checkpoint, not a LoRA
    with pytest.raises(CineforgeError, match=r"1 keys are not LoRA tensors.*self_attn\.q\.weight"):
        apply_loras(model, [LoraFile("LoRA ckpt", state)], WAN_KEYMAPS)


def test_wrong_shapes_and_missing_files():
    model = _wan()
    state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, 48),
             "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(32, RANK)}
    with pytest.raises(CineforgeError, match="another model size"):
        apply_loras(model, [LoraFile("x", state)], WAN_KEYMAPS)
    with pytest.raises(CineforgeError, match="no lora_B/lora_up partner"):
        apply_loras(model, [LoraFile("x", dict(list(state.items())[:1]))], WAN_KEYMAPS)
    with pytest.raises(CineforgeError, match="LoRA file not found"):
        read_loras(["missing.safetensors"])
    with pytest.raises(CineforgeError, match="finite number"):
        read_loras([("missing.safetensors", float("nan"))])


@pytest.fixture(scope="module")
def wan_tiny(tmp_path_factory):
    """wan2.1-t2v-tiny weights, plus one LoRA saved in the official and the kohya format."""
    preset = get_preset(TINY)
    torch.manual_seed(0)
    dit = perturb(WanDiT(preset.dit), seed=3)
    vae = perturb(WanVAE(preset.vae), seed=4, scale=0.02)
    folder = save_components(tmp_path_factory.mktemp("tiny"), dit=dit, vae=vae)
    pairs = _pairs(dit, ["blocks.0.self_attn.q", "blocks.1.ffn.2", "head.head"])
    save_file(_official_file(pairs, alpha=RANK), folder / "lora.safetensors")
    save_file(_kohya_file(pairs, alpha=RANK), folder / "kohya.safetensors")
    return folder


def _generate(folder, out, *extra):
    return main(["generate", "a red circle moves to the right", "--preset", TINY,
                 "--weights", str(folder), "--out", str(out), "--steps", "2", "--frames", "1",
                 "--size", "32x32", *extra])


def test_cli_lora_end_to_end(wan_tiny, tmp_path, capsys):
    lora, kohya = wan_tiny / "lora.safetensors", wan_tiny / "kohya.safetensors"
    runs = {"plain": (), "lora": ("--lora", f"{lora}:1.5"),
            "cancel": ("--lora", f"{lora}:1.5", "--lora", f"{kohya}:-1.5")}
    frames = {}
    for name, extra in runs.items():
        assert _generate(wan_tiny, tmp_path / f"{name}.png", *extra) == 0
        frames[name] = read_video(tmp_path / f"{name}.png")[0].astype(int)
    assert np.abs(frames["lora"] - frames["plain"]).mean() > 1.0
    assert np.abs(frames["cancel"] - frames["plain"]).max() <= 1  # the same LoRA, two formats
    assert _generate(wan_tiny, tmp_path / "bad.png", "--lora", "missing.safetensors:0.5") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # one line, before any loading
    assert "cineforge: error: LoRA file not found: missing.safetensors; pass --lora" in err
