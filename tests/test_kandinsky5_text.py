"""Kandinsky 5 text encoders (Qwen2.5-VL + CLIP pooled) against diffusers' Kandinsky 5
pipelines' encode functions, on tiny random models and byte-level tokenizers built in code."""

from __future__ import annotations

import pytest
import torch
from diffusers import Kandinsky5T2IPipeline, Kandinsky5T2VPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

from cineforge.errors import CineforgeError
from cineforge.models.text_encoders import (
    K5_IMAGE_TEMPLATE,
    K5_VIDEO_TEMPLATE,
    CLIPTextEncoder,
    PromptTemplate,
    Qwen25VLTextEncoder,
    TextEncoder,
)
from cineforge.weights.text_encoders import load_clip, load_qwen25vl
from k5_oracles import clip_tokenizer, qwen_tokenizer, tiny_clip, tiny_qwen

PROMPTS = ["a red ball bounces", "  two   cats &amp; a dog\n play "]


def _reference(cls, qwen, clip):
    """A diffusers pipeline holding only the text parts; its crop is set to our byte-level
    tokenizer's length of its template's system part (128 / 40 are Qwen-tokenizer counts)."""
    ref = cls(transformer=None, vae=None, text_encoder=qwen, tokenizer=qwen_tokenizer(),
              text_encoder_2=clip, tokenizer_2=clip_tokenizer(), scheduler=None)
    prefix = ref.prompt_template.split("{}")[0]
    ref.prompt_template_encode_start_idx = len(qwen_tokenizer()(prefix)["input_ids"])
    return ref, PromptTemplate(ref.prompt_template, ref.prompt_template_encode_start_idx)


@pytest.mark.parametrize("cls", [Kandinsky5T2VPipeline, Kandinsky5T2IPipeline])
def test_qwen_and_clip_match_diffusers(cls):
    qwen, clip = tiny_qwen(), tiny_clip()
    ref, template = _reference(cls, qwen, clip)
    ours = Qwen25VLTextEncoder(qwen, qwen_tokenizer(), template=template, max_length=40)
    pooled = CLIPTextEncoder(clip, clip_tokenizer())
    assert isinstance(ours, TextEncoder) and ours.dim == 32 and ours.max_length == 40
    for prompt in PROMPTS:  # one at a time: diffusers keeps padded tokens in a batch
        with torch.no_grad():
            want, want_pooled, cu = ref.encode_prompt([prompt], device="cpu",
                                                      dtype=torch.float32)
        got = ours.encode([prompt])
        n = int(cu[-1])
        assert got.states.shape == (1, 40, 32) and int(got.lengths[0]) == n
        assert want.shape == (1, n, 32)
        torch.testing.assert_close(got.states[:, :n], want, rtol=0, atol=1e-6)
        assert got.states[:, n:].abs().max() == 0 and not got.mask[:, n:].any()
        torch.testing.assert_close(pooled.pooled([prompt]), want_pooled, rtol=0, atol=1e-6)


def test_batch_equals_single_prompts():
    qwen, clip = tiny_qwen(), tiny_clip()
    ours = Qwen25VLTextEncoder(qwen, qwen_tokenizer(), template=PromptTemplate("<|im_start|>{}", 1),
                               max_length=40)
    batch = ours.encode(PROMPTS)
    for i, p in enumerate(PROMPTS):
        one = ours.encode([p])
        torch.testing.assert_close(batch.states[i : i + 1], one.states, rtol=0, atol=1e-6)
        assert torch.equal(batch.mask[i : i + 1], one.mask)
    pooled = CLIPTextEncoder(clip, clip_tokenizer())
    torch.testing.assert_close(pooled.pooled(PROMPTS)[1:], pooled.pooled(PROMPTS[1:]))


