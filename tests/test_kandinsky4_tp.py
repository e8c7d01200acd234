"""Tensor-parallel Kandinsky 4 DiT: two gloo processes on the CPU (torch.multiprocessing)
give the single-process forward, dense and with local/global attention, batched and packed;
the generation entry (``generate_tensor_parallel``, what ``torchrun -m
cineforge.families.kandinsky4.parallel`` runs) gives the single-process video."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

import cineforge
from cineforge.families.family import save_components
from cineforge.families.kandinsky4.dit import KANDINSKY4_DIT_TINY, Kandinsky4DiT
from cineforge.families.kandinsky4.parallel import generate_tensor_parallel, parallelize_kandinsky4
from cineforge.families.registry import get_preset
from cineforge.io.video import read_image
from oracles import perturb

ATTENTIONS = ("sdpa", "local_global")
TINY = "kandinsky4-t2v-tiny"
PROMPT = "a red fox runs through the snow"


def _model(attention: str) -> Kandinsky4DiT:
    torch.manual_seed(0)
    model = Kandinsky4DiT(dataclasses.replace(KANDINSKY4_DIT_TINY, attention=attention))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def _outputs(model: Kandinsky4DiT) -> list[torch.Tensor]:
    """A batch of two clips, and a pack of two items of different shapes."""
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 16, 2, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    items = [torch.randn(16, 1, 4, 8, generator=g), torch.randn(16, 2, 8, 4, generator=g)]
    texts = [torch.randn(3, 32, generator=g), torch.randn(6, 32, generator=g)]
    with torch.no_grad():
        return [model(x, torch.tensor([999.0, 249.0]), text),
                *model.forward_packed(items, torch.tensor([749.0, 499.0]), texts)]


def _rank(rank: int, world: int, folder: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank,
                            world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        out = {a: _outputs(parallelize_kandinsky4(_model(a), mesh)) for a in ATTENTIONS}
        if rank == 0:
            torch.save(out, folder / "forward.pt")
        preset = get_preset(TINY)
        r = preset.request(PROMPT, seed=4, width=32, height=32)
        generate_tensor_parallel(preset, folder / "weights", r, folder / "tp.png",
                                 device=torch.device("cpu"), dtype=torch.float32)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_the_single_process_forward_and_video(tmp_path):
    preset = get_preset(TINY)
    torch.manual_seed(0)
    dit = perturb(preset.family.build("dit", preset.dit), seed=5, scale=0.2)
    vae = perturb(preset.family.build("vae", preset.vae), seed=6, scale=0.02)
    save_components(tmp_path / "weights", dit=dit, vae=vae)
    mp.spawn(_rank, args=(2, tmp_path), nprocs=2)
    got = torch.load(tmp_path / "forward.pt")
    for attention in ATTENTIONS:
        want = _outputs(_model(attention))
        for a, b in zip(got[attention], want, strict=True):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5
        assert want[0].abs().max() > 1
    video = cineforge.load_pipeline(TINY, weights=tmp_path / "weights")(PROMPT, seed=4,
                                                                        width=32, height=32)
    frames = np.stack([read_image(tmp_path / f"tp_{i:04d}.png") for i in range(9)])
    assert np.abs(frames.astype(int) - video.numpy().astype(int)).max() <= 1
    assert frames.std() > 1
