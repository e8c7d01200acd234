"""Wan 2.2 references: diffusers' AutoencoderKLWan at a Wan 2.2 VAE config, and the release's
VAE key names and shapes (shared by the TI2V tests and the registry walk)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from cineforge.families.wan.vae22 import WAN_VAE_2_2_TINY, Wan22VAEConfig
from oracles import perturb


def diffusers_vae22(config: Wan22VAEConfig) -> AutoencoderKLWan:
    """diffusers' AutoencoderKLWan with the Wan 2.2 structure (``is_residual``, patch 2)."""
    return AutoencoderKLWan(
        base_dim=config.base_dim, decoder_base_dim=config.decoder_base_dim, z_dim=config.z_dim,
        dim_mult=list(config.dim_mult), num_res_blocks=config.num_res_blocks,
        temperal_downsample=list(config.temporal_downsample), is_residual=True,
        in_channels=3 * config.patch_size**2, out_channels=3 * config.patch_size**2,
        patch_size=config.patch_size, scale_factor_spatial=config.spatial_ratio,
        latents_mean=list(config.latents_mean), latents_std=list(config.latents_std),
    )


def reference_vae(config: Wan22VAEConfig = WAN_VAE_2_2_TINY, seed: int = 3) -> AutoencoderKLWan:
    """A tiny diffusers Wan 2.2 VAE with every parameter perturbed."""
    torch.manual_seed(seed)
    return perturb(diffusers_vae22(config), seed)


def official_vae22_state_dict(config: Wan22VAEConfig, make) -> dict[str, torch.Tensor]:
    """Keys and shapes of the release's Wan 2.2 ``WanVAE_`` (Wan-Video/Wan2.2
    wan/modules/vae2_2.py), written from its module structure: each level is a
    ``Down_ResidualBlock`` / ``Up_ResidualBlock`` whose ``downsamples`` / ``upsamples``
    Sequential holds the residual blocks, then the Resample; the upsample conv keeps the width.
    """
    sd: dict[str, torch.Tensor] = {}

    def conv(name, c_in, c_out, *kernel):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = make(c_out, c_in, *kernel), make(c_out)

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

    z, mults, nrb = config.z_dim, config.dim_mult, config.num_res_blocks
    last = len(mults) - 1
    dims = [config.base_dim * m for m in (1, *mults)]
    conv("encoder.conv1", 12, dims[0], 3, 3, 3)
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for j in range(nrb):
            residual(f"encoder.downsamples.{i}.downsamples.{j}", c_in if j == 0 else c_out, c_out)
        if i != last:
            conv(f"encoder.downsamples.{i}.downsamples.{nrb}.resample.1", c_out, c_out, 3, 3)
            if config.temporal_downsample[i]:
                conv(f"encoder.downsamples.{i}.downsamples.{nrb}.time_conv", c_out, c_out, 3, 1, 1)
    middle("encoder.middle", dims[-1])
    sd["encoder.head.0.gamma"] = make(dims[-1], 1, 1, 1)
    conv("encoder.head.2", dims[-1], 2 * z, 3, 3, 3)
    conv("conv1", 2 * z, 2 * z, 1, 1, 1)
    conv("conv2", z, z, 1, 1, 1)
    dims = [config.decoder_base_dim * m for m in (mults[-1], *reversed(mults))]
    temporal_up = tuple(reversed(config.temporal_downsample))
    conv("decoder.conv1", z, dims[0], 3, 3, 3)
    middle("decoder.middle", dims[0])
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for j in range(nrb + 1):
            residual(f"decoder.upsamples.{i}.upsamples.{j}", c_in if j == 0 else c_out, c_out)
        if i != last:
            conv(f"decoder.upsamples.{i}.upsamples.{nrb + 1}.resample.1", c_out, c_out, 3, 3)
            if temporal_up[i]:
                conv(f"decoder.upsamples.{i}.upsamples.{nrb + 1}.time_conv",
                     c_out, 2 * c_out, 3, 1, 1)
    sd["decoder.head.0.gamma"] = make(dims[-1], 1, 1, 1)
    conv("decoder.head.2", dims[-1], 12, 3, 3, 3)
    return sd
