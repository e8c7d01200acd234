"""The demo's DiT: Wan 2.1's transformer plus two conditioning paths a small model needs.

    tokens = patchify(x) + pos_table[frame, row, column]             (learned, per token)
    e      = time_embedding(t) + text_pool_embedding(mean caption)    (then Wan's projection)

- ``pos_table`` gives every token of a (frames, rows, columns) grid its own learned vector.
  RoPE only gives relative positions; the demo model, trained from noise at 9M parameters,
  needs absolute positions to lay out where an object is in frame k given the caption (a
  two-way text x token interaction that it learned in 100 steps with the table, and not in
  900 with a per-axis sum; docs/demo-training.md).
- ``text_pool_embedding`` (Linear-SiLU-Linear) of the mean of the caption's non-padding
  states reaches every token through the blocks' modulation, as the pooled text vector does
  in Kandinsky 5, SD3 and Flux; its output layer starts at zero, so it can be added to a
  trained model without changing its output.

Both enter through ``WanDiT.extra_terms``, Wan's one hook; everything else is Wan's. Like
Wan 2.2 TI2V's DiT (``WanTI2VDiT``) it also takes a clean first latent frame
(``forward(x, t, context, first)``: time 0 on that frame's tokens), which the demo's
image-to-video weights are trained with; without it, it is text-to-video, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.families.wan.dit import WanDiTConfig
from cineforge.families.wan.ti2v_dit import WanTI2VDiT
from cineforge.models.text_encoders import TextStates, mean_pool


@dataclass(frozen=True, kw_only=True)
class DemoDiTConfig(WanDiTConfig):
    position_table: tuple[int, ...] = ()  # token grid (frames, rows, columns); () is off
    position_field: bool = False  # absolute positions from a PositionField, at any grid
    pooled_text: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.position_table and (len(self.position_table) != 3
                                    or min(self.position_table) <= 0):
            raise ValueError("position_table must be () or 3 positive ints (token grid "
                             f"frames, rows, columns), got {self.position_table}")
        if self.position_table and self.position_field:
            raise ValueError("position_table and position_field are two ways to give "
                             "absolute positions; set one of them")

    @property
    def max_token_grid(self) -> tuple[int, int, int] | None:
        return tuple(self.position_table) if self.position_table else None


class DemoDiT(WanTI2VDiT):
    """``WanDiT`` with a learned position table and a pooled caption, and an optional clean
    first frame (see the module)."""

    def __init__(self, config: DemoDiTConfig):
        super().__init__(config)
        c = config
        if c.position_table:
            self.pos_table = nn.Parameter(torch.zeros(*c.position_table, c.dim))
        if c.position_field:
            self.pos_field = PositionField(c.dim)
        if c.pooled_text:
            self.text_pool_embedding = nn.Sequential(
                nn.Linear(c.text_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
            )

    def extra_terms(
        self, grids: list[tuple[int, int, int]], contexts: torch.Tensor | list[torch.Tensor]
    ) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        c = self.config
        token_term: torch.Tensor | float = 0.0
        if c.position_table:
            for g in grids:
                if any(n > m for n, m in zip(g, c.position_table, strict=True)):
                    raise CineforgeError(
                        f"token grid {g} is larger than this model's position table "
                        f"{c.position_table}; generate at most that many latent frames, rows "
                        "and columns (the demo: 17 frames at 64x64)")
            token_term = torch.cat([self.pos_table[: g[0], : g[1], : g[2]].reshape(-1, c.dim)
                                    for g in grids])[None]
        if c.position_field:
            token_term = torch.cat([self.pos_field(g) for g in grids])[None]
        time_term = None
        if c.pooled_text:
            pooled = (pool_text(contexts) if isinstance(contexts, torch.Tensor)
                      else torch.stack([pool_text(ctx[None])[0] for ctx in contexts]))
            dtype = self.patch_embedding.weight.dtype
            with torch.autocast(pooled.device.type, enabled=False):
                time_term = self.text_pool_embedding(pooled.to(dtype)).float()
        return token_term, time_term

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> DemoDiT:
        """Wan's initialisation; the pooled caption's output layer at zero (a no-op at
        first), the position table N(0, 0.3^2) (present from the first step)."""
        super().init_weights(generator)
        if self.config.pooled_text:
            nn.init.zeros_(self.text_pool_embedding[2].weight)
        if self.config.position_table:
            nn.init.normal_(self.pos_table, std=0.3, generator=generator)
        if self.config.position_field:
            self.pos_field.init_weights(generator)
        return self

    def adapt_init_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of an earlier design of this model start this one:

        - a position table becomes a position field fitted to it (``PositionField.fit``), so
          the model starts where the table left it and then runs at any grid;
        - weights of a coarser patch (each axis a multiple of this model's) become this
          patch: the embedding of a fine patch is the coarse embedding of that patch repeated
          over the coarse one (the sum of the coarse kernel's taps over the repeats), and the
          head predicts the mean of the coarse head's outputs over the fine patches a coarse
          one holds. Set ``rope_step`` to the ratio (e.g. 0.5 for patch 2 -> 1) so that the
          rotary angle between two points of the frame stays what the weights learned.

        Other weights pass through unchanged."""
        out = weights
        if (self.config.position_field and "pos_table" in out
                and not any(k.startswith("pos_field.") for k in out)):
            field = PositionField(self.config.dim)
            field.fit(out["pos_table"].float())
            out = {k: v for k, v in out.items() if k != "pos_table"}
            out.update({f"pos_field.{k}": v for k, v in field.state_dict().items()})
        embed = out.get("patch_embedding.weight")
        fine = tuple(self.config.patch_size)
        if embed is not None and tuple(embed.shape[2:]) != fine:
            coarse = tuple(embed.shape[2:])
            if any(big % small for big, small in zip(coarse, fine, strict=True)):
                raise CineforgeError(f"init weights have patch size {coarse}, which is not a "
                                     f"multiple of this model's {fine} on every axis")
            out = {**out, **_refine_patch(out, coarse, fine)}
        return out