def test_long_prompt_is_an_error_for_qwen_and_cut_for_clip():
    ours = Qwen25VLTextEncoder(tiny_qwen(), qwen_tokenizer(),
                               template=PromptTemplate("{}", 0), max_length=8)
    with pytest.raises(CineforgeError, match="at most 8"):
        ours.encode(["a prompt longer than eight bytes"])
    clip = CLIPTextEncoder(tiny_clip(), clip_tokenizer())
    long = "x" * 200
    torch.testing.assert_close(clip.pooled([long]), clip.pooled([long[:75]]))  # 75 + 2 special


def test_release_templates_and_crops():
    assert "promt engineer. Describe the video" in K5_VIDEO_TEMPLATE.text
    assert K5_VIDEO_TEMPLATE.crop == 129 and K5_IMAGE_TEMPLATE.crop == 41
    assert K5_IMAGE_TEMPLATE.text.endswith("<|im_start|>user\n{}<|im_end|>")
    with pytest.raises(ValueError):
        PromptTemplate("no slot", 0)


def test_load_from_folders(tmp_path):
    qwen, clip = tiny_qwen(), tiny_clip()
    qwen.save_pretrained(tmp_path / "text_encoder")
    qwen_tokenizer().save_pretrained(tmp_path / "tokenizer")
    clip.save_pretrained(tmp_path / "text_encoder_2")
    clip_tokenizer().save_pretrained(tmp_path / "text_encoder_2")
    template = PromptTemplate("<|im_start|>user\n{}<|im_end|>", 3)
    loaded = load_qwen25vl(tmp_path / "text_encoder", tokenizer=tmp_path / "tokenizer",
                           template=template, max_length=40, dtype=torch.float32)
    want = Qwen25VLTextEncoder(qwen, qwen_tokenizer(), template=template, max_length=40)
    torch.testing.assert_close(loaded.encode(PROMPTS).states, want.encode(PROMPTS).states)
    loaded_clip = load_clip(tmp_path / "text_encoder_2")
    torch.testing.assert_close(loaded_clip.pooled(PROMPTS),
                               CLIPTextEncoder(clip, clip_tokenizer()).pooled(PROMPTS))
    with pytest.raises(CineforgeError, match="folder not found"):
        load_clip(tmp_path / "missing")


@pytest.mark.parametrize(
    ("load", "build", "key", "reported"),
    [
        (load_qwen25vl, tiny_qwen, "model.layers.1.mlp.up_proj.weight",  # the hub's name
         "model.language_model.layers.1.mlp.up_proj.weight"),  # transformers' module tree
        (load_clip, tiny_clip, "encoder.layers.1.mlp.fc1.weight",
         "encoder.layers.1.mlp.fc1.weight"),
    ],
)
def test_load_is_strict(tmp_path, load, build, key, reported):
    """A weight missing from the folder, or a key the model lacks, is a one-line error naming
    it; transformers alone re-initialises the missing weight at random and goes on."""
    build().save_pretrained(tmp_path)
    (qwen_tokenizer() if load is load_qwen25vl else clip_tokenizer()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    load(tmp_path, dtype=torch.float32)  # the folder as saved loads
    for broken, named in [({k: v for k, v in state.items() if k != key}, "missing keys "),
                          (state | {"extra.weight": torch.zeros(2)}, "unexpected keys ")]:
        save_file(broken, weights, metadata={"format": "pt"})
        with pytest.raises(CineforgeError) as err:
            load(tmp_path, dtype=torch.float32)
        message = str(err.value)
        assert "\n" not in message and str(tmp_path) in message
        assert named + (reported if named == "missing keys " else "extra.weight") in message


def test_clip_text_tower_loads_from_a_full_clip_folder(tmp_path):
    """A full CLIP checkpoint (the release's openai/clip-vit-large-patch14) also holds the
    image tower: its keys are the one allowed surplus."""
    torch.manual_seed(5)
    full = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=258, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=256, eos_token_id=257, pad_token_id=257),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=8,
    ))
    full.save_pretrained(tmp_path)
    clip_tokenizer().save_pretrained(tmp_path)
    loaded = load_clip(tmp_path)
    assert torch.equal(loaded.model.get_input_embeddings().weight,
                       full.text_model.embeddings.token_embedding.weight)
