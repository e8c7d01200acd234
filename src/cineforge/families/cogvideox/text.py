"""CogVideoX's text states: T5-v1.1-XXL (4096-d) as diffusers' ``CogVideoXPipeline`` and the
release run it.

The prompt is tokenized with end-of-sequence token and padded to 226 tokens; the encoder runs
WITHOUT an attention mask, so the padding tokens attend and are attended to, and their output
states are kept: the DiT reads all 226 rows (``_get_t5_prompt_embeds``). No text cleaning. A
prompt over the length is an error here (diffusers truncates it with a warning).

``TextStates.states`` therefore holds the padding rows' real T5 outputs, not zeros;
``TextStates.mask`` still marks the prompt's own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cineforge.models.text_encoders import TextStates, TransformersTextEncoder

COGVIDEOX_TEXT_LEN = 226


class CogVideoXT5(TransformersTextEncoder):
    """A transformers ``T5EncoderModel`` and its tokenizer, run as CogVideoX does."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = COGVIDEOX_TEXT_LEN):
        super().__init__(model, tokenizer, max_length)

    def encode(self, prompts: Sequence[str]) -> TextStates:
        ids, attention_mask = self.tokenize(prompts)
        with torch.inference_mode():
            states = self.model(input_ids=ids.to(self.device)).last_hidden_state
        return TextStates(states=states.clone(), mask=attention_mask.bool().clone())
