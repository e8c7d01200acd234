"""Key map into ``cineforge.families.cogvideox.dit.CogVideoXDiT`` from diffusers'
``CogVideoXTransformer3DModel`` (the layout of the THUDM/CogVideoX* release folders).

CogVideoX 1.0's patch embedding is a Conv2d (kernel = stride = patch); ours is the equivalent
Linear over (c, ph, pw) features, so its kernel is flattened on the way in (1.5's is already a
Linear over (c, pt, ph, pw)). Anything else, e.g. 1.5-I2V's ``ofs_embedding``, matches no rule
and is rejected.
"""

from __future__ import annotations

from cineforge.weights.keymap import KeyMap

_WB = r"(weight|bias)"
_BLOCK = r"transformer_blocks\.(\d+)\."

COGVIDEOX_DIT_FROM_DIFFUSERS = KeyMap(
    "CogVideoX DiT (diffusers CogVideoXTransformer3DModel) -> cineforge",
    rules=(
        (rf"patch_embed\.proj\.{_WB}", r"patch_embedding.\1"),
        (rf"patch_embed\.text_proj\.{_WB}", r"text_embedding.\1"),
        (r"patch_embed\.pos_embedding", "pos_embedding"),
        (rf"time_embedding\.linear_1\.{_WB}", r"time_embedding.0.\1"),
        (rf"time_embedding\.linear_2\.{_WB}", r"time_embedding.2.\1"),
        (rf"{_BLOCK}norm1\.linear\.{_WB}", r"blocks.\1.attn_adaln.\2"),
        (rf"{_BLOCK}norm1\.norm\.{_WB}", r"blocks.\1.norm1.\2"),
        (rf"{_BLOCK}attn1\.to_([qkv])\.{_WB}", r"blocks.\1.attn.\2.\3"),
        (rf"{_BLOCK}attn1\.norm_([qk])\.{_WB}", r"blocks.\1.attn.norm_\2.\3"),
        (rf"{_BLOCK}attn1\.to_out\.0\.{_WB}", r"blocks.\1.attn.o.\2"),
        (rf"{_BLOCK}norm2\.linear\.{_WB}", r"blocks.\1.ffn_adaln.\2"),
        (rf"{_BLOCK}norm2\.norm\.{_WB}", r"blocks.\1.norm2.\2"),
        (rf"{_BLOCK}ff\.net\.0\.proj\.{_WB}", r"blocks.\1.ffn.0.\2"),
        (rf"{_BLOCK}ff\.net\.2\.{_WB}", r"blocks.\1.ffn.2.\2"),
        (rf"norm_final\.{_WB}", r"head.norm_final.\1"),
        (rf"norm_out\.linear\.{_WB}", r"head.adaln.\1"),
        (rf"norm_out\.norm\.{_WB}", r"head.norm.\1"),
        (rf"proj_out\.{_WB}", r"head.proj.\1"),
    ),
    transforms=((r"patch_embedding\.weight", lambda key, w: w.flatten(1)),),
)
