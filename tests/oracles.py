"""Tiny diffusers reference models (random weights), shared by the parity tests."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn


def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Add noise to every parameter so no zero-initialised layer makes a block the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_wan_transformer(seed: int = 1, text_dim: int = 32) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return perturb(ref, seed)


def tiny_wan_vae(seed: int = 2) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    ref = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return ref.eval()


def official_vae_state_dict(config, make) -> dict[str, torch.Tensor]:
    """Keys and shapes of the release's ``WanVAE_`` (Wan-Video/Wan2.1 wan/modules/vae.py).

    Written from the release's module structure, independently of our model: nn.Sequential
    children are numbered (ResidualBlock.residual = [RMS_norm, SiLU, conv, RMS_norm, SiLU,
    Dropout, conv]; Resample.resample = [pad or upsample, Conv2d]; head = [RMS_norm, SiLU,
    conv]; middle = [res, attention, res]).
    """
    sd: dict[str, torch.Tensor] = {}

    def conv(name, c_in, c_out, *kernel):
        sd[f"{name}.weight"] = make(c_out, c_in, *kernel)
        sd[f"{name}.bias"] = make(c_out)

    def residual(name, c_in, c_out):
        sd[f"{name}.residual.0.gamma"] = make(c_in, 1, 1, 1)
        conv(f"{name}.residual.2", c_in, c_out, 3, 3, 3)
        sd[f"{name}.residual.3.gamma"] = make(c_out, 1, 1, 1)
        conv(f"{name}.residual.6", c_out, c_out, 3, 3, 3)
        if c_in != c_out:
            conv(f"{name}.shortcut", c_in, c_out, 1, 1, 1)

    def middle(name, dim):
        residual(f"{name}.0", dim, dim)
        sd[f"{name}.1.norm.gamma"] = make(dim, 1, 1)
        conv(f"{name}.1.to_qkv", dim, 3 * dim, 1, 1)
        conv(f"{name}.1.proj", dim, dim, 1, 1)
        residual(f"{name}.2", dim, dim)

    def head(name, dim, c_out):
        sd[f"{name}.0.gamma"] = make(dim, 1, 1, 1)
        conv(f"{name}.2", dim, c_out, 3, 3, 3)

    b, z, mults, nrb = config.base_dim, config.z_dim, config.dim_mult, config.num_res_blocks
    # encoder
    dims = [b * m for m in (1, *mults)]
    conv("encoder.conv1", 3, dims[0], 3, 3, 3)
    n = 0
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for _ in range(nrb):
            residual(f"encoder.downsamples.{n}", c_in, c_out)
            c_in, n = c_out, n + 1
        if i != len(mults) - 1:
            conv(f"encoder.downsamples.{n}.resample.1", c_out, c_out, 3, 3)
            if config.temporal_downsample[i]:
                conv(f"encoder.downsamples.{n}.time_conv", c_out, c_out, 3, 1, 1)
            n += 1
    middle("encoder.middle", dims[-1])
    head("encoder.head", dims[-1], 2 * z)
    conv("conv1", 2 * z, 2 * z, 1, 1, 1)
    conv("conv2", z, z, 1, 1, 1)
    # decoder
    dims = [b * m for m in (mults[-1], *reversed(mults))]
    temporal_up = tuple(reversed(config.temporal_downsample))
    conv("decoder.conv1", z, dims[0], 3, 3, 3)
    middle("decoder.middle", dims[0])
    n = 0
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i > 0:
            c_in //= 2
        for _ in range(nrb + 1):
            residual(f"decoder.upsamples.{n}", c_in, c_out)
            c_in, n = c_out, n + 1
        if i != len(mults) - 1:
            conv(f"decoder.upsamples.{n}.resample.1", c_out, c_out // 2, 3, 3)
            if temporal_up[i]:
                conv(f"decoder.upsamples.{n}.time_conv", c_out, 2 * c_out, 3, 1, 1)
            n += 1
    head("decoder.head", dims[-1], 3)
    return sd
