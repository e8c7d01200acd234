"""Captioners: imported captions, ShapesWorld ground truth, the VLM wrapper's plumbing."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cineforge.data.curate.captions import (
    Captioner,
    ManualCaptions,
    ShapesCaptioner,
    TransformersVLMCaptioner,
    get_captioner,
    write_shapes_sources,
)
from cineforge.data.shapes import TINY_SHAPES_WORLD, ShapesWorld
from cineforge.errors import CineforgeError

FRAMES = np.zeros((6, 16, 24, 3), np.uint8)


def test_manual_captions_by_scene_id_and_time_range(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "caps.csv").write_text(
        "scene_id,source,start,end,caption\n"
        "7,,,,by id\n"
        ",clips/a.mp4,0,4,a early\n"
        ",clips/a.mp4,4,10,a late\n"
        ",/data/b.mp4,2,,b from 2 s\n"
    )
    caps = ManualCaptions(tmp_path / "caps.csv")
    a = str(tmp_path / "clips" / "a.mp4")
    assert caps.caption(FRAMES, scene_id=7, source=a, start_frame=0, fps=10) == "by id"
    assert caps.caption(FRAMES, scene_id=8, source=a, start_frame=0, end_frame=30, fps=10) \
        == "a early"
    assert caps.caption(FRAMES, source=a, start_frame=30, end_frame=90, fps=10) == "a late"
    assert caps.caption(FRAMES, source=a, start_frame=50, fps=10) == "a late"  # start only
    assert caps.caption(FRAMES, source=a, start_frame=120, end_frame=130, fps=10) is None
    assert caps.caption(FRAMES, source="/mnt/x/b.mp4", start_frame=60, end_frame=70, fps=30) \
        == "b from 2 s"  # unique file name
    assert caps.caption(FRAMES, source="/data/b.mp4", start_frame=0, end_frame=30, fps=30) is None
    assert caps.caption(FRAMES, source="/data/c.mp4", start_frame=0, fps=30) is None
    with pytest.raises(CineforgeError, match="fps"):
        caps.caption(FRAMES, source=a, start_frame=0)
    assert isinstance(caps, Captioner) and caps.name == "manual"


def test_manual_captions_jsonl_and_errors(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"scene_id": 3, "caption": " three "}) + "\n\n")
    assert get_captioner(f"manual:{path}").caption(FRAMES, scene_id=3) == "three"
    path.write_text(json.dumps({"source": "a.mp4", "start": 5, "end": 2, "caption": "x"}))
    with pytest.raises(CineforgeError, match=r"caps.jsonl:1: need 0 <= start < end"):
        ManualCaptions(path)
    (tmp_path / "caps.csv").write_text("scene_id,caption\n1,\n")
    with pytest.raises(CineforgeError, match=r"caps.csv:2: empty or missing 'caption'"):
        ManualCaptions(tmp_path / "caps.csv")
    with pytest.raises(CineforgeError, match="not found"):
        ManualCaptions(tmp_path / "missing.csv")
    with pytest.raises(CineforgeError, match="unknown captioner"):
        get_captioner("blip")


def test_shapes_captioner_regenerates_ground_truth(tmp_path):
    config = replace(TINY_SHAPES_WORLD, image_fraction=0.0)
    paths = write_shapes_sources(tmp_path, [0, 5], config)
    assert [p.name for p in paths] == ["shapes_train_seed0_000000.mp4",
                                       "shapes_train_seed0_000005.mp4"]
    captioner = ShapesCaptioner(config)
    world = ShapesWorld(config)
    for path, i in zip(paths, [0, 5], strict=True):
        assert captioner.caption(FRAMES, source=str(path), start_frame=0) == world.spec(i).caption
        attrs = captioner.attributes(path)
        assert attrs["objects"][0]["colour"] == world.spec(i).main.colour
    assert get_captioner("shapes").name == "ground_truth"
    with pytest.raises(CineforgeError, match="not a ShapesWorld clip"):
        captioner.caption(FRAMES, source="holiday.mp4")


def _thumb(frame):
    from PIL import Image

    im = Image.fromarray(frame)
    im.thumbnail((32, 32))
    return im


class _FakeProcessor:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        self.messages = messages
        return "PROMPT"

    def __call__(self, text, images, return_tensors):
        self.images = images
        return _Batch(input_ids=torch.tensor([[1, 2, 3]]))

    def batch_decode(self, ids, skip_special_tokens):
        return [" ".join(f"w{i}" for i in row.tolist()) + " " for row in ids]


class _Batch(dict):
    def to(self, device):
        return self


class _FakeModel:
    name_or_path = "fake/vlm"

    def generate(self, input_ids, max_new_tokens, do_sample):
        self.max_new_tokens = max_new_tokens
        return torch.cat([input_ids, torch.tensor([[7, 8]])], 1)


def test_vlm_captioner_plumbing_and_validation(tmp_path):
    processor = _FakeProcessor()
    cap = TransformersVLMCaptioner.from_loaded(processor, _FakeModel(), frames=4, max_side=32,
                                               max_new_tokens=9)
    frames = np.random.default_rng(0).integers(0, 255, (10, 48, 64, 3), dtype=np.uint8)
    assert cap.caption(frames) == "w7 w8"  # only the generated tokens, stripped
    assert cap.name == "vlm:fake/vlm" and cap._model.max_new_tokens == 9
    assert [im.size for im in processor.images] == [(32, 24)] * 4
    content = processor.messages[0]["content"]
    assert [c["type"] for c in content] == ["image"] * 4 + ["text"]
    np.testing.assert_array_equal(np.asarray(processor.images[-1]),
                                  np.asarray(_thumb(frames[9])))  # frames 0, 3, 6, 9
    with pytest.raises(CineforgeError, match="uint8 frames"):
        cap.caption(frames.astype(np.float32))
    with pytest.raises(CineforgeError, match="no config.json"):
        TransformersVLMCaptioner(str(tmp_path))
    with pytest.raises(CineforgeError, match="frames >= 1"):
        TransformersVLMCaptioner("Qwen/Qwen2.5-VL-3B-Instruct", frames=0)
    with pytest.raises(CineforgeError, match="prompt"):
        TransformersVLMCaptioner("Qwen/Qwen2.5-VL-3B-Instruct", prompt=" ")
    lazy = get_captioner("vlm:Qwen/Qwen2.5-VL-3B-Instruct")
    assert lazy._model is None and lazy.name == "vlm:Qwen/Qwen2.5-VL-3B-Instruct"


def _tiny_llava():
    """A random 1-layer LLaVA with a word-level tokenizer and a PIL CLIP image processor,
    built in code (no files): the real transformers processor/generate path, in ~0.2 s."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    words = ["<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "describe", "the",
             "clip", "a", "red", "ball", "[UNK]"]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", unk_token="[UNK]",
                                        additional_special_tokens=["<image>"])
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
                "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28},
                                              crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
        num_additional_image_tokens=1, chat_template=template)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, max_position_embeddings=128),
        image_token_id=vocab["<image>"], vision_feature_select_strategy="full",
        vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return processor, model, words


def test_vlm_captioner_runs_a_real_tiny_transformers_vlm():
    processor, model, words = _tiny_llava()
    cap = TransformersVLMCaptioner.from_loaded(processor, model, frames=3, max_new_tokens=4,
                                               prompt="describe the clip")
    frames = np.random.default_rng(0).integers(0, 255, (6, 56, 84, 3), dtype=np.uint8)
    text = cap.caption(frames)  # 3 images -> 3 x 5 image tokens must match the features
    assert text is not None and 1 <= len(text.split()) <= 4
    assert set(text.split()) <= set(words) - {"<pad>", "<s>", "</s>", "<image>"}
    assert cap.caption(frames) == text  # greedy: deterministic
