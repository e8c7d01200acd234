"""Tensor-parallel inference of the Kandinsky 4.0 DiT (torch.distributed DTensor), applied
from outside the model, and a ``torchrun`` entry that generates one video with it.

``parallelize_kandinsky4(dit, mesh)`` splits every block's heavy matmuls over the ranks of a
1-D device mesh (``parallelize_module``), as the release's ``parallelize`` does:

- ``self_attention.to_query_key_value``: column-split, so each rank computes the q, k and v
  of ``heads / world`` heads and attends over them alone (heads split across ranks). The fused
  weight's rows ``[q | k | v]`` are first regrouped rank by rank, ``[q_r | k_r | v_r]``, so
  that a contiguous column shard holds whole heads of all three (the release splits the
  fused Linear into three instead);
- ``self_attention.output_layer``: row-split, its partial sums all-reduced;
- ``feed_forward.in_layer`` column-split, ``feed_forward.out_layer`` row-split (all-reduce).

The per-stream modulations, norms, embeddings and the head stay replicated: they are small,
and every rank computes them from the same inputs (the release column-splits the modulations
and gathers them back, the same numbers). Each block then costs two all-reduces per stream.
The model's forward is unchanged: its attention reads the number of heads from the local
tensors. The parallelized model is for inference (its q|k|v rows are regrouped).

Launch (rank 0 encodes the prompt and decodes; every rank holds 1/world of the block weights
and draws the same seeded noise, so their latents agree)::

    torchrun --nproc-per-node 2 -m cineforge.families.kandinsky4.parallel \\
        --weights DIR --prompt "a red fox runs through snow" --out fox.mp4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

from cineforge.errors import CineforgeError
from cineforge.families.family import (
    Components,
    Preset,
    detect_layout,
    load_model,
    weights_folder,
)
from cineforge.families.kandinsky4.dit import Kandinsky4DiT
from cineforge.io.video import write_video
from cineforge.pipelines.common import VideoRequest
from cineforge.weights.offload import Resident

BLOCK_PLAN = {
    "self_attention.to_query_key_value": ColwiseParallel(),
    "self_attention.output_layer": RowwiseParallel(),
    "feed_forward.in_layer": ColwiseParallel(),
    "feed_forward.out_layer": RowwiseParallel(),
}


@torch.no_grad()
def _regroup_qkv(layer: nn.Linear, world: int) -> None:
    """Rows ``[q | k | v]`` -> ``[q_0 | k_0 | v_0 | q_1 | ...]``, rank r's heads together."""
    for p in (layer.weight, layer.bias):
        p.copy_(p.unflatten(0, (3, world, -1)).transpose(0, 1).reshape(p.shape))


def parallelize_kandinsky4(dit: Kandinsky4DiT, mesh: DeviceMesh) -> Kandinsky4DiT:
    """Shard ``dit``'s blocks over the 1-D ``mesh`` in place (see the module); returns it."""
    world = mesh.size()
    if mesh.ndim != 1 or dit.config.num_heads % world:
        raise CineforgeError(
            f"tensor parallelism splits the {dit.config.num_heads} heads evenly over a 1-D "
            f"mesh; {world} ranks do not divide them: use a divisor of {dit.config.num_heads}")
    for pair in dit.blocks:
        for block in (pair.local_block, pair.global_block):
            _regroup_qkv(block.self_attention.to_query_key_value, world)
            parallelize_module(block, mesh, BLOCK_PLAN)
    return dit


def generate_tensor_parallel(
    preset: Preset, weights: str | Path | None, r: VideoRequest, out: Path, *,
    device: torch.device, dtype: torch.dtype,
) -> list[Path]:
    """One video of ``r`` with the DiT split over the initialised process group; rank 0
    writes ``out`` (and returns its paths; the other ranks return [])."""
    rank, world = dist.get_rank(), dist.get_world_size()
    preset.family.check_request(preset, r)
    mesh = init_device_mesh(device.type, (world,))
    folder = weights_folder(preset, weights)
    layout = detect_layout(preset, folder)
    dit = load_model(preset, folder, "dit", dtype=dtype, layout=layout).to(device)
    parallelize_kandinsky4(dit, mesh)
    text_encoder = None
    if rank == 0:
        text_encoder, _ = preset.text.load(preset, folder, layout, dtype)
        vae = load_model(preset, folder, "vae", layout=layout)
    else:  # the latents' shape only: no weights
        with torch.device("meta"):
            vae = preset.family.build("vae", preset.vae)
    pipe = preset.family.make_pipeline(Components(dit, vae, text_encoder),
                                       placement=Resident(device), dtype=dtype)
    shape = (1, preset.max_text_len, preset.text.dim)
    if rank == 0:
        text = pipe.conditions([r.prompt], r)[0]["text"].to(device, torch.float32)
        if tuple(text.shape) != shape:
            raise CineforgeError(f"the text encoder gave {tuple(text.shape)}, expected {shape}")
    else:
        text = torch.empty(shape, device=device)
    dist.broadcast(text, 0)
    latents = pipe.initial_latents(r, 1)
    for step in pipe.sample({"text": text}, None, latents, steps=r.steps,
                            fresh_noise=pipe.fresh_noise(r)):
        latents = step.x
    if rank != 0:
        return []
    return write_video(out, pipe.decode(latents)[0], fps=preset.fps)


def main(argv: list[str] | None = None) -> None:
    from cineforge.families.registry import get_preset

    p = argparse.ArgumentParser(prog="torchrun ... -m cineforge.families.kandinsky4.parallel",
                                description="Kandinsky 4.0 Flash with a tensor-parallel DiT")
    p.add_argument("--preset", default="kandinsky4-t2v-flash")
    p.add_argument("--weights", help="weights folder (default: the Hugging Face cache)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", type=Path, default=Path("kandinsky4.mp4"))
    p.add_argument("--size", help="WIDTHxHEIGHT (default: the preset's)")
    p.add_argument("--frames", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on CUDA, else fp32")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        width, height = map(int, args.size.split("x")) if args.size else (None, None)
        preset = get_preset(args.preset)
        r = preset.request(args.prompt, width=width, height=height, frames=args.frames,
                           seed=args.seed)
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or (
            "bf16" if cuda else "fp32")]
        for path in generate_tensor_parallel(preset, args.weights, r, args.out,
                                             device=device, dtype=dtype):
            print(path)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