def _refine_patch(weights: dict[str, torch.Tensor], coarse: tuple[int, ...],
                  fine: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """``patch_embedding`` and ``head.head`` of patch ``coarse`` converted to patch ``fine``
    (see ``DemoDiT.adapt_init_weights``). A coarse axis of size ``k * p`` is read as ``k``
    repeats of the ``p`` fine offsets (offset = repeat * p + fine offset)."""
    split = [n for big, small in zip(coarse, fine, strict=True) for n in (big // small, small)]
    repeats = (0, 2, 4)  # the repeat axes among the six of `split`
    embed = weights["patch_embedding.weight"]  # dim, C, *coarse
    embed = embed.reshape(*embed.shape[:2], *split).sum(dim=tuple(2 + a for a in repeats))
    head_w, head_b = weights["head.head.weight"], weights["head.head.bias"]  # (*coarse, C), dim
    channels = head_b.numel() // math.prod(coarse)
    head_w = head_w.reshape(*split, channels, -1).mean(dim=repeats)
    head_b = head_b.reshape(*split, channels).mean(dim=repeats)
    return {"patch_embedding.weight": embed,
            "head.head.weight": head_w.reshape(-1, head_w.shape[-1]),
            "head.head.bias": head_b.reshape(-1)}


class PositionField(nn.Module):
    """Absolute position as a function of where a token lies in its grid, so a model can run
    at grids other than the one it trained at. Each axis (latent frame, row, column) of a
    ``T x H x W`` grid gives the token's cell centre as a share of the axis,
    ``p = (i + 1/2) / n`` in (0, 1), expanded as ``sin(pi k p), cos(pi k p)`` for
    ``k = 1..frequencies``; an MLP (two SiLU layers) maps the three axes' features together,
    so it can give every token of the training grid its own vector (a per-axis sum cannot:
    the demo needs a frame x column interaction to place an object moving right). At a larger
    grid the same function is read between the training grid's cell centres: positions are
    shares of the clip and of the frame, not token counts."""

    def __init__(self, dim: int, frequencies: int = 8, hidden: int = 512) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(6 * frequencies, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def features(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """``T H W, 6 frequencies`` Fourier features of the grid's cell centres, fp32."""
        device = self.mlp[0].weight.device
        k = torch.arange(1, self.frequencies + 1, device=device, dtype=torch.float32) * math.pi
        axes = []
        for n in grid:
            angle = ((torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n)[:, None] * k
            axes.append(torch.cat([angle.sin(), angle.cos()], dim=-1))  # n, 2F
        t, h, w = grid
        grid_features = torch.cat([axes[0][:, None, None].expand(t, h, w, -1),
                                   axes[1][None, :, None].expand(t, h, w, -1),
                                   axes[2][None, None, :].expand(t, h, w, -1)], dim=-1)
        return grid_features.reshape(t * h * w, -1)

    def forward(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """``T H W, dim`` position vectors, token order (frame, row, column)."""
        weight = self.mlp[0].weight
        return self.mlp(self.features(tuple(grid)).to(weight.dtype))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> PositionField:
        """Xavier-uniform layers, zero biases; the last layer small (std 0.02) so a fresh
        field starts near no position term."""
        for layer in self.mlp[:-1:2]:
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.mlp[-1].weight, std=0.02, generator=generator)
        nn.init.zeros_(self.mlp[-1].bias)
        return self

    def fit(self, table: torch.Tensor, steps: int = 3000, lr: float = 3e-3) -> float:
        """Fit the field to a position table (``T, H, W, dim``) on the table's grid, from a
        fixed initialisation (deterministic); returns the relative error
        ``||field - table|| / ||table||``."""
        self.init_weights(torch.Generator().manual_seed(0))
        target = table.reshape(-1, table.shape[-1]).float()
        features = self.features(tuple(table.shape[:3]))
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        with torch.enable_grad():
            for _ in range(steps):
                loss = (self.mlp(features) - target).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        with torch.no_grad():
            return float((self.mlp(features) - target).norm() / target.norm())


def pool_text(context: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of ``context`` (B, L, text_dim) that are not all zero (the zero
    padding of ``pad_context``; the DiT gets no text mask), in fp32: B, text_dim."""
    context = context.float()
    return mean_pool(TextStates(context, (context != 0).any(-1)), normalize=False)
