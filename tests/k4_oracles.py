"""A reference of the Kandinsky 4.0 release's DiT, written for the tests from its published
description (module names, data layout, equations), in the release's own layout:

- no batch dim: latents ``(sum of frames, H, W, C)`` channel last, text ``(sum of tokens,
  text_dim)``, items delimited by ``cu_seqlens`` (frames for video, tokens for text);
- RoPE as a 2 x 2 rotation matrix per adjacent pair, from persistent ``args_{i}`` tables of
  128 positions, divided by ``scale_factor``;
- modulation rows repeated per frame (video) and per token (text);
- local / global groups cut by reshapes of each item's ``(frames, H, W)`` token grid,
  ``num_groups`` per axis, text joined into each group and its output read from group 0;
- output patches ``(C, pt, ph, pw)`` written back channel last.

Its module tree carries the official key names, so the official checkpoint's state dict
loads into it with ``strict=True``. Attention is a loop of dense SDPA calls, one per item
and group: slow and plain, which is the point. Also here: our DiT's tensors under the
official names (``official_names``) and a writer of release folders
(``write_official_folder``, also the registry test's writer of the official layout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cineforge.families.cogvideox.vae_keys import COGVIDEOX_VAE_FROM_DIFFUSERS
from cineforge.families.kandinsky4.dit import Kandinsky4DiTConfig
from cineforge.families.kandinsky4.dit_keys import K4_DIT_FROM_OFFICIAL
from cogvideox_oracles import diffusers_vae, upstream_state


def _freqs(n: int) -> torch.Tensor:
    return torch.exp(-math.log(10000.0) * torch.arange(n, dtype=torch.float32) / n)


class _Lin(nn.Module):
    """A module holding one Linear under the name the release gives it."""

    def __init__(self, name: str, fan_in: int, fan_out: int):
        super().__init__()
        setattr(self, name, nn.Linear(fan_in, fan_out))


class RefRoPE(nn.Module):
    def __init__(self, axes: tuple[int, int, int], max_pos: int = 128):
        super().__init__()
        for i, d in enumerate(axes):
            self.register_buffer(f"args_{i}", torch.outer(torch.arange(max_pos).float(),
                                                          _freqs(d // 2)))

    def forward(self, frames: list[int], h: int, w: int, scale) -> torch.Tensor:
        """(sum frames, h, w, pairs, 2, 2) rotation matrices."""
        t_args = torch.cat([self.args_0[:n] for n in frames]) / scale[0]
        h_args, w_args = self.args_1[:h] / scale[1], self.args_2[:w] / scale[2]
        d = t_args.shape[0]
        args = torch.cat([t_args[:, None, None].expand(d, h, w, -1),
                          h_args[None, :, None].expand(d, h, w, -1),
                          w_args[None, None, :].expand(d, h, w, -1)], dim=-1)
        cos, sin = args.cos(), args.sin()
        return torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2))


def _rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (..., heads, D) by rope (..., 1, D/2, 2, 2) on adjacent pairs."""
    pairs = x.unflatten(-1, (-1, 2))  # ..., heads, D/2, 2
    return (rope @ pairs[..., None]).squeeze(-1).flatten(-2)


