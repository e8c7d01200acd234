"""Key maps for the Wan 2.1 VAE: the release's ``Wan2.1_VAE.pth`` and diffusers' AutoencoderKLWan.

Our module tree (``cineforge.families.wan.vae``) keeps the release's flat block lists:
``encoder.down.N`` is the release's ``encoder.downsamples.N`` (residual blocks and
downsamples in one list) and ``decoder.up.N`` is ``decoder.upsamples.N``. Inside a block the
names are ours: residual blocks have ``norm1, conv1, norm2, conv2, shortcut``; resamplers
``conv`` (the 2D conv, the release's ``resample.1``) and ``time_conv``; the middle is
``mid.res1, mid.attn, mid.res2``; the heads are ``norm_out, conv_out``; the release's
top-level ``conv1``/``conv2`` are ``quant_conv``/``post_quant_conv``.

diffusers groups the decoder's flat list by stage (``decoder.up_blocks.I.resnets.J`` and
``decoder.up_blocks.I.upsamplers.0``), so the flat index depends on the number of residual
blocks per stage. ``WAN_VAE_FROM_DIFFUSERS`` reads that number from the checkpoint itself
(2 in every release; tiny test models use 1); ``wan_vae_from_diffusers(n)`` gives the table
for a known depth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cineforge.weights.keymap import KeyMap

_WB = r"(?P<p>weight|bias)"
Rules = tuple[tuple[str, str], ...]


def _nest(prefix: str, target: str, inner: Rules) -> Rules:
    """Rules for a block at ``prefix`` (regex) renamed to ``target`` (template)."""
    return tuple((rf"{prefix}\.{p}", f"{target}.{t}") for p, t in inner)


# Inside one block: the release's names -> ours.
_OFFICIAL_RESIDUAL: Rules = (
    (r"residual\.0\.gamma", "norm1.gamma"),
    (rf"residual\.2\.{_WB}", r"conv1.\g<p>"),
    (r"residual\.3\.gamma", "norm2.gamma"),
    (rf"residual\.6\.{_WB}", r"conv2.\g<p>"),
    (rf"shortcut\.{_WB}", r"shortcut.\g<p>"),
)
_OFFICIAL_RESAMPLE: Rules = (
    (rf"resample\.1\.{_WB}", r"conv.\g<p>"),
    (rf"time_conv\.{_WB}", r"time_conv.\g<p>"),
)
_ATTENTION: Rules = (
    (r"norm\.gamma", "norm.gamma"),
    (rf"to_qkv\.{_WB}", r"to_qkv.\g<p>"),
    (rf"proj\.{_WB}", r"proj.\g<p>"),
)

WAN_VAE_FROM_OFFICIAL = KeyMap(
    "Wan2.1_VAE.pth",
    rules=(
        (rf"(?P<s>encoder|decoder)\.conv1\.{_WB}", r"\g<s>.conv_in.\g<p>"),
        *_nest(r"encoder\.downsamples\.(?P<i>\d+)", r"encoder.down.\g<i>", _OFFICIAL_RESIDUAL),
        *_nest(r"encoder\.downsamples\.(?P<i>\d+)", r"encoder.down.\g<i>", _OFFICIAL_RESAMPLE),
        *_nest(r"decoder\.upsamples\.(?P<i>\d+)", r"decoder.up.\g<i>", _OFFICIAL_RESIDUAL),
        *_nest(r"decoder\.upsamples\.(?P<i>\d+)", r"decoder.up.\g<i>", _OFFICIAL_RESAMPLE),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.0", r"\g<s>.mid.res1", _OFFICIAL_RESIDUAL),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.1", r"\g<s>.mid.attn", _ATTENTION),
        *_nest(r"(?P<s>encoder|decoder)\.middle\.2", r"\g<s>.mid.res2", _OFFICIAL_RESIDUAL),
        (r"(?P<s>encoder|decoder)\.head\.0\.gamma", r"\g<s>.norm_out.gamma"),
        (rf"(?P<s>encoder|decoder)\.head\.2\.{_WB}", r"\g<s>.conv_out.\g<p>"),
        (rf"conv1\.{_WB}", r"quant_conv.\g<p>"),
        (rf"conv2\.{_WB}", r"post_quant_conv.\g<p>"),
    ),
)

_DIFFUSERS_RESIDUAL: Rules = (
    (r"(?P<n>norm1|norm2)\.gamma", r"\g<n>.gamma"),
    (rf"(?P<n>conv1|conv2)\.{_WB}", r"\g<n>.\g<p>"),
    (rf"conv_shortcut\.{_WB}", r"shortcut.\g<p>"),
)
_DIFFUSERS_RESAMPLE: Rules = _OFFICIAL_RESAMPLE  # WanResample keeps the release's names


def _diffusers_rules(num_res_blocks: int, num_stages: int) -> Rules:
    per_stage = num_res_blocks + 2  # residual blocks, then one upsample
    decoder_up: list[tuple[str, str]] = []
    for stage in range(num_stages):
        for j in range(num_res_blocks + 1):
            decoder_up += _nest(
                rf"decoder\.up_blocks\.{stage}\.resnets\.{j}",
                f"decoder.up.{stage * per_stage + j}",
                _DIFFUSERS_RESIDUAL,
            )
        decoder_up += _nest(
            rf"decoder\.up_blocks\.{stage}\.upsamplers\.0",
            f"decoder.up.{stage * per_stage + num_res_blocks + 1}",
            _DIFFUSERS_RESAMPLE,
        )
    return (
        (rf"(?P<s>encoder|decoder)\.(?P<n>conv_in|conv_out)\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
        (r"(?P<s>encoder|decoder)\.norm_out\.gamma", r"\g<s>.norm_out.gamma"),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)", r"encoder.down.\g<i>", _DIFFUSERS_RESIDUAL),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)", r"encoder.down.\g<i>", _DIFFUSERS_RESAMPLE),
        *_nest(
            r"(?P<s>encoder|decoder)\.mid_block\.resnets\.0", r"\g<s>.mid.res1", _DIFFUSERS_RESIDUAL
        ),
        *_nest(r"(?P<s>encoder|decoder)\.mid_block\.attentions\.0", r"\g<s>.mid.attn", _ATTENTION),
        *_nest(
            r"(?P<s>encoder|decoder)\.mid_block\.resnets\.1", r"\g<s>.mid.res2", _DIFFUSERS_RESIDUAL
        ),
        *decoder_up,
        (rf"(?P<n>quant_conv|post_quant_conv)\.{_WB}", r"\g<n>.\g<p>"),
    )


def wan_vae_from_diffusers(num_res_blocks: int = 2, num_stages: int = 4) -> KeyMap:
    """The AutoencoderKLWan table for a VAE with ``num_res_blocks`` per stage."""
    return KeyMap(
        f"AutoencoderKLWan (num_res_blocks={num_res_blocks})",
        rules=_diffusers_rules(num_res_blocks, num_stages),
    )


_UP_RESNET = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.")


@dataclass(frozen=True)
class _DiffusersKeyMap(KeyMap):
    """``rules`` hold the release's table; ``convert`` uses the depth found in the file."""

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        found = [tuple(map(int, m.groups())) for k in state_dict if (m := _UP_RESNET.match(k))]
        if not found:  # not an AutoencoderKLWan file: the release table reports its keys
            return super().convert(state_dict)
        stages = 1 + max(i for i, _ in found)
        num_res_blocks = max(j for i, j in found if i == 0)  # stage 0 has num_res_blocks + 1
        return wan_vae_from_diffusers(num_res_blocks, stages).convert(state_dict)


WAN_VAE_FROM_DIFFUSERS = _DiffusersKeyMap(
    "AutoencoderKLWan", rules=_diffusers_rules(num_res_blocks=2, num_stages=4)
)
