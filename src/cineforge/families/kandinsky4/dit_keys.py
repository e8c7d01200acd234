"""Key map into ``cineforge.families.kandinsky4.dit.Kandinsky4DiT`` (Kandinsky 4.0 DiT).

The official checkpoint (``kandinsky4_distil_512.pt`` of ai-forever/kandinsky-4-t2v-flash: a
plain fp32 ``state_dict`` of ``DiffusionTransformer3D``) uses the release's module names. Ours
differ in two places: a pair ``transformer_blocks.{i}.0|1`` is ``blocks.{i}.local_block|
global_block``, and the output layer ``out_layer.{norm,out_layer,modulation_out}`` is
``head.{norm,out_layer,modulation.out_layer}``. Everything else is named as released.

The release registers its RoPE tables ``rope_embeddings.args_{0,1,2}`` (positions x
frequencies, 128 x 8 | 12 | 12) as persistent buffers, so they are in the file; they hold no
learned values and are dropped here (the model derives the same angles in forward), after
``check_rope_tables`` has compared them with those angles, so a checkpoint trained with other
positions is refused rather than silently re-positioned. The release itself loads with
``strict=False``; this map rejects any other key, and ``load_strict`` any missing one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from cineforge.errors import CineforgeError
from cineforge.weights.keymap import KeyMap

_WB = r"(weight|bias)"

# Inside one block: the release's names, which are ours.
_BLOCK = (
    r"(?:visual_modulation|text_modulation)\.out_layer",
    r"self_attention_norm",
    r"self_attention\.(?:to_query_key_value|query_norm|key_norm|output_layer)",
    r"feed_forward_norm",
    r"feed_forward\.(?:in_layer|out_layer)",
)

K4_DIT_FROM_OFFICIAL = KeyMap(
    "Kandinsky 4.0 DiT (official release, DiffusionTransformer3D) -> cineforge",
    rules=(
        (rf"((?:time_embeddings\.(?:in_layer|out_layer)|text_embeddings\.in_layer"
         rf"|visual_embeddings\.in_layer)\.{_WB})", r"\1"),
        (r"rope_embeddings\.args_[012]", None),
        *((rf"transformer_blocks\.(\d+)\.0\.({name}\.{_WB})", r"blocks.\1.local_block.\2")
          for name in _BLOCK),
        *((rf"transformer_blocks\.(\d+)\.1\.({name}\.{_WB})", r"blocks.\1.global_block.\2")
          for name in _BLOCK),
        (rf"out_layer\.(norm|out_layer)\.{_WB}", r"head.\1.\2"),
        (rf"out_layer\.modulation_out\.{_WB}", r"head.modulation.out_layer.\1"),
    ),
)


def check_rope_tables(state: Mapping[str, torch.Tensor], config) -> None:
    """The release's ``rope_embeddings.args_{i}`` tables in ``state`` (those present) must equal
    the angles ``config`` derives: ``outer(arange(rope_max_pos), theta ** (-k / (d / 2)))`` for
    the axis widths ``d`` of ``axes_dims``."""
    for i, dim in enumerate(config.axes_dims):
        table = state.get(f"rope_embeddings.args_{i}")
        if table is None:
            continue
        half = dim // 2
        freqs = torch.exp(-math.log(config.rope_theta) * torch.arange(half, dtype=torch.float64)
                          / half)
        want = torch.outer(torch.arange(config.rope_max_pos, dtype=torch.float64), freqs)
        if table.shape != want.shape or not torch.allclose(table.double(), want, rtol=1e-5,
                                                           atol=1e-4):
            raise CineforgeError(
                f"rope_embeddings.args_{i} in the Kandinsky 4.0 checkpoint is not the RoPE "
                f"table this model derives ({tuple(want.shape)}, base {config.rope_theta:g}); "
                "the weights were trained with other positions: use a matching config")
