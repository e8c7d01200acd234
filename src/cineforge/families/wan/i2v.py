"""Wan image-to-video (Wan 2.1 I2V 14B; Wan 2.2 I2V A14B through ``experts``).

Conditioning, as the release's ``WanI2V.generate`` builds it (diffusers:
``WanImageToVideoPipeline.prepare_latents``), for a first frame at the output size:

    video  = [frame, 0, 0, ...]                    (3, F, H, W: the frame, then F - 1 zeros)
    latent = VAE.encode(video)                     (16, T, h, w, normalised like the noise)
    mask   = 1 on the first latent frame, else 0   (4, T, h, w: one per frame it covers)
    y      = concat(mask, latent)                  (20 channels, concatenated to the noise)

and, with a CLIP image path in the DiT (Wan 2.1), the frame's CLIP ViT-H/14 states
(``image_encoder``). The unconditional branch of guidance gets the same ``y`` and image
states with the negative prompt's text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cineforge.families.wan.pipeline import TextToVideo
from cineforge.pipelines.common import Conditioning, VideoRequest, prepare_image, require_image


class ImageToVideo(TextToVideo):
    """Wan DiT with 36 input channels + VAE + text encoder (+ CLIP image encoder when the
    DiT has ``image_dim``)."""

    video_to_video = False
    image_to_video = True

    def __init__(self, components, *, placement=None, dtype: torch.dtype = torch.float32):
        super().__init__(components, placement=placement, dtype=dtype)
        self.image_encoder = components.image_encoder

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config) -> None:
        require_image(r)
        TextToVideo.check_request(r, dit_config, vae_config)

    def first_frame(self, r: VideoRequest, batch: int) -> Conditioning:
        """``y`` (B, 4 + z_dim, T, h, w) and, for a DiT with ``image_dim``, ``clip``."""
        frame, _ = prepare_image(r.image, r.width, r.height)
        rest = frame.new_zeros(1, 3, r.frames - 1, r.height, r.width)
        video = torch.cat([frame[:, :, None], rest], dim=2)
        latent = self.encode_video(video)
        mask = torch.zeros(1, self.vae.config.temporal_ratio, *latent.shape[2:])
        mask[:, :, 0] = 1
        out = {"y": torch.cat([mask, latent], dim=1).expand(batch, -1, -1, -1, -1)}
        if self.dit.config.image_dim is not None:
            with self.placement.use(self.image_encoder.model):
                states = self.image_encoder.encode(frame)
            out["clip"] = states.cpu().expand(batch, -1, -1)
        return out

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = self.encode_text(prompts, r.negative, r.guidance)
        image = self.first_frame(r, len(cond))
        return ({"context": cond, **image},
                None if uncond is None else {"context": uncond, **image})
