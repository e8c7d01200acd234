"""Wan 2.1 I2V's CLIP from the release's own file (``models_clip_open-clip-xlm-roberta-large-
vit-huge-14.pth``, the layout of ``wan/modules/clip.py``): converted onto transformers'
``CLIPVisionModel`` it gives the states of a direct implementation of the release's vision
tower (its penultimate block, ``use_31_block``), preprocessing included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError
from cineforge.families.wan.clip_keys import CLIP_FILE, RELEASE_HEAD_DIM
from cineforge.families.wan.image_encoder import CLIP_MEAN, CLIP_STD, load_image_encoder

WIDTH, LAYERS, PATCH, IMAGE, FFN = 2 * RELEASE_HEAD_DIM, 3, 8, 32, 96


def release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny release-layout CLIP: the vision tower's keys (release names and shapes) plus the
    parts image-to-video drops (a text tower stand-in, the logit scale, the head)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    tokens = (IMAGE // PATCH) ** 2 + 1
    state = {"visual.patch_embedding.weight": rand(WIDTH, 3, PATCH, PATCH),
             "visual.cls_embedding": rand(1, 1, WIDTH, scale=0.5),
             "visual.pos_embedding": rand(1, tokens, WIDTH, scale=0.5),
             "visual.head": rand(WIDTH, 64), "log_scale": torch.tensor(math.log(1 / 0.07)),
             "textual.token_embedding.weight": rand(10, 32)}
    for norm in ("pre_norm", "post_norm"):
        state[f"visual.{norm}.weight"] = 1 + rand(WIDTH, scale=0.2)
        state[f"visual.{norm}.bias"] = rand(WIDTH)
    for i in range(LAYERS):
        b = f"visual.transformer.{i}."
        for name, (rows, cols) in (("attn.to_qkv", (3 * WIDTH, WIDTH)),
                                   ("attn.proj", (WIDTH, WIDTH)), ("mlp.0", (FFN, WIDTH)),
                                   ("mlp.2", (WIDTH, FFN))):
            state[f"{b}{name}.weight"] = rand(rows, cols, scale=cols**-0.5)
            state[f"{b}{name}.bias"] = rand(rows)
        for norm in ("norm1", "norm2"):
            state[f"{b}{norm}.weight"] = 1 + rand(WIDTH, scale=0.2)
            state[f"{b}{norm}.bias"] = rand(WIDTH)
    return state


def release_forward(s: dict[str, torch.Tensor], frame: torch.Tensor) -> torch.Tensor:
    """The release's image path written out: resize to the tower's size (bicubic), [-1, 1] ->
    [0, 1], CLIP mean/std, patches + class token + positions, pre-norm, then every block but
    the last (pre-norm blocks, fused qkv of 80-wide heads, exact GELU)."""
    x = F.interpolate(frame, size=(IMAGE, IMAGE), mode="bicubic", align_corners=False)
    x = (x.mul(0.5).add(0.5) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = F.conv2d(x, s["visual.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.cls_embedding"].expand(len(x), -1, -1), x], 1)
    x = x + s["visual.pos_embedding"]

    def norm(h, name):
        return F.layer_norm(h, (WIDTH,), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-5)

    def linear(h, name):
        return F.linear(h, s[f"{name}.weight"], s[f"{name}.bias"])

    x = norm(x, "visual.pre_norm")
    heads = WIDTH // RELEASE_HEAD_DIM
    for i in range(LAYERS - 1):
        b = f"visual.transformer.{i}."
        n, length = len(x), x.shape[1]
        q, k, v = linear(norm(x, b + "norm1"), b + "attn.to_qkv").view(
            n, length, 3, heads, RELEASE_HEAD_DIM).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2))
        x = x + linear(a.transpose(1, 2).reshape(n, length, WIDTH), b + "attn.proj")
        x = x + linear(F.gelu(linear(norm(x, b + "norm2"), b + "mlp.0")), b + "mlp.2")
    return x


def test_release_clip_file_loads_and_matches_the_release_forward(tmp_path):
    state = release_state()
    torch.save(state, tmp_path / CLIP_FILE)
    encoder = load_image_encoder(tmp_path, "official", torch.float32)
    assert encoder.model.config.num_attention_heads == 2
    assert encoder.model.config.num_hidden_layers == LAYERS
    frame = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = encoder.encode(frame)
    want = release_forward(state, frame)
    assert got.shape == (2, (IMAGE // PATCH) ** 2 + 1, WIDTH)
    assert (got - want).abs().max() < 1e-4


def test_release_clip_file_with_unknown_or_missing_keys_is_refused(tmp_path):
    state = release_state()
    torch.save({**state, "visual.adapter.weight": torch.zeros(3)}, tmp_path / CLIP_FILE)
    with pytest.raises(CineforgeError, match="visual.adapter.weight"):
        load_image_encoder(tmp_path, "official", torch.float32)
    del state["visual.transformer.1.mlp.2.bias"]
    torch.save(state, tmp_path / CLIP_FILE)
    with pytest.raises(CineforgeError, match="missing keys"):
        load_image_encoder(tmp_path, "official", torch.float32)
    (tmp_path / CLIP_FILE).unlink()
    with pytest.raises(CineforgeError, match=f"nor the release's {CLIP_FILE}"):
        load_image_encoder(tmp_path, "official", torch.float32)


def test_full_size_release_clip_converts_onto_vit_h14_strictly():
    """The release's ViT-H/14 shapes (meta tensors): the config read off them is
    ``clip_vit_h14_config``, and the converted keys fit that model exactly."""
    from transformers import CLIPVisionModel

    from cineforge.families.wan.clip_keys import convert_official_clip, official_clip_config
    from cineforge.families.wan.image_encoder import clip_vit_h14_config
    from cineforge.weights.keymap import check_state_dict

    width, ffn = 1280, 5120
    shapes = {"visual.patch_embedding.weight": (width, 3, 14, 14),
              "visual.cls_embedding": (1, 1, width), "visual.pos_embedding": (1, 257, width),
              "visual.head": (width, 1024), "log_scale": (),
              **{f"visual.{n}.{p}": (width,) for n in ("pre_norm", "post_norm")
                 for p in ("weight", "bias")}}
    for i in range(32):
        b = f"visual.transformer.{i}."
        for name, (rows, cols) in (("attn.to_qkv", (3 * width, width)),
                                   ("attn.proj", (width, width)), ("mlp.0", (ffn, width)),
                                   ("mlp.2", (width, ffn))):
            shapes |= {f"{b}{name}.weight": (rows, cols), f"{b}{name}.bias": (rows,)}
        shapes |= {f"{b}{n}.{p}": (width,) for n in ("norm1", "norm2")
                   for p in ("weight", "bias")}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config, want = official_clip_config(state), clip_vit_h14_config()
    for field in ("hidden_size", "intermediate_size", "num_attention_heads",
                  "num_hidden_layers", "patch_size", "image_size"):
        assert getattr(config, field) == getattr(want, field), field
    with torch.device("meta"):
        model = CLIPVisionModel(want)
    converted = convert_official_clip(state)
    check_state_dict(model, converted, what="ViT-H/14")
    assert sum(v.numel() for v in converted.values()) == sum(
        p.numel() for p in model.parameters()) == 630_766_080  # 32 x 19,677,440 + embeddings, norms
