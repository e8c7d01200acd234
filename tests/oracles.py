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
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
        out_channels=16, text_dim=text_dim, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    return perturb(ref, seed)


def tiny_wan_vae(seed: int = 2) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    ref = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    return ref.eval()
