"""CogVideoX diffusion transformer (THUDM/CogVideo; diffusers' ``CogVideoXTransformer3DModel``).

    latent x (B, C, T, H, W) --(pt, p, p) patches, Linear--> video tokens (B, N, D)
    text (B, L, text_dim)    --Linear--------------------> text tokens (B, L, D)
    timestep (B,) in [0, 1000) --sinusoid(D) -> Linear, SiLU, Linear--> e (B, time_dim)
    [text; video] --blocks x num_layers--> video --LN, adaLN(e), Linear--> v (B, C, T, H, W)

One sequence of text and video tokens runs through every block ("expert" adaLN: each stream
has its own modulation; norms, attention and FFN weights are shared). With
``(s, c, g)`` for video and ``(s', c', g')`` for text from ``Linear(SiLU(e))``:

    x, y = LN(x) (1 + c) + s, LN(y) (1 + c') + s'          (video x, text y)
    [y_a; x_a] = Attn([y; x])    x += g x_a,  y += g' y_a
    the same again with the FFN's modulation and FFN([y; x]) (Linear, GELU-tanh, Linear)

Attention is joint over the whole sequence, q and k LayerNorm-ed per head (eps 1e-6), no
mask; text is not masked either (the release attends to the T5 padding states).

Positions (video tokens only; text has none):

- ``"sincos"`` (CogVideoX-2B): a fixed 3D sine table added after the patch embedding: D/4
  channels of the frame index, then 3D/8 of the column and 3D/8 of the row index, each
  ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-2i/d)``; spatial indices are divided by
  ``spatial_interpolation_scale`` (1.875), frames by ``temporal_interpolation_scale`` (1).
- ``"rope"`` (5B, 1.5): 3D RoPE on the video q and k, head split (t, h, w) = (D/4, 3D/8, 3D/8)
  per head, theta 10000, rotating adjacent pairs. CogVideoX 1.0 fits the token grid into the
  training grid (``sample_size``: 60 x 90 latents = 30 x 45 tokens) by resize-and-centre-crop
  and stretches the row/column positions over it (``linspace(top, bottom (n-1)/n, n)``);
  CogVideoX 1.5 (temporal patches, ``patch_size[0] > 1``) uses integer positions, at most the
  training grid (150 x 150 tokens).
- ``learned_positions`` (CogVideoX-5B-I2V): a learned table over [text; video] added after
  the embeddings; it fixes the grid to ``sample_size``.

The time sinusoid is ``[cos, sin]`` of ``timestep * 10000^(-i/(D/2))`` in float32 (the
release's and diffusers' arithmetic); timesteps are the DDPM's (0 .. 999), not flow times.
Patch features are ordered (c, pt, ph, pw) on the way in and out; CogVideoX 1.0's Conv2d patch
embedding is this Linear with its kernel flattened (the key maps do that).

Precision: norms and modulation run in fp32 and return the stream's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.models.attention import AttentionFn, get_attention_backend
from cineforge.models.layers import FP32LayerNorm, gated_residual, modulate
from cineforge.models.rope import apply_rope

POSITIONS = ("sincos", "rope")


@dataclass(frozen=True, kw_only=True)
class CogVideoXDiTConfig:
    num_heads: int
    num_layers: int
    head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    text_len: int = 226
    time_dim: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    positions: str = "sincos"
    learned_positions: bool = False
    sample_size: tuple[int, int, int] = (13, 60, 90)  # training latents (T, H, W): 49 x 480 x 720
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    rope_theta: float = 10000.0
    eps: float = 1e-5
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_layers", "head_dim", "in_channels", "out_channels",
                     "text_dim", "text_len", "time_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CogVideoXDiTConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        pt, ph, pw = self.patch_size
        if min(self.patch_size) <= 0 or ph != pw:
            raise ValueError(f"patch_size must be (pt, p, p) with positive ints, got "
                             f"{self.patch_size}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.head_dim % 16:
            raise ValueError(f"3D RoPE splits a head 4:6:6 in pairs: head_dim must be a "
                             f"multiple of 16, got {self.head_dim}")
        if self.positions == "sincos" and self.dim % 16:
            raise ValueError(f"the 3D sine table needs a width divisible by 16, got {self.dim}")
        if self.learned_positions and (self.positions != "rope" or pt != 1):
            raise ValueError("learned positions exist with RoPE and frame patches of 1 only "
                             "(CogVideoX-5B-I2V)")
        if any(s % p for s, p in zip(self.sample_size[1:], self.patch_size[1:], strict=True)):
            raise ValueError(f"sample_size {self.sample_size} is not in whole patches")

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def ffn_dim(self) -> int:
        return 4 * self.dim

    @property
    def temporal_patches(self) -> bool:
        """CogVideoX 1.5: patches span frames, RoPE positions are integer indices."""
        return self.patch_size[0] > 1

    @property
    def base_grid(self) -> tuple[int, int]:
        """The training videos' (rows, columns) of tokens: RoPE's reference grid."""
        p = self.patch_size[1]
        return self.sample_size[1] // p, self.sample_size[2] // p

    @property
    def max_token_grid(self) -> tuple[int | None, int, int] | None:
        """The largest (frames, rows, columns) token grid the model takes (frames None: any
        number); None: any grid. Learned positions take exactly this grid."""
        if self.learned_positions:
            return (self.sample_size[0], *self.base_grid)
        if self.positions == "rope" and self.temporal_patches:
            return (None, *self.base_grid)
        return None


# Release sizes (THUDM/CogVideoX-2b, -5b, CogVideoX1.5-5B transformer/config.json, as
# diffusers' scripts/convert_cogvideox_to_diffusers.py builds them).
COGVIDEOX_2B = CogVideoXDiTConfig(num_heads=30, num_layers=30)
COGVIDEOX_5B = CogVideoXDiTConfig(num_heads=48, num_layers=42, positions="rope")
COGVIDEOX1_5_5B = CogVideoXDiTConfig(num_heads=48, num_layers=42, positions="rope",
                                     patch_size=(2, 2, 2), sample_size=(21, 300, 300))
# CogVideoX-5B-I2V: 5B with the image latents as 16 more input channels and learned
# positions over [226 text; 13 x 30 x 45 video] tokens.
COGVIDEOX_5B_I2V = CogVideoXDiTConfig(num_heads=48, num_layers=42, positions="rope",
                                      in_channels=32, learned_positions=True)
# Tiny: 2 heads x 16, 2 layers (tests, CI); rope variants by dataclasses.replace.
COGVIDEOX_DIT_TINY = CogVideoXDiTConfig(
    num_heads=2, num_layers=2, head_dim=16, text_dim=32, text_len=16, time_dim=24,
    sample_size=(3, 8, 12),
)


def time_sinusoid(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t w_i), sin(t w_i)]``, ``w_i = 10000^(-i / (dim/2))``, float32 ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32,
                                                        device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _sines(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(p w_i), cos(p w_i)]``, ``w_i = 10000^(-i / (dim/2))``, float64 ``(n, dim)``."""
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64,
                                         device=positions.device) / (dim / 2))
    angles = torch.outer(positions.double(), freqs)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_table(config: CogVideoXDiTConfig, grid: tuple[int, int, int],
                 device: torch.device | None = None) -> torch.Tensor:
    """CogVideoX-2B's fixed positions of a (T, H, W) token grid, float32 ``(T*H*W, D)``."""
    t, h, w = grid
    d, s = config.dim, config.spatial_interpolation_scale
    frames = _sines(torch.arange(t, dtype=torch.float32, device=device)
                    / config.temporal_interpolation_scale, d // 4)
    cols = _sines(torch.arange(w, dtype=torch.float32, device=device) / s, 3 * d // 8)
    rows = _sines(torch.arange(h, dtype=torch.float32, device=device) / s, 3 * d // 8)
    table = torch.cat([
        frames[:, None, None].expand(t, h, w, -1),
        cols[None, None, :].expand(t, h, w, -1),
        rows[None, :, None].expand(t, h, w, -1),
    ], dim=-1)
    return table.reshape(t * h * w, d).float()


def _crop_positions(n: int, start: int, stop: int) -> torch.Tensor:
    return torch.linspace(start, stop * (n - 1) / n, n, dtype=torch.float32)


def rope_positions(config: CogVideoXDiTConfig, grid: tuple[int, int, int]
                   ) -> tuple[torch.Tensor, ...]:
    """(frame, row, column) positions of a token grid for RoPE (float32, one vector each)."""
    t, h, w = grid
    if config.temporal_patches:  # CogVideoX 1.5: indices
        return tuple(torch.arange(n, dtype=torch.float32) for n in grid)
    th, tw = config.base_grid  # CogVideoX 1.0: resize to the base grid, centre crop
    if h / w > th / tw:
        rh, rw = th, int(round(th / h * w))
    else:
        rh, rw = int(round(tw / w * h)), tw
    top, left = int(round((th - rh) / 2.0)), int(round((tw - rw) / 2.0))
    return (_crop_positions(t, 0, t), _crop_positions(h, top, top + rh),
            _crop_positions(w, left, left + rw))


def rope_cis(config: CogVideoXDiTConfig, grid: tuple[int, int, int],
             device: torch.device | None = None) -> torch.Tensor:
    """Unit complex rotations of the video tokens, complex64 ``(T*H*W, head_dim / 2)``:
    per axis ``pos * theta^(-2i/d)`` (angles in float64), axes split (D/4, 3D/8, 3D/8)."""
    hd = config.head_dim
    dims = (hd // 4, hd // 8 * 3, hd // 8 * 3)
    t, h, w = grid
    parts = []
    for pos, d in zip(rope_positions(config, grid), dims, strict=True):
        inv = config.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        parts.append(torch.outer(pos.double(), inv))
    at, ah, aw = parts
    angles = torch.cat([at[:, None, None].expand(t, h, w, -1),
                        ah[None, :, None].expand(t, h, w, -1),
                        aw[None, None, :].expand(t, h, w, -1)], dim=-1).reshape(t * h * w, -1)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


class CogVideoXAttention(nn.Module):
    """Joint attention over [text; video]: q/k LayerNorm per head, RoPE on video q/k."""

    def __init__(self, dim: int, num_heads: int, attention: AttentionFn):
        super().__init__()
        self.num_heads, self.attention = num_heads, attention
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.norm_q = FP32LayerNorm(head_dim, eps=1e-6)
        self.norm_k = FP32LayerNorm(head_dim, eps=1e-6)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text_len: int, cis: torch.Tensor | None) -> torch.Tensor:
        """x: B, L, D with the text first; cis: the video tokens' rotations or None."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x).unflatten(-1, heads))  # B, L, H, hd
        k = self.norm_k(self.k(x).unflatten(-1, heads))
        v = self.v(x).unflatten(-1, heads)
        if cis is not None:
            q = torch.cat([q[:, :text_len], apply_rope(q[:, text_len:], cis)], dim=1)
            k = torch.cat([k[:, :text_len], apply_rope(k[:, text_len:], cis)], dim=1)
        out = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=None)
        return self.o(out.transpose(1, 2).flatten(2))


class CogVideoXBlock(nn.Module):
    def __init__(self, config: CogVideoXDiTConfig, attention: AttentionFn):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.attn_adaln = nn.Linear(config.time_dim, 6 * dim)
        self.norm1 = FP32LayerNorm(dim, eps)
        self.attn = CogVideoXAttention(dim, config.num_heads, attention)
        self.ffn_adaln = nn.Linear(config.time_dim, 6 * dim)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.ffn_dim, dim))

    @staticmethod
    def _modulated(norm: nn.Module, x: torch.Tensor, y: torch.Tensor, mod: torch.Tensor):
        """Both streams normed and modulated, joined [text; video]; the two gates."""
        shift, scale, gate, t_shift, t_scale, t_gate = mod[:, None].chunk(6, dim=-1)
        joined = torch.cat([modulate(norm(y), t_shift, t_scale),
                            modulate(norm(x), shift, scale)], dim=1)
        return joined, gate, t_gate

    def forward(self, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor,
                cis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: video B, N, D; y: text B, L, D; e: SiLU(time embedding) B, time_dim (fp32)."""
        n = y.shape[1]
        h, gate, t_gate = self._modulated(self.norm1, x, y, self.attn_adaln(e).float())
        out = self.attn(h, n, cis)
        x, y = gated_residual(x, out[:, n:], gate), gated_residual(y, out[:, :n], t_gate)
        h, gate, t_gate = self._modulated(self.norm2, x, y, self.ffn_adaln(e).float())
        out = self.ffn(h)
        return gated_residual(x, out[:, n:], gate), gated_residual(y, out[:, :n], t_gate)


class CogVideoXHead(nn.Module):
    """LN, then adaLN (shift, scale) from the time embedding, then the patch projection."""

    def __init__(self, config: CogVideoXDiTConfig):
        super().__init__()
        dim = config.dim
        self.norm_final = FP32LayerNorm(dim, config.eps)
        self.adaln = nn.Linear(config.time_dim, 2 * dim)
        self.norm = FP32LayerNorm(dim, config.eps)
        self.proj = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaln(e).float()[:, None].chunk(2, dim=-1)
        return self.proj(modulate(self.norm(self.norm_final(x)), shift, scale))


class CogVideoXDiT(nn.Module):
    """``forward(x, timestep, text) -> v`` (v-prediction at DDPM ``timestep``)."""

    offload_blocks = "blocks"

    def __init__(self, config: CogVideoXDiTConfig):
        super().__init__()
        self.config = c = config
        attention = get_attention_backend(c.attention)
        self.patch_embedding = nn.Linear(c.in_channels * math.prod(c.patch_size), c.dim)
        self.text_embedding = nn.Linear(c.text_dim, c.dim)
        if c.learned_positions:
            t, h, w = c.max_token_grid
            self.pos_embedding = nn.Parameter(torch.zeros(1, c.text_len + t * h * w, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.dim, c.time_dim), nn.SiLU(),
                                            nn.Linear(c.time_dim, c.time_dim))
        self.blocks = nn.ModuleList(CogVideoXBlock(c, attention) for _ in range(c.num_layers))
        self.head = CogVideoXHead(c)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float,
                text: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: B, C, T, H, W latents; timestep: (B,) or scalar in [0, 1000); text: B, L,
        text_dim; ``y``: image-to-video conditioning (B, in_channels - C, T, H, W: the image
        latents, then zero frames), concatenated to x along channels.
        Returns v, B, C_out, T, H, W, in x's dtype."""
        c = self.config
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        grid = self._check_inputs(x, text)
        dtype = self.patch_embedding.weight.dtype
        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        e = self.time_embedding(time_sinusoid(timestep, c.dim).to(dtype))
        e = nn.functional.silu(e)  # every use of e (block and head adaLN) starts with SiLU

        video = self.patch_embedding(self._patchify(x.to(dtype)))
        y = self.text_embedding(text.to(dtype))
        cis = None
        if c.positions == "sincos":
            video = video + sincos_table(c, grid, x.device).to(dtype)
        else:
            cis = rope_cis(c, grid, x.device)
        if c.learned_positions:
            joined = torch.cat([y, video], dim=1) + self.pos_embedding.to(dtype)
            y, video = joined[:, : y.shape[1]], joined[:, y.shape[1]:]

        for block in self.blocks:
            video, y = block(video, y, e, cis)
        return self._unpatchify(self.head(video, e), grid).to(x.dtype)

    def _check_inputs(self, x: torch.Tensor, text: torch.Tensor) -> tuple[int, int, int]:
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise CineforgeError(f"latents must be B, {c.in_channels}, T, H, W; got "
                                 f"{tuple(x.shape)}")
        grid = tuple(n // p for n, p in zip(x.shape[2:], c.patch_size, strict=True))
        if any(n % p for n, p in zip(x.shape[2:], c.patch_size, strict=True)):
            raise CineforgeError(f"latents {tuple(x.shape[2:])} (T, H, W) are not whole "
                                 f"patches of {c.patch_size}; pad the frames or change the size")
        limit = c.max_token_grid
        if limit is not None and (
                any(m is not None and n > m for n, m in zip(grid, limit, strict=True))
                or (c.learned_positions and grid != limit)):
            raise CineforgeError(f"a token grid of {grid} (frames, rows, columns) is beyond "
                                 f"this model's positions ({limit})")
        if text.dim() != 3 or text.shape[0] != x.shape[0] or text.shape[2] != c.text_dim:
            raise CineforgeError(f"text states must be {x.shape[0]}, L, {c.text_dim}; got "
                                 f"{tuple(text.shape)}")
        if c.learned_positions and text.shape[1] != c.text_len:
            raise CineforgeError(f"learned positions need {c.text_len} text tokens, got "
                                 f"{text.shape[1]}")
        return grid

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """B, C, T, H, W -> B, N, C*pt*p*p with features in (c, pt, ph, pw) order."""
        b, ch, t, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, ch, t // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4).flatten(1, 3)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = grid
        pt, ph, pw = self.config.patch_size
        x = x.reshape(x.shape[0], t, h, w, -1, pt, ph, pw)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(
            x.shape[0], -1, t * pt, h * ph, w * pw)


def cogvideox_dit_flops(config: CogVideoXDiTConfig, latent_shape: tuple[int, ...],
                        text_len: int) -> float:
    """Forward FLOPs (2 per multiply-add, matmuls and attention only) for latents
    ``latent_shape = (B, C, T, H, W)`` and ``text_len`` text tokens."""
    b, _, t, h, w = latent_shape
    pt, ph, pw = config.patch_size
    n = (t // pt) * (h // ph) * (w // pw)
    d, m = config.dim, text_len
    s = n + m
    patch = n * config.in_channels * pt * ph * pw * d
    text = m * config.text_dim * d
    time = config.dim * config.time_dim + config.time_dim**2
    per_block = 4 * s * d * d + 2 * s * s * d + 2 * s * d * config.ffn_dim \
        + 12 * config.time_dim * d
    head = n * d * config.out_channels * pt * ph * pw + 2 * config.time_dim * d
    return 2.0 * b * (patch + text + time + config.num_layers * per_block + head)
