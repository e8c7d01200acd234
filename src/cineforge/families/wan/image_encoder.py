"""Wan 2.1 image-to-video's image encoder: CLIP ViT-H/14 states of the first frame.

The release (``wan/modules/clip.py``) resizes the frame (in [-1, 1]) to 224 x 224 with
bicubic interpolation, maps it to [0, 1], normalises it with CLIP's mean and std and keeps
the penultimate transformer layer's states (``use_31_block``: 31 of 32 blocks, no final
norm): 257 tokens (class token + 16 x 16 patches) of width 1280. diffusers'
``WanImageToVideoPipeline`` takes the same states from transformers' ``CLIPVisionModel``
(``hidden_states[-2]``), which is the model used here, loaded strictly from a folder's
``image_encoder/`` (the diffusers layout; the cineforge layout keeps it there too) or from
the release's own CLIP file (official layout, converted by ``clip_keys``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cineforge.errors import CineforgeError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_vit_h14_config():
    """The release's ViT-H/14 vision tower (open-clip xlm-roberta-large-vit-huge-14)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=16,
                            num_hidden_layers=32, patch_size=14, image_size=224,
                            projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)


class WanImageEncoder:
    """``encode(frame) -> B, tokens, width``: a transformers ``CLIPVisionModel`` (``model``)
    on a frame B, 3, H, W in [-1, 1]."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def encode(self, frame: torch.Tensor) -> torch.Tensor:
        param = next(self.model.parameters())
        size = self.model.config.image_size
        x = F.interpolate(frame.float(), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        out = self.model(pixel_values=x.to(param.device, param.dtype), output_hidden_states=True)
        return out.hidden_states[-2].float()


def load_image_encoder(folder: Path, layout: str, dtype: torch.dtype) -> WanImageEncoder:
    """The CLIP vision model of a weights folder: ``image_encoder/`` (diffusers or cineforge
    layout), or the release's CLIP file beside the DiT (official layout; ``clip_keys``)."""
    from transformers import CLIPVisionModel

    from cineforge.families.wan.clip_keys import (
        CLIP_FILE,
        convert_official_clip,
        official_clip_config,
    )
    from cineforge.weights.files import read_torch
    from cineforge.weights.text_encoders import _load_model, load_state_strict

    where = Path(folder) / "image_encoder"
    if (where / "config.json").is_file():
        model = _load_model(CLIPVisionModel, where, dtype=dtype)
    elif layout == "official" and (Path(folder) / CLIP_FILE).is_file():
        state = read_torch(Path(folder) / CLIP_FILE)
        model = load_state_strict(CLIPVisionModel, official_clip_config(state),
                                  convert_official_clip(state), Path(folder) / CLIP_FILE,
                                  dtype=dtype)
    else:
        raise CineforgeError(
            f"{folder} has neither an image_encoder/ folder with the CLIP ViT-H/14 vision model "
            f"nor the release's {CLIP_FILE}; download the preset's repository (official or "
            "-Diffusers) and pass {weights}=DIR", fields=("weights",))
    return WanImageEncoder(model.eval().requires_grad_(False))
