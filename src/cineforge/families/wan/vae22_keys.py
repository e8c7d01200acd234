"""Key maps for the Wan 2.2 VAE: the release's ``Wan2.2_VAE.pth`` and diffusers'
AutoencoderKLWan (``is_residual=True``).

Our module tree (``cineforge.families.wan.vae22``) groups each level as a stage:
``encoder.down.I.res.J`` (residual blocks) and ``encoder.down.I.resample`` (its resampler),
likewise ``decoder.up.I.res.J`` / ``decoder.up.I.resample``. The release nests the same
stages as ``encoder.downsamples.I.downsamples.J`` / ``decoder.upsamples.I.upsamples.J``,
with the resampler as the last entry J; diffusers names them ``down_blocks.I.resnets.J`` /
``down_blocks.I.downsampler`` and ``up_blocks.I.resnets.J`` / ``up_blocks.I.upsampler``.
Inside blocks the names are those of the Wan 2.1 maps (``cineforge.families.wan.vae_keys``).
The shortcuts have no parameters.
"""

from __future__ import annotations

from cineforge.families.wan.vae_keys import (
    _ATTENTION,
    _DIFFUSERS_RESIDUAL,
    _OFFICIAL_RESAMPLE,
    _OFFICIAL_RESIDUAL,
    _WB,
    _nest,
)
from cineforge.weights.keymap import KeyMap

_ENC = r"encoder\.downsamples\.(?P<i>\d+)\.downsamples"
_DEC = r"decoder\.upsamples\.(?P<i>\d+)\.upsamples"

WAN22_VAE_FROM_OFFICIAL = KeyMap(
    "Wan2.2_VAE.pth",
    rules=(
        (rf"(?P<s>encoder|decoder)\.conv1\.{_WB}", r"\g<s>.conv_in.\g<p>"),
        *_nest(rf"{_ENC}\.(?P<j>\d+)", r"encoder.down.\g<i>.res.\g<j>", _OFFICIAL_RESIDUAL),
        *_nest(rf"{_ENC}\.\d+", r"encoder.down.\g<i>.resample", _OFFICIAL_RESAMPLE),
        *_nest(rf"{_DEC}\.(?P<j>\d+)", r"decoder.up.\g<i>.res.\g<j>", _OFFICIAL_RESIDUAL),
        *_nest(rf"{_DEC}\.\d+", r"decoder.up.\g<i>.resample", _OFFICIAL_RESAMPLE),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.0", r"\g<s>.mid.res1", _OFFICIAL_RESIDUAL),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.1", r"\g<s>.mid.attn", _ATTENTION),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.2", r"\g<s>.mid.res2", _OFFICIAL_RESIDUAL),
        (r"(?P<s>encoder|decoder)\.head\.0\.gamma", r"\g<s>.norm_out.gamma"),
        (rf"(?P<s>encoder|decoder)\.head\.2\.{_WB}", r"\g<s>.conv_out.\g<p>"),
        (rf"conv1\.{_WB}", r"quant_conv.\g<p>"),
        (rf"conv2\.{_WB}", r"post_quant_conv.\g<p>"),
    ),
)

WAN22_VAE_FROM_DIFFUSERS = KeyMap(
    "AutoencoderKLWan (Wan 2.2)",
    rules=(
        (rf"(?P<s>encoder|decoder)\.(?P<n>conv_in|conv_out)\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
        (r"(?P<s>encoder|decoder)\.norm_out\.gamma", r"\g<s>.norm_out.gamma"),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
               r"encoder.down.\g<i>.res.\g<j>", _DIFFUSERS_RESIDUAL),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)\.downsampler",
               r"encoder.down.\g<i>.resample", _OFFICIAL_RESAMPLE),
        *_nest(r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
               r"decoder.up.\g<i>.res.\g<j>", _DIFFUSERS_RESIDUAL),
        *_nest(r"decoder\.up_blocks\.(?P<i>\d+)\.upsampler",
               r"decoder.up.\g<i>.resample", _OFFICIAL_RESAMPLE),
        *_nest(r"(?P<s>encoder|decoder)\.mid_block\.resnets\.0", r"\g<s>.mid.res1",
               _DIFFUSERS_RESIDUAL),
        *_nest(r"(?P<s>encoder|decoder)\.mid_block\.attentions\.0", r"\g<s>.mid.attn", _ATTENTION),
        *_nest(r"(?P<s>encoder|decoder)\.mid_block\.resnets\.1", r"\g<s>.mid.res2",
               _DIFFUSERS_RESIDUAL),
        (rf"(?P<n>quant_conv|post_quant_conv)\.{_WB}", r"\g<n>.\g<p>"),
    ),
)