def _groups(x: torch.Tensor, kind: str, num_groups) -> torch.Tensor:
    """(D, H, W, ...) of one item -> (G, tokens per group, ...)."""
    d, h, w = x.shape[:3]
    gt, gh, gw = num_groups
    rest = x.shape[3:]
    if kind == "local":
        x = x.reshape(gt, d // gt, gh, h // gh, gw, w // gw, *rest)
        return x.permute(0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest))).flatten(0, 2).flatten(1, 3)
    x = x.reshape(d // gt, gt, h // gh, gh, w // gw, gw, *rest)
    return x.permute(1, 3, 5, 0, 2, 4, *range(6, 6 + len(rest))).flatten(0, 2).flatten(1, 3)


def _ungroup(x: torch.Tensor, kind: str, num_groups, shape) -> torch.Tensor:
    """Inverse of ``_groups``."""
    d, h, w = shape
    gt, gh, gw = num_groups
    rest = x.shape[2:]
    n = len(rest)
    if kind == "local":
        x = x.reshape(gt, gh, gw, d // gt, h // gh, w // gw, *rest)
        x = x.permute(0, 3, 1, 4, 2, 5, *range(6, 6 + n))
    else:
        x = x.reshape(gt, gh, gw, d // gt, h // gh, w // gw, *rest)
        x = x.permute(3, 0, 4, 1, 5, 2, *range(6, 6 + n))
    return x.reshape(d, h, w, *rest)


class RefAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_query_key_value = nn.Linear(dim, 3 * dim)
        self.query_norm = nn.LayerNorm(head_dim)
        self.key_norm = nn.LayerNorm(head_dim)
        self.output_layer = nn.Linear(dim, dim)

    def _qkv(self, x):
        q, k, v = self.to_query_key_value(x).chunk(3, dim=-1)
        heads = (-1, self.head_dim)
        return (self.query_norm(q.unflatten(-1, heads)), self.key_norm(k.unflatten(-1, heads)),
                v.unflatten(-1, heads))

    def forward(self, visual, text, rope, frames, tokens, num_groups, kind):
        vq, vk, vv = self._qkv(visual)
        vq, vk = _rotate(vq, rope), _rotate(vk, rope)
        tq, tk, tv = self._qkv(text)
        v_out, t_out = [], []
        for (v0, v1), (t0, t1) in zip(_spans(frames), _spans(tokens), strict=True):
            item = [_groups(z[v0:v1], kind, num_groups) for z in (vq, vk, vv)]  # G, n, heads, D
            outs = []
            for g in range(item[0].shape[0]):
                q, k, v = (torch.cat([z[g], y[t0:t1]]).transpose(0, 1)
                           for z, y in zip(item, (tq, tk, tv), strict=True))
                outs.append(F.scaled_dot_product_attention(q, k, v).transpose(0, 1))
            n = item[0].shape[1]
            grouped = torch.stack([o[:n] for o in outs])
            v_out.append(_ungroup(grouped, kind, num_groups, visual[v0:v1].shape[:3]))
            t_out.append(outs[0][n:])
        return (self.output_layer(torch.cat(v_out).flatten(-2)),
                self.output_layer(torch.cat(t_out).flatten(-2)))


def _spans(lengths: list[int]) -> list[tuple[int, int]]:
    ends = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return list(zip(ends[:-1], ends[1:], strict=True))


class RefBlock(nn.Module):
    def __init__(self, c: Kandinsky4DiTConfig):
        super().__init__()
        d = c.model_dim
        self.visual_modulation = _Lin("out_layer", c.time_dim, 6 * d)
        self.text_modulation = _Lin("out_layer", c.time_dim, 6 * d)
        self.self_attention_norm = nn.LayerNorm(d)
        self.self_attention = RefAttention(d, c.head_dim)
        self.feed_forward_norm = nn.LayerNorm(d)
        self.feed_forward = nn.Module()
        self.feed_forward.in_layer = nn.Linear(d, c.ff_dim)
        self.feed_forward.out_layer = nn.Linear(c.ff_dim, d)

    def _ff(self, x):
        return self.feed_forward.out_layer(F.gelu(self.feed_forward.in_layer(x)))

    def forward(self, visual, text, e, rope, frames, tokens, num_groups, kind):
        vm = self.visual_modulation.out_layer(F.silu(e)).repeat_interleave(
            torch.tensor(frames), dim=0)[:, None, None].chunk(6, dim=-1)
        tm = self.text_modulation.out_layer(F.silu(e)).repeat_interleave(
            torch.tensor(tokens), dim=0).chunk(6, dim=-1)
        a_v, a_t = self.self_attention(
            self.self_attention_norm(visual) * (1 + vm[1]) + vm[0],
            self.self_attention_norm(text) * (1 + tm[1]) + tm[0], rope, frames, tokens,
            num_groups, kind)
        visual, text = visual + vm[2] * a_v, text + tm[2] * a_t
        visual = visual + vm[5] * self._ff(self.feed_forward_norm(visual) * (1 + vm[4]) + vm[3])
        text = text + tm[5] * self._ff(self.feed_forward_norm(text) * (1 + tm[4]) + tm[3])
        return visual, text


class RefKandinsky4(nn.Module):
    """The release's ``DiffusionTransformer3D`` (see the module docstring)."""

    def __init__(self, c: Kandinsky4DiTConfig):
        super().__init__()
        self.c = c
        self.time_embeddings = nn.Module()
        self.time_embeddings.in_layer = nn.Linear(c.model_dim, c.time_dim)
        self.time_embeddings.out_layer = nn.Linear(c.time_dim, c.time_dim)
        self.text_embeddings = _Lin("in_layer", c.text_dim, c.model_dim)
        self.visual_embeddings = _Lin("in_layer", c.in_channels * math.prod(c.patch_size),
                                      c.model_dim)
        self.rope_embeddings = RefRoPE(c.axes_dims, c.rope_max_pos)
        self.transformer_blocks = nn.ModuleList(
            nn.ModuleList([RefBlock(c), RefBlock(c)]) for _ in range(c.num_blocks))
        self.out_layer = nn.Module()
        self.out_layer.norm = nn.LayerNorm(c.model_dim)
        self.out_layer.out_layer = nn.Linear(c.model_dim,
                                             c.out_channels * math.prod(c.patch_size))
        self.out_layer.modulation_out = nn.Linear(c.time_dim, 2 * c.model_dim)

    def forward(self, x, text, time, frames: list[int], tokens: list[int],
                num_groups=(1, 1, 1), scale_factor=(1.0, 1.0, 1.0)):
        """x (sum frames, H, W, C); text (sum tokens, text_dim); time (items,)."""
        c, (pt, ph, pw) = self.c, self.c.patch_size
        args = torch.outer(time.float(), _freqs(c.model_dim // 2))
        e = torch.cat([args.cos(), args.sin()], dim=-1)
        e = self.time_embeddings.out_layer(F.silu(self.time_embeddings.in_layer(e)))
        text = self.text_embeddings.in_layer(text)
        d, h, w, ch = x.shape
        patches = x.reshape(d // pt, pt, h // ph, ph, w // pw, pw, ch)
        visual = self.visual_embeddings.in_layer(
            patches.permute(0, 2, 4, 1, 3, 5, 6).flatten(3))
        frames = [n // pt for n in frames]
        rope = self.rope_embeddings(frames, h // ph, w // pw, scale_factor)[:, :, :, None]
        for local, glob in self.transformer_blocks:
            visual, text = local(visual, text, e, rope, frames, tokens, num_groups, "local")
            visual, text = glob(visual, text, e, rope, frames, tokens, num_groups, "global")
        shift, scale = self.out_layer.modulation_out(F.silu(e)).repeat_interleave(
            torch.tensor(frames), dim=0)[:, None, None].chunk(2, dim=-1)
        out = self.out_layer.out_layer(self.out_layer.norm(visual) * (1 + scale) + shift)
        t, hh, ww = out.shape[:3]
        out = out.reshape(t, hh, ww, ch, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3)
        return out.reshape(t * pt, hh * ph, ww * pw, ch)


def official_state_dict(c: Kandinsky4DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under the official key names (the reference's state dict), scaled so
    that every path of a tiny model contributes."""
    g = torch.Generator().manual_seed(seed)
    ref = RefKandinsky4(c)
    state = {}
    for name, value in ref.state_dict().items():
        if name.startswith("rope_embeddings."):
            state[name] = value
        elif name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * torch.randn(value.shape, generator=g)
        else:
            state[name] = torch.randn(value.shape, generator=g) / math.sqrt(
                value.shape[-1] if value.ndim == 2 else 16)
    return state


def official_names(ours: nn.Module, config: Kandinsky4DiTConfig) -> dict[str, torch.Tensor]:
    """``ours`` (a ``Kandinsky4DiT``) as the release's checkpoint: its tensors under the
    official names (the key map read backwards: names travel through ``convert`` as index
    tensors), plus the release's RoPE buffers, which the map drops."""
    reference = RefKandinsky4(config).state_dict()
    names = list(reference)
    index = K4_DIT_FROM_OFFICIAL.convert({k: torch.full((1,), i) for i, k in enumerate(names)})
    state = ours.state_dict()
    assert index.keys() == state.keys(), set(index) ^ set(state)
    out = {names[int(i)]: state[k].contiguous() for k, i in index.items()}
    return out | {k: v for k, v in reference.items() if k.startswith("rope_embeddings.")}


def write_official_folder(folder, preset, dit: nn.Module, vae: nn.Module, text=None) -> None:
    """A release folder: ``kandinsky4_distil_512.pt`` (torch.save of the official state
    dict) beside CogVideoX-5B's ``vae/`` (diffusers) and, with ``text`` = (T5 model,
    tokenizer), its ``text_encoder/`` and ``tokenizer/``. Also tests/test_registry.py's
    writer of the ``("kandinsky4", "official")`` layout."""
    torch.save(official_names(dit, preset.dit), folder / "kandinsky4_distil_512.pt")
    upstream = diffusers_vae(preset.vae)
    upstream.load_state_dict(upstream_state(vae, upstream, COGVIDEOX_VAE_FROM_DIFFUSERS))
    upstream.save_pretrained(folder / "vae")
    if text is not None:
        text[0].save_pretrained(folder / "text_encoder")
        text[1].save_pretrained(folder / "tokenizer")
