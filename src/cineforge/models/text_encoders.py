"""Text encoders: a tokenizer plus a transformers encoder -> fixed-length token states.

Every encoder returns ``TextStates``: ``states`` (B, L, D) padded to the encoder's
``max_length`` with positions beyond each prompt's length set to exactly zero, and ``mask``
(B, L) bool. A prompt longer than ``max_length`` tokens is an error, never truncated (one
exception: ``CLIPTextEncoder.pooled`` reads the first 77 tokens, as Kandinsky 5 does).

Encoders:
- ``UMT5TextEncoder``: umT5-XXL as Wan 2.1 uses it (512 tokens; the same numbers as
  diffusers' ``WanPipeline._get_t5_prompt_embeds`` and the Wan repo's ``T5EncoderModel``).
- ``MiniLMTextEncoder``: all-MiniLM-L6-v2 (384-d, BERT), the offline default of the demo,
  with ``pooled`` for its sentence embedding.
- ``Qwen25VLTextEncoder``: Qwen2.5-VL-7B-Instruct's last hidden states (3584-d) of the prompt
  wrapped in Kandinsky 5's chat template, the template's system part cropped off.
- ``CLIPTextEncoder``: CLIP ViT-L/14's text tower; ``pooled`` is Kandinsky 5's 768-d vector.

Files are read by ``cineforge.weights.text_encoders``; here the wrappers take built objects.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.errors import CineforgeError


@dataclass(frozen=True)
class TextStates:
    """Token states ``B, L, D`` (zero beyond each prompt's length) and their ``B, L`` mask."""

    states: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real tokens per prompt (special tokens included), ``B`` long."""
        return self.mask.sum(dim=1)


@runtime_checkable
class TextEncoder(Protocol):
    """What pipelines and trainers need from a text encoder."""

    @property
    def dim(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    def encode(self, prompts: Sequence[str]) -> TextStates: ...


class TransformersTextEncoder:
    """Shared body: tokenize to ``max_length``, run the model, zero the padding.

    ``model`` is a transformers encoder whose output has ``last_hidden_state`` and whose
    config has ``hidden_size``; ``tokenizer`` pads on the right. The model is put in eval
    mode. Encoding runs under ``torch.inference_mode`` on the model's device; the returned
    tensors are ordinary tensors (cloned outside inference mode), so they can feed a
    training step.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int) -> None:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError("the tokenizer must pad on the right (padding_side='right')")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clean(self, prompt: str) -> str:
        """Text normalisation applied before tokenizing (none by default)."""
        return prompt

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (both ``B, max_length`` long, on the CPU)."""
        _check_prompts(prompts)
        batch = self.tokenizer(
            [self.clean(p) for p in prompts],
            padding="max_length",
            max_length=self._max_length,
            truncation=False,
            add_special_tokens=True,
            return_attention_mask=True,
        )
        for i, ids in enumerate(batch["input_ids"]):
            if len(ids) > self._max_length:
                raise CineforgeError(
                    f"prompt {i} is {len(ids)} tokens long but this text encoder takes at most "
                    f"{self._max_length} tokens: shorten the prompt"
                )
        return torch.tensor(batch["input_ids"]), torch.tensor(batch["attention_mask"])

    def encode(self, prompts: Sequence[str]) -> TextStates:
        """Token states ``B, max_length, dim`` (zero at padding) and their mask. The model
        runs on the longest prompt's tokens only: under the attention mask the padding
        changes no real token's state, and a 10-token prompt does not pay for 512."""
        ids, attention_mask = self.tokenize(prompts)
        device = self.device
        used = max(int(attention_mask.sum(dim=1).max()), 1)
        with torch.inference_mode():
            ids, attention_mask = ids.to(device), attention_mask.to(device)
            hidden = self.model(ids[:, :used], attention_mask[:, :used]).last_hidden_state
            mask = attention_mask.bool()
            states = torch.where(mask[:, :used, None], hidden, hidden.new_zeros(()))
            states = F.pad(states, (0, 0, 0, ids.shape[1] - used))
        return TextStates(states=states.clone(), mask=mask.clone())


