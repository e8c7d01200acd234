"""CogVideoX-5B-I2V image-to-video, as diffusers' ``CogVideoXImageToVideoPipeline`` runs it.

The first frame conditions the DiT through 16 more input channels (``CogVideoXDiT``'s ``y``):

    z = VAE.encode(image).sample() * scaling_factor        (B, 16, 1, h, w)
    y = [z, 0, 0, ...]                                     (B, 16, T, h, w: zeros after it)
    every DiT call sees concat(x, y) along channels, for both branches of guidance

Everything else (T5 text, DDIM / DPM sampling, dynamic guidance, decoding) is the
text-to-video pipeline's (``CogVideoX``). The model's learned positions fix its grid: 49
frames at 720x480. The image latent is a posterior draw, from a generator seeded by the
request's seed (a stream apart from the initial noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox.pipeline import CogVideoX
from cineforge.pipelines.common import Conditioning, VideoRequest, require_image


class CogVideoXI2V(CogVideoX):
    """CogVideoX-5B-I2V DiT (32 input channels) + VAE + T5; the request's ``image`` is the
    first frame."""

    image_to_video = True

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config, *,
                      dynamic_cfg: bool | None = None) -> None:
        require_image(r)
        if dit_config.in_channels != 2 * dit_config.out_channels or dit_config.temporal_patches:
            raise CineforgeError("this CogVideoX DiT takes no image latents (it needs twice "
                                 "the output channels and frame patches of 1)")
        CogVideoX.check_request(r, dit_config, vae_config, dynamic_cfg=dynamic_cfg)

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = super().conditions(prompts, r)
        z = self.sampled_first_frame(r)
        b, c, t, h, w = self.latent_shape(r, len(prompts))
        y = torch.cat([z.expand(b, -1, -1, -1, -1), z.new_zeros(b, c, t - 1, h, w)], dim=2)
        return {**cond, "y": y}, uncond

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        """The sampled latents: the DiT's output channels (its input adds ``y``'s)."""
        b, _, t, h, w = super().latent_shape(r, batch)
        return (b, self.dit.config.out_channels, t, h, w)
