"""The release's CLIP file -> transformers' ``CLIPVisionModel`` (Wan 2.1 image-to-video).

Wan 2.1 I2V ships ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``: the whole
XLM-RoBERTa CLIP of ``wan/modules/clip.py`` (``visual.*``, ``textual.*``, ``log_scale``).
Only the vision tower is used, and only up to its penultimate block. Its modules map one to one
onto transformers' CLIP vision transformer, except the fused attention input ``to_qkv``
(rows q, k, v), which is split; the class and position embeddings lose their leading unit
axes. Dropped on purpose: the text tower, the logit scale and ``visual.head``, the projection
into the joint embedding, which image-to-video never reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from cineforge.errors import CineforgeError
from cineforge.weights.keymap import KeyMap

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
RELEASE_HEAD_DIM = 80  # ViT-H/14: 16 heads of 80 at width 1280

_WB = r"(weight|bias)"
_BLOCK = r"visual\.transformer\.(\d+)\."

WAN_CLIP_FROM_OFFICIAL = KeyMap(
    "Wan 2.1 CLIP image encoder (official release) -> transformers CLIPVisionModel",
    rules=(
        (r"visual\.patch_embedding\.weight", "embeddings.patch_embedding.weight"),
        (r"visual\.cls_embedding", "embeddings.class_embedding"),
        (r"visual\.pos_embedding", "embeddings.position_embedding.weight"),
        (rf"visual\.pre_norm\.{_WB}", r"pre_layrnorm.\1"),
        (rf"{_BLOCK}norm([12])\.{_WB}", r"encoder.layers.\1.layer_norm\2.\3"),
        (rf"{_BLOCK}attn\.to_([qkv])\.{_WB}", r"encoder.layers.\1.self_attn.\2_proj.\3"),
        (rf"{_BLOCK}attn\.proj\.{_WB}", r"encoder.layers.\1.self_attn.out_proj.\2"),
        (rf"{_BLOCK}mlp\.0\.{_WB}", r"encoder.layers.\1.mlp.fc1.\2"),
        (rf"{_BLOCK}mlp\.2\.{_WB}", r"encoder.layers.\1.mlp.fc2.\2"),
        (rf"visual\.post_norm\.{_WB}", r"post_layernorm.\1"),
        (r"visual\.head", None),
        (r"textual\..*", None),
        (r"log_scale", None),
    ),
    transforms=(
        (r"embeddings\.class_embedding", lambda _, v: v.reshape(v.shape[-1])),
        (r"embeddings\.position_embedding\.weight", lambda _, v: v.reshape(v.shape[-2:])),
    ),
)


def split_qkv(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every fused ``attn.to_qkv`` split into ``to_q``, ``to_k``, ``to_v``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(rf"({_BLOCK}attn\.)to_qkv\.{_WB}", key)
        if m is None:
            out[key] = value
            continue
        if value.shape[0] % 3:
            raise CineforgeError(f"{key} has {value.shape[0]} rows, not q, k and v alike; is "
                                 f"this the release's {CLIP_FILE}?")
        for name, part in zip("qkv", value.chunk(3), strict=True):
            out[f"{m.group(1)}to_{name}.{m.group(3)}"] = part
    return out


def convert_official_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's CLIP state dict -> ``CLIPVisionModel`` keys (see the module)."""
    return WAN_CLIP_FROM_OFFICIAL.convert(split_qkv(state))


def official_clip_config(state: Mapping[str, torch.Tensor]):
    """The ``CLIPVisionConfig`` of a release-layout state dict, read off its shapes (the
    release's ViT-H/14 at full size: ``image_encoder.clip_vit_h14_config``)."""
    from cineforge.families.wan.image_encoder import clip_vit_h14_config

    try:
        pos, patch = state["visual.pos_embedding"], state["visual.patch_embedding.weight"]
        fc1 = state["visual.transformer.0.mlp.0.weight"]
    except KeyError as missing:
        raise CineforgeError(f"the CLIP file lacks {missing}; is it the release's "
                             f"{CLIP_FILE}?") from None
    width, tokens = pos.shape[-1], pos.shape[-2]
    grid = round((tokens - 1) ** 0.5)
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"visual\.transformer\.(\d+)\.", k)))
    if grid * grid + 1 != tokens or width % RELEASE_HEAD_DIM:
        raise CineforgeError(f"the CLIP file's vision tower ({tokens} positions, width {width}) "
                             f"is not the release's layout (a class token + a square grid, "
                             f"heads of {RELEASE_HEAD_DIM}); is it {CLIP_FILE}?")
    config = clip_vit_h14_config()
    for name, value in (("hidden_size", width), ("intermediate_size", fc1.shape[0]),
                        ("num_attention_heads", width // RELEASE_HEAD_DIM),
                        ("num_hidden_layers", layers), ("patch_size", patch.shape[-1]),
                        ("image_size", grid * patch.shape[-1])):
        setattr(config, name, value)
    return config
