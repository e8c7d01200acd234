"""Key maps into an image-to-video ``WanDiT`` (``image_dim`` set: Wan 2.1 I2V 14B).

The text-to-video tables plus the image path: ``img_emb`` (the release's ``MLPProj``, diffusers'
``condition_embedder.image_embedder``) and the image keys and values of every cross-attention
(official ``k_img`` / ``v_img`` / ``norm_k_img``, diffusers ``add_k_proj`` / ``add_v_proj`` /
``norm_added_k``). Wan 2.2's I2V A14B has no image path: its experts load with the
text-to-video tables (its 36 input channels only change a shape).
"""

from __future__ import annotations

from cineforge.families.wan.dit_keys import _PREFIX, WAN_DIT_FROM_DIFFUSERS, WAN_DIT_FROM_OFFICIAL
from cineforge.weights.keymap import KeyMap

_WB = r"(weight|bias)"

WAN_I2V_DIT_FROM_OFFICIAL = KeyMap(
    "Wan 2.1 I2V DiT (official release) -> cineforge",
    rules=WAN_DIT_FROM_OFFICIAL.rules + (
        (_PREFIX + rf"(img_emb\.proj\.[0134]\.{_WB})", r"\1"),
        (_PREFIX + rf"(blocks\.\d+\.cross_attn\.[kv]_img\.{_WB})", r"\1"),
        (_PREFIX + r"(blocks\.\d+\.cross_attn\.norm_k_img\.weight)", r"\1"),
    ),
)

WAN_I2V_DIT_FROM_DIFFUSERS = KeyMap(
    "Wan 2.1 I2V DiT (diffusers WanTransformer3DModel) -> cineforge",
    rules=WAN_DIT_FROM_DIFFUSERS.rules + (
        (rf"condition_embedder\.image_embedder\.norm1\.{_WB}", r"img_emb.proj.0.\1"),
        (rf"condition_embedder\.image_embedder\.ff\.net\.0\.proj\.{_WB}", r"img_emb.proj.1.\1"),
        (rf"condition_embedder\.image_embedder\.ff\.net\.2\.{_WB}", r"img_emb.proj.3.\1"),
        (rf"condition_embedder\.image_embedder\.norm2\.{_WB}", r"img_emb.proj.4.\1"),
        (rf"blocks\.(\d+)\.attn2\.add_([kv])_proj\.{_WB}", r"blocks.\1.cross_attn.\2_img.\3"),
        (r"blocks\.(\d+)\.attn2\.norm_added_k\.weight", r"blocks.\1.cross_attn.norm_k_img.weight"),
    ),
)
