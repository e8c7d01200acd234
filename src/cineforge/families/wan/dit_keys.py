"""Key maps into ``cineforge.families.wan.dit.WanDiT`` (Wan 2.1 text-to-video DiT).

Our module names are the official release's (``wan/modules/model.py``), so the official map
is an explicit identity table; the diffusers map renames ``WanTransformer3DModel`` keys.
Both reject anything else (image-to-video ``k_img``/``img_emb`` weights, VACE, LoRA, ...).

Note the swapped norm names: the official cross-attention norm (affine) is ``norm3`` and
the FFN norm ``norm2``; diffusers calls the cross-attention norm ``norm2``. Only affine
norms have weights, so only the cross-attention norm appears in either file.
"""

from __future__ import annotations

from cineforge.weights.keymap import KeyMap

_WB = r"(weight|bias)"

# ComfyUI's repackaged single files prefix every key with ``model.diffusion_model.``.
_PREFIX = r"(?:model\.diffusion_model\.)?"

WAN_DIT_FROM_OFFICIAL = KeyMap(
    "Wan 2.1 T2V DiT (official release) -> cineforge",
    rules=tuple(
        (_PREFIX + pattern, r"\1")
        for pattern in (
            rf"(patch_embedding\.{_WB})",
            rf"(text_embedding\.[02]\.{_WB})",
            rf"(time_embedding\.[02]\.{_WB})",
            rf"(time_projection\.1\.{_WB})",
            rf"(blocks\.\d+\.(?:self_attn|cross_attn)\.[qkvo]\.{_WB})",
            r"(blocks\.\d+\.(?:self_attn|cross_attn)\.norm_[qk]\.weight)",
            rf"(blocks\.\d+\.norm3\.{_WB})",
            rf"(blocks\.\d+\.ffn\.[02]\.{_WB})",
            r"(blocks\.\d+\.modulation)",
            rf"(head\.head\.{_WB})",
            r"(head\.modulation)",
        )
    ),
)

WAN_DIT_FROM_DIFFUSERS = KeyMap(
    "Wan 2.1 T2V DiT (diffusers WanTransformer3DModel) -> cineforge",
    rules=(
        (rf"patch_embedding\.{_WB}", r"patch_embedding.\1"),
        (rf"condition_embedder\.text_embedder\.linear_1\.{_WB}", r"text_embedding.0.\1"),
        (rf"condition_embedder\.text_embedder\.linear_2\.{_WB}", r"text_embedding.2.\1"),
        (rf"condition_embedder\.time_embedder\.linear_1\.{_WB}", r"time_embedding.0.\1"),
        (rf"condition_embedder\.time_embedder\.linear_2\.{_WB}", r"time_embedding.2.\1"),
        (rf"condition_embedder\.time_proj\.{_WB}", r"time_projection.1.\1"),
        (rf"blocks\.(\d+)\.attn1\.to_([qkv])\.{_WB}", r"blocks.\1.self_attn.\2.\3"),
        (rf"blocks\.(\d+)\.attn1\.to_out\.0\.{_WB}", r"blocks.\1.self_attn.o.\2"),
        (r"blocks\.(\d+)\.attn1\.norm_([qk])\.weight", r"blocks.\1.self_attn.norm_\2.weight"),
        (rf"blocks\.(\d+)\.attn2\.to_([qkv])\.{_WB}", r"blocks.\1.cross_attn.\2.\3"),
        (rf"blocks\.(\d+)\.attn2\.to_out\.0\.{_WB}", r"blocks.\1.cross_attn.o.\2"),
        (r"blocks\.(\d+)\.attn2\.norm_([qk])\.weight", r"blocks.\1.cross_attn.norm_\2.weight"),
        (rf"blocks\.(\d+)\.norm2\.{_WB}", r"blocks.\1.norm3.\2"),
        (rf"blocks\.(\d+)\.ffn\.net\.0\.proj\.{_WB}", r"blocks.\1.ffn.0.\2"),
        (rf"blocks\.(\d+)\.ffn\.net\.2\.{_WB}", r"blocks.\1.ffn.2.\2"),
        (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
        (r"scale_shift_table", "head.modulation"),
        (rf"proj_out\.{_WB}", r"head.head.\1"),
    ),
)
