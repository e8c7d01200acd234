"""Text encoders: a tokenizer plus a transformers encoder -> fixed-length token states.

Every encoder returns ``TextStates``: ``states`` (B, L, D) padded to the encoder's
``max_length`` with positions beyond each prompt's length set to exactly zero, and ``mask``
(B, L) bool. A prompt longer than ``max_length`` tokens is an error, never truncated.

Two encoders:
- ``UMT5TextEncoder``: umT5-XXL as Wan 2.1 uses it (512 tokens; the same numbers as
  diffusers' ``WanPipeline._get_t5_prompt_embeds`` and the Wan repo's ``T5EncoderModel``).
- ``MiniLMTextEncoder``: all-MiniLM-L6-v2 (384-d, BERT), the offline default of the demo,
  with ``pooled`` for its sentence embedding.

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
        ids, attention_mask = self.tokenize(prompts)
        device = self.device
        with torch.inference_mode():
            ids, attention_mask = ids.to(device), attention_mask.to(device)
            hidden = self.model(ids, attention_mask).last_hidden_state
            mask = attention_mask.bool()
            states = torch.where(mask[..., None], hidden, hidden.new_zeros(()))
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
        return whitespace_clean(html.unescape(html.unescape(prompt)))


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


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise CineforgeError("encode takes a list of prompts; wrap a single prompt as [prompt]")
    if len(prompts) == 0:
        raise CineforgeError("no prompts to encode: pass a non-empty list of strings")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise CineforgeError(f"prompts must be strings; items {bad[:5]} are not")
