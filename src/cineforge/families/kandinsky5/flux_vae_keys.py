"""Key maps for the FLUX.1 VAE: the release's ``ae.safetensors`` and diffusers' AutoencoderKL.

Our module tree (``cineforge.families.kandinsky5.flux_vae``): each stage is ``encoder.down.I`` /
``decoder.up.I`` with residual blocks ``res.J`` (``norm1, conv1, norm2, conv2, shortcut``)
and one ``resample.conv``; the middle is ``mid.res1, mid.attn, mid.res2`` (attention
``norm, to_q, to_k, to_v, proj``, all linear); the heads are ``norm_out, conv_out``.
Decoder stages are numbered in the order they run.

The release (black-forest-labs/flux ``src/flux/modules/autoencoder.py``, file ``ae.safetensors``
of FLUX.1-dev/schnell) names blocks ``down.I.block.J`` / ``up.I.block.J`` with
``nin_shortcut``, resamplers ``downsample.conv`` / ``upsample.conv``, the middle
``mid.block_1, mid.attn_1, mid.block_2`` with 1x1-conv attention ``norm, q, k, v, proj_out``
(weights ``C, C, 1, 1``, squeezed here). Its decoder numbers ``up`` by resolution level,
the reverse of the order they run: release ``decoder.up.I`` is our ``decoder.up.{n-1-I}``,
so that map is built for a number of levels (4 in every FLUX.1 VAE and in the tiny one).

diffusers (``AutoencoderKL`` as in ``FLUX.1-dev/vae``, no quant convs): ``down_blocks.I.
resnets.J`` / ``up_blocks.I.resnets.J`` (run order) with ``conv_shortcut``,
``downsamplers.0.conv`` / ``upsamplers.0.conv``, ``mid_block.resnets.{0,1}`` and
``mid_block.attentions.0`` (``group_norm, to_q, to_k, to_v, to_out.0``), heads
``conv_norm_out, conv_out``.
"""

from __future__ import annotations

import torch

from cineforge.weights.keymap import KeyMap

_WB = r"(?P<p>weight|bias)"
_SIDE = r"(?P<s>encoder|decoder)"


def _nest(prefix: str, target: str, inner: tuple[tuple[str, str], ...]) -> tuple:
    return tuple((rf"{prefix}\.{p}", f"{target}.{t}") for p, t in inner)


def _residual(shortcut: str) -> tuple[tuple[str, str], ...]:
    return (
        (rf"(?P<n>norm1|conv1|norm2|conv2)\.{_WB}", r"\g<n>.\g<p>"),
        (rf"{shortcut}\.{_WB}", r"shortcut.\g<p>"),
    )


def _to_linear(key: str, value: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight ``C_out, C_in, 1, 1`` as a linear weight (no-op if already 2D)."""
    return value.flatten(1)


_DIFFUSERS_ATTENTION = (
    (rf"group_norm\.{_WB}", r"norm.\g<p>"),
    (rf"(?P<n>to_q|to_k|to_v)\.{_WB}", r"\g<n>.\g<p>"),
    (rf"to_out\.0\.{_WB}", r"proj.\g<p>"),
)

FLUX_VAE_FROM_DIFFUSERS = KeyMap(
    "AutoencoderKL (FLUX.1 vae/)",
    rules=(
        (rf"{_SIDE}\.(?P<n>conv_in|conv_out)\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
        (rf"{_SIDE}\.conv_norm_out\.{_WB}", r"\g<s>.norm_out.\g<p>"),
        *_nest(
            r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
            r"encoder.down.\g<i>.res.\g<j>",
            _residual("conv_shortcut"),
        ),
        (
            rf"encoder\.down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.{_WB}",
            r"encoder.down.\g<i>.resample.conv.\g<p>",
        ),
        *_nest(
            r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
            r"decoder.up.\g<i>.res.\g<j>",
            _residual("conv_shortcut"),
        ),
        (
            rf"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.{_WB}",
            r"decoder.up.\g<i>.resample.conv.\g<p>",
        ),
        *_nest(rf"{_SIDE}\.mid_block\.resnets\.0", r"\g<s>.mid.res1", _residual("conv_shortcut")),
        *_nest(rf"{_SIDE}\.mid_block\.attentions\.0", r"\g<s>.mid.attn", _DIFFUSERS_ATTENTION),
        *_nest(rf"{_SIDE}\.mid_block\.resnets\.1", r"\g<s>.mid.res2", _residual("conv_shortcut")),
    ),
)


def flux_vae_from_official(levels: int = 4) -> KeyMap:
    """The map for a release-layout file of a VAE with ``levels`` resolution levels
    (``len(dim_mult)``); its decoder levels are numbered in reverse."""
    official_attention = (
        (rf"norm\.{_WB}", r"norm.\g<p>"),
        (rf"(?P<n>q|k|v)\.{_WB}", r"to_\g<n>.\g<p>"),
        (rf"proj_out\.{_WB}", r"proj.\g<p>"),
    )
    decoder_levels = []
    for level in range(levels):
        ours = levels - 1 - level
        decoder_levels += [
            *_nest(
                rf"decoder\.up\.{level}\.block\.(?P<j>\d+)",
                rf"decoder.up.{ours}.res.\g<j>",
                _residual("nin_shortcut"),
            ),
            (
                rf"decoder\.up\.{level}\.upsample\.conv\.{_WB}",
                rf"decoder.up.{ours}.resample.conv.\g<p>",
            ),
        ]
    return KeyMap(
        f"FLUX.1 ae.safetensors ({levels} levels)",
        rules=(
            (rf"{_SIDE}\.(?P<n>conv_in|conv_out|norm_out)\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
            *_nest(
                r"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)",
                r"encoder.down.\g<i>.res.\g<j>",
                _residual("nin_shortcut"),
            ),
            (
                rf"encoder\.down\.(?P<i>\d+)\.downsample\.conv\.{_WB}",
                r"encoder.down.\g<i>.resample.conv.\g<p>",
            ),
            *decoder_levels,
            *_nest(rf"{_SIDE}\.mid\.block_1", r"\g<s>.mid.res1", _residual("nin_shortcut")),
            *_nest(rf"{_SIDE}\.mid\.attn_1", r"\g<s>.mid.attn", official_attention),
            *_nest(rf"{_SIDE}\.mid\.block_2", r"\g<s>.mid.res2", _residual("nin_shortcut")),
        ),
        transforms=((r".*\.attn\.(to_q|to_k|to_v|proj)\.weight", _to_linear),),
    )


FLUX_VAE_FROM_OFFICIAL = flux_vae_from_official(4)
