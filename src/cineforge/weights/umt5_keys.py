"""umT5 encoder: the Wan 2.1 release's own T5 encoder keys -> ``transformers.UMT5EncoderModel``.

The official file ``models_t5_umt5-xxl-enc-bf16.pth`` is the state dict of
``wan.modules.t5.T5Encoder`` (``shared_pos=False``: every block owns its relative position
bias). Per block ``N``::

    blocks.N.norm1.weight                    RMS norm before self-attention
    blocks.N.attn.{q,k,v,o}.weight           attention projections (no bias, no 1/sqrt(d))
    blocks.N.pos_embedding.embedding.weight  relative position bias (buckets, heads)
    blocks.N.norm2.weight                    RMS norm before the feed-forward
    blocks.N.ffn.gate.0.weight               gated-GELU: the GELU (tanh) branch
    blocks.N.ffn.fc1.weight                  gated-GELU: the linear branch
    blocks.N.ffn.fc2.weight                  output projection

plus ``token_embedding.weight`` and the final ``norm.weight``. transformers names the GELU
branch ``wi_0`` and the linear branch ``wi_1`` (``act(wi_0(x)) * wi_1(x)``).

transformers ties ``encoder.embed_tokens.weight`` to ``shared.weight``; its state dict lists
both names, so ``UMT5_TIED_KEYS`` says which tensor fills the alias.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cineforge.weights.keymap import KeyMap

_BLOCK = r"encoder.block.\1.layer"

UMT5_FROM_OFFICIAL = KeyMap(
    name="umT5 (Wan 2.1 official T5Encoder) -> transformers UMT5EncoderModel",
    rules=(
        (r"token_embedding\.weight", "shared.weight"),
        (r"blocks\.(\d+)\.norm1\.weight", _BLOCK + r".0.layer_norm.weight"),
        (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", _BLOCK + r".0.SelfAttention.\2.weight"),
        (
            r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
            _BLOCK + r".0.SelfAttention.relative_attention_bias.weight",
        ),
        (r"blocks\.(\d+)\.norm2\.weight", _BLOCK + r".1.layer_norm.weight"),
        (r"blocks\.(\d+)\.ffn\.gate\.0\.weight", _BLOCK + r".1.DenseReluDense.wi_0.weight"),
        (r"blocks\.(\d+)\.ffn\.fc1\.weight", _BLOCK + r".1.DenseReluDense.wi_1.weight"),
        (r"blocks\.(\d+)\.ffn\.fc2\.weight", _BLOCK + r".1.DenseReluDense.wo.weight"),
        (r"norm\.weight", "encoder.final_layer_norm.weight"),
    ),
)

# alias key -> the converted key whose tensor it shares
UMT5_TIED_KEYS: tuple[tuple[str, str], ...] = (("encoder.embed_tokens.weight", "shared.weight"),)


def convert_official_umt5(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan T5 encoder state dict -> a full ``UMT5EncoderModel`` state dict."""
    out = UMT5_FROM_OFFICIAL.convert(state_dict)
    for alias, source in UMT5_TIED_KEYS:
        if source in out:
            out[alias] = out[source]
    return out