class UMT5TextEncoder(TransformersTextEncoder):
    """umT5 encoder (``transformers.UMT5EncoderModel``) with Wan 2.1's prompt handling.

    Reproduces diffusers' ``WanPipeline._get_t5_prompt_embeds``: clean the prompt, pad to
    ``max_length`` with an end-of-sequence token appended, run with the attention mask,
    keep each prompt's own tokens and zero the rest.

    Cleaning: both diffusers and the Wan repo run ``ftfy.fix_text`` (diffusers only when
    ftfy is installed), unescape HTML entities twice, then collapse whitespace runs to one
    space and strip. ``clean`` does the last two steps and not ftfy, so it equals diffusers
    without ftfy; with ftfy the two differ only for text ftfy would repair (mojibake,
    odd quotes), which cineforge passes through unchanged.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512) -> None:
        super().__init__(model, tokenizer, max_length)

    def clean(self, prompt: str) -> str:
        return prompt_clean(prompt)


class MiniLMTextEncoder(TransformersTextEncoder):
    """all-MiniLM-L6-v2 (``transformers.BertModel``): token states ``B, L, 384``.

    ``pooled`` gives the sentence embedding of sentence-transformers (masked mean over the
    token states, L2-normalised).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 77) -> None:
        limit = model.config.max_position_embeddings
        if isinstance(max_length, int) and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds the model's {limit} positions")
        super().__init__(model, tokenizer, max_length)

    def pooled(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-length sentence embeddings, ``B, dim``."""
        return mean_pool(self.encode(prompts))


def mean_pool(text: TextStates, *, normalize: bool = True) -> torch.Tensor:
    """Mean of the real tokens' states, ``B, D``; L2-normalised unless ``normalize=False``."""
    weights = text.mask.to(text.states.dtype)[..., None]
    mean = (text.states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=-1) if normalize else mean


def whitespace_clean(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()


def _head(prompt: str, n: int = 40) -> str:
    """The prompt quoted, cut to ``n`` characters, to name it in a message."""
    return repr(prompt if len(prompt) <= n else prompt[:n] + "...")


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise CineforgeError("encode takes a list of prompts; wrap a single prompt as [prompt]")
    if len(prompts) == 0:
        raise CineforgeError("no prompts to encode: pass a non-empty list of strings")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise CineforgeError(f"prompts must be strings; items {bad[:5]} are not")


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template with one ``{}`` for the prompt, and ``crop``: how many of its tokens
    come before the prompt (they are run through the model, then dropped)."""

    text: str
    crop: int

    def __post_init__(self) -> None:
        if self.text.count("{}") != 1:
            raise ValueError("a prompt template needs exactly one {} for the prompt")
        if self.crop < 0:
            raise ValueError(f"crop must be >= 0, got {self.crop}")


# Kandinsky 5's templates and crops, as the release writes them
# (kandinsky/models/text_embedders.py, Qwen2_5_VLTextEmbedder.PROMPT_TEMPLATE; "promt" is
# the release's spelling, and the crop counts it). diffusers' Kandinsky 5 pipelines spell it
# "prompt", one token shorter, and crop 128 / 40 tokens: same cut, slightly different states.
K5_VIDEO_TEMPLATE = PromptTemplate(
    "\n".join((
        "<|im_start|>system\nYou are a promt engineer. Describe the video in detail.",
        "Describe how the camera moves or shakes, describe the zoom and view angle, whether it "
        "follows the objects.",
        "Describe the location of the video, main characters or objects and their action.",
        "Describe the dynamism of the video and presented actions.",
        "Name the visual style of the video: whether it is a professional footage, user "
        "generated content, some kind of animation, video game or scren content.",
        "Describe the visual effects, postprocessing and transitions if they are presented in "
        "the video.",
        "Pay attention to the order of key actions shown in the scene.<|im_end|>",
        "<|im_start|>user\n{}<|im_end|>",
    )),
    crop=129,
)
K5_IMAGE_TEMPLATE = PromptTemplate(
    "<|im_start|>system\nYou are a promt engineer. Describe the image by detailing the color, "
    "shape, size, texture, quantity, text, spatial relationships of the objects and "
    "background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>",
    crop=41,
)


def prompt_clean(prompt: str) -> str:
    """HTML entities unescaped twice, whitespace runs collapsed (diffusers' prompt_clean
    without ftfy; see ``UMT5TextEncoder``)."""
    return whitespace_clean(html.unescape(html.unescape(prompt)))


class Qwen25VLTextEncoder:
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) as Kandinsky 5's text encoder.

    Each prompt is cleaned (``prompt_clean``), put into ``template``, tokenized and run
    without an attention mask (padding is on the right and the model is causal, so padding
    never reaches a real token); the last layer's states after ``template.crop`` tokens are
    the text states: the prompt's tokens and the closing ``<|im_end|>``. At most
    ``max_length`` of them (the release's ``max_length``: 256 video, 512 image); a longer
    prompt is an error (the release and diffusers cut it silently).

    Equal to diffusers' ``Kandinsky5T2VPipeline._encode_prompt_qwen`` (given its template
    and crop) on each prompt's real tokens; the release pads to ``crop + max_length`` and
    masks the padding in the DiT, which ``TextStates.mask`` does here.
    """

    def __init__(
        self, model: nn.Module, tokenizer, *, template: PromptTemplate, max_length: int = 256
    ) -> None:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError("the tokenizer must pad on the right (padding_side='right')")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self._max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of the templated prompts, ``B, crop + n``
        (n: the longest prompt's token count), padded on the right."""
        _check_prompts(prompts)
        texts = [self.template.text.format(prompt_clean(p)) for p in prompts]
        batch = self.tokenizer(text=texts, padding="longest", return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lengths = mask.sum(dim=1) - self.template.crop
        for prompt, n in zip(prompts, lengths.tolist(), strict=True):
            if n > self._max_length:
                raise CineforgeError(
                    f"the prompt {_head(prompt)} is {n} tokens long but Kandinsky 5's text "
                    f"encoder takes at most {self._max_length}: shorten it"
                )
        return ids, mask

    def encode(self, prompts: Sequence[str]) -> TextStates:
        ids, attention_mask = self.tokenize(prompts)
        crop, device = self.template.crop, self.device
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(device), output_hidden_states=True, return_dict=True
            )
            hidden = out.hidden_states[-1][:, crop:]
            mask = attention_mask[:, crop:].to(device).bool()
            states = torch.where(mask[..., None], hidden, hidden.new_zeros(()))
            pad = self._max_length - states.shape[1]
            states, mask = F.pad(states, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        return TextStates(states=states.clone(), mask=mask.clone())


class CLIPTextEncoder(TransformersTextEncoder):
    """CLIP's text tower (``transformers.CLIPTextModel``, ViT-L/14: 768-d, 77 tokens).

    ``pooled`` is the vector Kandinsky 5 conditions on: ``pooler_output`` (the final-norm
    state at the end-of-text token) of the cleaned prompt padded to 77 tokens, as diffusers'
    ``_encode_prompt_clip`` and the release's ``ClipTextEmbedder`` compute it. Like both,
    ``pooled`` reads only the first 77 tokens of a longer prompt: Kandinsky's Qwen encoder
    takes 256, and the pooled vector is a summary. ``encode`` (token states) refuses long
    prompts, like every ``TransformersTextEncoder``.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 77) -> None:
        super().__init__(model, tokenizer, max_length)

    def clean(self, prompt: str) -> str:
        return prompt_clean(prompt)

    def pooled(self, prompts: Sequence[str]) -> torch.Tensor:
        """``B, dim`` pooled vectors of the prompts (cut to ``max_length`` tokens)."""
        _check_prompts(prompts)
        batch = self.tokenizer(
            [self.clean(p) for p in prompts],
            padding="max_length",
            max_length=self._max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = self.device
        with torch.inference_mode():
            out = self.model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            )
        return out.pooler_output.clone()
