"""Key map for the CogVideoX VAE: diffusers' AutoencoderKLCogVideoX (``vae/`` of the releases).

The CogVideoX releases on the hub (THUDM/CogVideoX-2b, -5b, 1.5-5b) ship the VAE in
diffusers' layout, ``vae/diffusion_pytorch_model.safetensors``. Our module tree (``vae``
beside this file) differs in a few names: causal convs are ``Conv3d`` subclasses
(diffusers wraps a ``.conv`` inside), each level is ``encoder.down.I`` / ``decoder.up.I``
with ``res.J`` residual blocks and one ``resample`` (diffusers' ``downsamplers.0`` /
``upsamplers.0``), the middle blocks are ``mid.res.J``, skip convs are ``shortcut``, and a
spatial norm is ``norm`` (the GroupNorm, diffusers' ``norm_layer``), ``scale`` and
``shift`` (diffusers' ``conv_y`` and ``conv_b``). The releases have no quant convs.
"""

from __future__ import annotations

from cineforge.weights.keymap import KeyMap

_WB = r"(?P<p>weight|bias)"
_SIDE = r"(?P<s>encoder|decoder)"
Rules = tuple[tuple[str, str], ...]


def _nest(prefix: str, target: str, inner: Rules) -> Rules:
    """Rules for a block at ``prefix`` (regex) renamed to ``target`` (template)."""
    return tuple((rf"{prefix}\.{p}", f"{target}.{t}") for p, t in inner)


def _norms(names: str) -> Rules:
    """A GroupNorm (encoder) or spatial norm (decoder) called one of ``names``."""
    n = rf"(?P<n>{names})"
    return (
        (rf"{n}\.{_WB}", r"\g<n>.\g<p>"),
        (rf"{n}\.norm_layer\.{_WB}", r"\g<n>.norm.\g<p>"),
        (rf"{n}\.conv_y\.conv\.{_WB}", r"\g<n>.scale.\g<p>"),
        (rf"{n}\.conv_b\.conv\.{_WB}", r"\g<n>.shift.\g<p>"),
    )


_RESIDUAL: Rules = (
    *_norms("norm1|norm2"),
    (rf"(?P<n>conv1|conv2)\.conv\.{_WB}", r"\g<n>.\g<p>"),
    (rf"conv_shortcut\.{_WB}", r"shortcut.\g<p>"),
)
_RESAMPLE: Rules = ((rf"(?:downsamplers|upsamplers)\.0\.conv\.{_WB}", r"resample.conv.\g<p>"),)

COGVIDEOX_VAE_FROM_DIFFUSERS = KeyMap(
    "AutoencoderKLCogVideoX",
    rules=(
        (rf"{_SIDE}\.(?P<n>conv_in|conv_out)\.conv\.{_WB}", r"\g<s>.\g<n>.\g<p>"),
        *_nest(_SIDE, r"\g<s>", _norms("norm_out")),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
               r"encoder.down.\g<i>.res.\g<j>", _RESIDUAL),
        *_nest(r"encoder\.down_blocks\.(?P<i>\d+)", r"encoder.down.\g<i>", _RESAMPLE),
        *_nest(r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
               r"decoder.up.\g<i>.res.\g<j>", _RESIDUAL),
        *_nest(r"decoder\.up_blocks\.(?P<i>\d+)", r"decoder.up.\g<i>", _RESAMPLE),
        *_nest(rf"{_SIDE}\.mid_block\.resnets\.(?P<j>\d+)", r"\g<s>.mid.res.\g<j>", _RESIDUAL),
    ),
)  # fmt: skip
