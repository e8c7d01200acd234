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

import numpy as np
import torch

from cineforge.errors import CineforgeError
from cineforge.families.cogvideox.pipeline import CogVideoX
from cineforge.pipelines.common import Conditioning, VideoRequest, prepare_image


class CogVideoXI2V(CogVideoX):
    """CogVideoX-5B-I2V DiT (32 input channels) + VAE + T5; the request's ``image`` is the
    first frame."""

    image_to_video = True

    @staticmethod
    def check_request(r: VideoRequest, dit_config, vae_config, *,
                      dynamic_cfg: bool | None = None) -> None:
        if r.image is None:
            raise CineforgeError("this preset is image-to-video: give the first frame as "
                                 "{image}", fields=("image",))
        if dit_config.in_channels != 2 * dit_config.out_channels or dit_config.temporal_patches:
            raise CineforgeError("this CogVideoX DiT takes no image latents (it needs twice "
                                 "the output channels and frame patches of 1)")
        CogVideoX.check_request(r, dit_config, vae_config, dynamic_cfg=dynamic_cfg)

    def first_frame(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (1, C, 1, h, w) of ``image`` (1, 3, H, W in [-1, 1]): a posterior
        draw from ``generator``."""
        with self.placement.use(self.vae) as vae, torch.no_grad():
            video = image[:, :, None].to(next(vae.parameters()).device, torch.float32)
            return vae.encode(video, sample=True, generator=generator).float().cpu()

    def conditions(
        self, prompts: Sequence[str], r: VideoRequest
    ) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = super().conditions(prompts, r)
        frame, _ = prepare_image(r.image, r.width, r.height)
        seed = np.random.SeedSequence([r.seed % 2**64, 2]).generate_state(1, np.uint32)[0]
        z = self.first_frame(frame, torch.Generator().manual_seed(int(seed)))
        b, c, t, h, w = self.latent_shape(r, len(prompts))
        y = torch.cat([z.expand(b, -1, -1, -1, -1), z.new_zeros(b, c, t - 1, h, w)], dim=2)
        return {**cond, "y": y}, uncond

    def latent_shape(self, r: VideoRequest, batch: int = 1) -> tuple[int, ...]:
        """The sampled latents: the DiT's output channels (its input adds ``y``'s)."""
        b, _, t, h, w = super().latent_shape(r, batch)
        return (b, self.dit.config.out_channels, t, h, w)
