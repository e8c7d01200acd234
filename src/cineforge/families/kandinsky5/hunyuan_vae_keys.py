"""Key maps for the HunyuanVideo VAE: diffusers' AutoencoderKLHunyuanVideo and the release.

Our module tree (``hunyuan_vae`` beside this file) differs from diffusers' in a few names:
causal convs are plain ``Conv3d`` subclasses (diffusers wraps a ``.conv`` inside), each
stage is ``encoder.down.I`` / ``decoder.up.I`` with ``res.J`` residual blocks and one
``resample`` (diffusers' ``downsamplers.0.conv`` / ``upsamplers.0.conv``), the middle is
``mid.res1, mid.attn, mid.res2`` (attention ``norm``, ``to_q/k/v``, ``proj``), and the heads
are ``norm_out, conv_out``.

The release (Tencent's ``AutoencoderKLCausal3D``, ``vae/pytorch_model.pt``) uses diffusers'
names: diffusers' conversion script renames no VAE key and loads strictly. Some release
files prefix every key with ``vae.`` (the release's loader strips it), so
``HUNYUAN_VAE_FROM_OFFICIAL`` accepts both. Unwrapping a ``{"state_dict": ...}`` file is
the file reader's job, not the key map's.
"""

from __future__ import annotations

from cineforge.weights.keymap import KeyMap

_WB = r"(?P<p>weight|bias)"
_SIDE = r"(?P<s>encoder|decoder)"

_RESIDUAL = (
    (rf"(?P<n>norm1|norm2)\.{_WB}", r"\g<n>.\g<p>"),
    (rf"(?P<n>conv1|conv2)\.conv\.{_WB}", r"\g<n>.\g<p>"),
    (rf"conv_shortcut\.conv\.{_WB}", r"shortcut.\g<p>"),
)
_ATTENTION = (
    (rf"group_norm\.{_WB}", r"norm.\g<p>"),
    (rf"(?P<n>to_q|to_k|to_v)\.{_WB}", r"\g<n>.\g<p>"),
    (rf"to_out\.0\.{_WB}", r"proj.\g<p>"),
)


def _nest(prefix: str, target: str, inner: tuple[tuple[str, str], ...]) -> tuple:
    return tuple((rf"{prefix}\.{p}", f"{target}.{t}") for p, t in inner)


_DIFFUSERS_RULES: tuple[tuple[str, str], ...] = (
    (rf"{_SIDE}\.(?P<n>conv_in|conv_out)\.conv\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
    (rf"{_SIDE}\.conv_norm_out\.{_WB}", r"\g<s>.norm_out.\g<p>"),
    *_nest(
        r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
        r"encoder.down.\g<i>.res.\g<j>",
        _RESIDUAL,
    ),
    (
        rf"encoder\.down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.conv\.{_WB}",
        r"encoder.down.\g<i>.resample.\g<p>",
    ),
    *_nest(
        r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
        r"decoder.up.\g<i>.res.\g<j>",
        _RESIDUAL,
    ),
    (
        rf"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.conv\.{_WB}",
        r"decoder.up.\g<i>.resample.conv.\g<p>",
    ),
    *_nest(rf"{_SIDE}\.mid_block\.resnets\.0", r"\g<s>.mid.res1", _RESIDUAL),
    *_nest(rf"{_SIDE}\.mid_block\.attentions\.0", r"\g<s>.mid.attn", _ATTENTION),
    *_nest(rf"{_SIDE}\.mid_block\.resnets\.1", r"\g<s>.mid.res2", _RESIDUAL),
    (rf"(?P<n>quant_conv|post_quant_conv)\.{_WB}", r"\g<n>.\g<p>"),
)


def _rules(prefix: str = "") -> tuple[tuple[str, str], ...]:
    """The table; source keys may start with the regex ``prefix``."""
    return tuple((prefix + pattern, template) for pattern, template in _DIFFUSERS_RULES)


HUNYUAN_VAE_FROM_DIFFUSERS = KeyMap("AutoencoderKLHunyuanVideo", rules=_rules())
HUNYUAN_VAE_FROM_OFFICIAL = KeyMap("HunyuanVideo vae/pytorch_model.pt", rules=_rules(r"(?:vae\.)?"))
