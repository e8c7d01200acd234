"""Key maps into ``cineforge.families.kandinsky5.dit.Kandinsky5DiT`` (Kandinsky 5.0 DiT).

The release (``kandinsky/models/dit.py``: ``DiffusionTransformer3D``, loaded with a plain
``load_state_dict``) and diffusers' ``Kandinsky5Transformer3DModel`` use the same module
names, and so do we: both maps are explicit identity tables, the official one also taking
ComfyUI's key prefix. Anything else (LoRA, renamed or extra modules) is rejected. Neither
format stores the RoPE or time-frequency tables (non-persistent upstream, derived in forward
here).
"""

from __future__ import annotations

from cineforge.weights.keymap import KeyMap

_WB = r"(?:weight|bias)"
_QKVO = r"(?:to_query|to_key|to_value|out_layer)"

_NAMES = (
    rf"time_embeddings\.(?:in_layer|out_layer)\.{_WB}",
    rf"(?:text_embeddings|pooled_text_embeddings)\.(?:in_layer|norm)\.{_WB}",
    rf"visual_embeddings\.in_layer\.{_WB}",
    rf"text_transformer_blocks\.\d+\.text_modulation\.out_layer\.{_WB}",
    rf"text_transformer_blocks\.\d+\.self_attention\.{_QKVO}\.{_WB}",
    r"text_transformer_blocks\.\d+\.self_attention\.(?:query_norm|key_norm)\.weight",
    r"text_transformer_blocks\.\d+\.feed_forward\.(?:in_layer|out_layer)\.weight",
    rf"visual_transformer_blocks\.\d+\.visual_modulation\.out_layer\.{_WB}",
    rf"visual_transformer_blocks\.\d+\.(?:self_attention|cross_attention)\.{_QKVO}\.{_WB}",
    r"visual_transformer_blocks\.\d+\.(?:self_attention|cross_attention)"
    r"\.(?:query_norm|key_norm)\.weight",
    r"visual_transformer_blocks\.\d+\.feed_forward\.(?:in_layer|out_layer)\.weight",
    rf"out_layer\.(?:modulation\.out_layer|out_layer)\.{_WB}",
)

# Single files repackaged for ComfyUI may prefix every key with ``model.diffusion_model.``
# (accepted as in the Wan map; no Kandinsky file with the prefix was seen).
_PREFIX = r"(?:model\.diffusion_model\.)?"

K5_DIT_FROM_OFFICIAL = KeyMap(
    "Kandinsky 5.0 DiT (official release, DiffusionTransformer3D) -> cineforge",
    rules=tuple((f"{_PREFIX}({name})", r"\1") for name in _NAMES),
)

K5_DIT_FROM_DIFFUSERS = KeyMap(
    "Kandinsky 5.0 DiT (diffusers Kandinsky5Transformer3DModel) -> cineforge",
    rules=tuple((name, r"\g<0>") for name in _NAMES),
)
