"""Where weights live while a pipeline runs: all on the device, per model, or per block.

A placement is asked to ``use(module)`` around each stage of a pipeline:

- ``Resident(device)``: everything moves to the device once and stays (fast, most memory).
- ``ModelOffload(device)``: one model at a time on the device (text encoder, then DiT, then
  VAE); the others wait in CPU memory. Peak device memory = the largest model.
- ``BlockOffload(device, prefetch=1)``: the model's repeated blocks (named by the model's
  ``offload_blocks`` attribute) stay in (pinned) CPU memory and are copied to the device one
  at a time just before they run, the next ``prefetch`` blocks copied ahead on a side CUDA
  stream so that the copy overlaps compute. Peak device memory = the non-block weights plus
  ``1 + prefetch`` blocks. Everything else of that model is resident while it is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cineforge.errors import CineforgeError


class Resident:
    """Keep every model on ``device``."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    @contextlib.contextmanager
    def use(self, module: nn.Module) -> Iterator[nn.Module]:
        module.to(self.device)
        yield module


class ModelOffload(Resident):
    """Move a model to ``device`` only while it is used; back to CPU afterwards."""

    @contextlib.contextmanager
    def use(self, module: nn.Module) -> Iterator[nn.Module]:
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class BlockOffload(Resident):
    """Stream a model's repeated blocks to ``device`` one at a time, prefetching ahead."""

    def __init__(self, device: torch.device | str, prefetch: int = 1) -> None:
        super().__init__(device)
        if prefetch < 0:
            raise CineforgeError(f"prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch

    @contextlib.contextmanager
    def use(self, module: nn.Module) -> Iterator[nn.Module]:
        blocks = _repeated_blocks(module)
        if blocks is None:  # a model without a block list is offloaded whole
            with ModelOffload(self.device).use(module) as m:
                yield m
            return
        name = module.offload_blocks
        setattr(module, name, nn.ModuleList())  # hide the blocks: the rest goes to the device
        try:
            module.to(self.device)
        finally:
            setattr(module, name, blocks)
        streamer = BlockStreamer(blocks, self.device, self.prefetch)
        try:
            with streamer:
                yield module
        finally:
            module.to("cpu")


class BlockStreamer:
    """Forward hooks that load block i (and prefetch i+1..i+k) and release it after use."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device, prefetch: int) -> None:
        self.blocks = list(blocks)
        self.device = device
        self.prefetch = prefetch
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.events: dict[int, object] = {}
        self.host: list[dict[str, torch.Tensor]] = []
        self.loaded: set[int] = set()
        self.max_resident = 0  # how many blocks were on the device at once (tests, benchmarks)
        self.handles: list = []

    def __enter__(self) -> BlockStreamer:
        for i, block in enumerate(self.blocks):
            host = {k: v.detach().to("cpu") for k, v in _tensors(block).items()}
            if self.cuda:
                host = {k: v.pin_memory() for k, v in host.items()}
            self.host.append(host)
            self.handles.append(block.register_forward_pre_hook(self._before(i)))
            self.handles.append(block.register_forward_hook(self._after(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        for i in list(self.loaded):
            self._release(i)

    def _before(self, i: int):
        def hook(module, args):
            for j in range(i, min(i + 1 + self.prefetch, len(self.blocks))):
                if j not in self.loaded:
                    self._load(j)
            if self.cuda and i in self.events:
                torch.cuda.current_stream(self.device).wait_event(self.events.pop(i))
            self.max_resident = max(self.max_resident, len(self.loaded))

        return hook

    def _after(self, i: int):
        def hook(module, args, output):
            self._release(i)

        return hook

    def _load(self, i: int) -> None:
        ctx = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with ctx:
            _assign(
                self.blocks[i],
                {k: v.to(self.device, non_blocking=True) for k, v in self.host[i].items()},
            )
            if self.cuda:
                event = torch.cuda.Event()
                event.record(self.stream)
                self.events[i] = event
        self.loaded.add(i)

    def _release(self, i: int) -> None:
        if self.cuda:  # the compute stream used tensors made on the copy stream
            for t in _tensors(self.blocks[i]).values():
                t.record_stream(torch.cuda.current_stream(self.device))
        _assign(self.blocks[i], self.host[i])
        self.loaded.discard(i)


def _repeated_blocks(module: nn.Module) -> nn.ModuleList | None:
    name = getattr(module, "offload_blocks", None)
    blocks = getattr(module, name, None) if name else None
    return blocks if isinstance(blocks, nn.ModuleList) else None


def _tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(block.named_parameters())
    out.update({k: b for k, b in block.named_buffers() if b is not None})
    return out


def _assign(block: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for name, value in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = block.get_submodule(owner_name) if owner_name else block
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[leaf] = value


def make_placement(kind: str, device: torch.device | str) -> Resident:
    kinds = {"none": Resident, "model": ModelOffload, "block": BlockOffload}
    if kind not in kinds:
        raise CineforgeError(f"unknown offload mode {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](device)
