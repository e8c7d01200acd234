"""diffusers' CogVideoX models built from our configs (the parity oracles of the CogVideoX
tests), the inputs they take, a tiny T5 with its tokenizer, and a writer of CogVideoX release
folders (diffusers layout) from our tiny models."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from torch import nn
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from cineforge.families.cogvideox.dit import CogVideoXDiTConfig
from cineforge.families.cogvideox.dit_keys import COGVIDEOX_DIT_FROM_DIFFUSERS
from cineforge.families.cogvideox.vae import CogVideoXVAEConfig
from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.weights.keymap import KeyMap
from oracles import perturb

WORDS = ["a", "cat", "dog", "runs", "on", "the", "beach", "red", "ball", "in", "snow"]


def diffusers_transformer(c: CogVideoXDiTConfig) -> CogVideoXTransformer3DModel:
    """``CogVideoXTransformer3DModel`` of the same sizes (on the current default device)."""
    pt, p, _ = c.patch_size
    t, h, w = c.sample_size
    return CogVideoXTransformer3DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, time_embed_dim=c.time_dim,
        text_embed_dim=c.text_dim, num_layers=c.num_layers, sample_width=w, sample_height=h,
        sample_frames=(t - 1) * 4 + 1, patch_size=p, patch_size_t=pt if pt > 1 else None,
        max_text_seq_length=c.text_len, norm_eps=c.eps,
        spatial_interpolation_scale=c.spatial_interpolation_scale,
        temporal_interpolation_scale=c.temporal_interpolation_scale,
        use_rotary_positional_embeddings=c.positions == "rope",
        use_learned_positional_embeddings=c.learned_positions,
    )


def diffusers_vae(c: CogVideoXVAEConfig) -> AutoencoderKLCogVideoX:
    return AutoencoderKLCogVideoX(
        block_out_channels=c.block_out_channels, latent_channels=c.latent_channels,
        layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
        norm_eps=c.norm_eps, temporal_compression_ratio=c.temporal_compression_ratio,
        scaling_factor=c.scaling_factor,
    )


def rotary_embedding(transformer: CogVideoXTransformer3DModel, latent_shape):
    """The (cos, sin) RoPE tables diffusers' CogVideoXPipeline computes for latents of
    ``latent_shape`` (B, C, T, H, W; 8x spatial VAE), or None without RoPE."""
    if not transformer.config.use_rotary_positional_embeddings:
        return None
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None,
                             transformer=transformer, scheduler=None)
    _, _, t, h, w = latent_shape
    return pipe._prepare_rotary_positional_embeddings(h * 8, w * 8, t, torch.device("cpu"))


def tiny_tokenizer() -> T5Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i) for i, w in enumerate(WORDS)]
    vocab += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5(vocab: int, dim: int = 32, seed: int = 5) -> T5EncoderModel:
    """T5 v1.1's architecture (gated GELU, no biases) at toy size, random weights."""
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=dim, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return perturb(T5EncoderModel(config), seed, scale=0.05)


def upstream_state(ours: nn.Module, upstream: nn.Module, keymap: KeyMap) -> dict:
    """``ours``'s tensors under ``upstream``'s names and shapes (``keymap`` read backwards:
    names travel through ``convert`` as index tensors; a reshaped key, the Conv2d patch
    kernel, gets the upstream shape back)."""
    names = list(upstream.state_dict())
    shapes = {k: v.shape for k, v in upstream.state_dict().items()}
    index = keymap.convert({k: torch.full((1, 1), i) for i, k in enumerate(names)})
    state = ours.state_dict()
    assert index.keys() == state.keys(), set(index) ^ set(state)
    return {names[int(i)]: state[k].reshape(shapes[names[int(i)]]).contiguous()
            for k, i in index.items()}


def write_diffusers_folder(folder: Path, dit_config, vae_config, dit: nn.Module,
                           vae: nn.Module, text: tuple | None = None) -> None:
    """A CogVideoX release folder (``CogVideoXPipeline.save_pretrained``) holding our models'
    values; ``text``: (T5 model, tokenizer) for ``text_encoder/`` and ``tokenizer/``."""
    transformer, upstream_vae = diffusers_transformer(dit_config), diffusers_vae(vae_config)
    transformer.load_state_dict(upstream_state(dit, transformer, COGVIDEOX_DIT_FROM_DIFFUSERS))
    upstream_vae.load_state_dict(upstream_state(vae, upstream_vae, COGVIDEOX_VAE_FROM_DIFFUSERS))
    model, tokenizer = text or (None, None)
    CogVideoXPipeline(tokenizer=tokenizer, text_encoder=model, transformer=transformer,
                      vae=upstream_vae, scheduler=CogVideoXDDIMScheduler()).save_pretrained(folder)


def write_registry_layout(folder: Path, preset, dit: nn.Module, vae: nn.Module) -> None:
    """tests/test_registry.py's writer of the ``("cogvideox", "diffusers")`` layout."""
    write_diffusers_folder(folder, preset.dit, preset.vae, dit, vae)
