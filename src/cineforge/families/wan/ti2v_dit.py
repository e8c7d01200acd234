"""Wan 2.2 TI2V's DiT: Wan's DiT (``WanDiT``) with one time per token, so that a clean first
frame can condition the video (the release's ``textimage2video``; diffusers'
``expand_timesteps``).

    forward(x, t, context, first=None)

Text-to-video (``first`` None) is ``WanDiT.forward``: every token has the step's time.
Image-to-video gives ``first``, the encoded image (B, C, 1, H, W): it replaces the first
latent frame of ``x``, and that frame's tokens are modulated with time 0 (clean) while the
others have ``t`` (plus, on every token, the time term a subclass adds through
``extra_terms``, as the demo's pooled caption):

    x' = [first, x[:, :, 1:]]        t_token = 0 on frame 0, t elsewhere
    v  = DiT(x', t_token, context)   (the velocity of frame 0 is not used)

The sampler keeps frame 0 equal to ``first`` in what it returns (``TextImageToVideo``).
"""

from __future__ import annotations

import torch

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import WanDiT


class WanTI2VDiT(WanDiT):
    """``WanDiT`` that also takes a clean first latent frame (image-to-video)."""

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B, C, T, H, W latents; t: (B,) or scalar flow time; context: B, L, text_dim;
        ``first``: B, C, 1, H, W clean latents of the first frame (None: text-to-video).

        Returns the velocity, B, C_out, T, H, W, in x's dtype.
        """
        if first is None:
            return super().forward(x, t, context)
        if first.shape != (*x.shape[:2], 1, *x.shape[3:]) or self.config.patch_size[0] != 1:
            raise CineforgeError(f"the first-frame latents {tuple(first.shape)} do not fit "
                                 f"latents {tuple(x.shape)} (one frame, same batch and size)")
        x = torch.cat([first.to(x.dtype), x[:, :, 1:]], dim=2)
        tokens, s = self._enter(x, t, context)
        clean_e, clean_e0 = self._time_embedding(torch.zeros(x.shape[0], device=x.device),
                                                 s.time_term)
        n_first = s.grid[1] * s.grid[2]  # tokens of latent frame 0 come first (raster order)
        n_rest = tokens.shape[1] - n_first

        def per_token(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
            parts = (clean[:, None].expand(-1, n_first, *clean.shape[1:]),
                     noisy[:, None].expand(-1, n_rest, *noisy.shape[1:]))
            return torch.cat(parts, dim=1)  # B, L, ... in raster order

        e, e0 = per_token(clean_e, s.e), s.layout.to_attention(per_token(clean_e0, s.e0))
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, s.context, s.cis, s.layout.mask_of(i))
        tokens = s.layout.to_raster(tokens)
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(tokens, e)
        return self.unpatchify(out, s.grid).to(x.dtype)
