"""Tiny Kandinsky 5 text encoders built in code (no files): byte-level tokenizers, a 2-layer
Qwen2.5-VL and a 2-layer CLIP text tower, shared by the Kandinsky 5 tests."""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from oracles import perturb


def _byte_tokenizer(specials: list[str]) -> Tokenizer:
    """One token per byte (no merges) plus ``specials`` (ids 256, 257, ...)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tok


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    tok = _byte_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>")


def clip_tokenizer() -> PreTrainedTokenizerFast:
    tok = _byte_tokenizer(["<|startoftext|>", "<|endoftext|>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 256), ("<|endoftext|>", 257)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_qwen(seed: int = 3, hidden: int = 32) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=259, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
            bos_token_id=256, eos_token_id=258, pad_token_id=256,
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                           out_hidden_size=hidden, fullatt_block_indexes=[0]),
    )
    return perturb(Qwen2_5_VLForConditionalGeneration(config), seed, scale=0.02)


def tiny_clip(seed: int = 4, hidden: int = 16) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=258, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=256, eos_token_id=257,
        pad_token_id=257,
    )
    return perturb(CLIPTextModel(config), seed, scale=0.02)


class TorchWithoutBF16:
    """diffusers' Kandinsky 5 rotary code casts q and k to bfloat16 even in an fp32 model;
    installed as that module's ``torch``, its ``torch.bfloat16`` is float32 (see
    tests/test_kandinsky5_dit.py), so the oracle runs in fp32 throughout."""

    bfloat16 = torch.float32

    def __getattr__(self, name: str):
        return getattr(torch, name)
