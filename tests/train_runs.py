"""What the trainer tests share: a stand-in text encoder, the tiny DiT run config, and
running a config to a given step (the tiny VAE and latent cache fixtures are in conftest)."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from cineforge.models.text_encoders import TextStates
from cineforge.train.config import ModelSpec, load_config
from cineforge.train.loop import Trainer
from cineforge.train.run import build_task


def run_until(config, stop: int | None = None) -> Trainer:
    """Resume ``config.out`` if it has a checkpoint, then step until ``stop`` (or the end)."""
    trainer = Trainer(config, build_task(config), config.out)
    trainer.resume()
    for _ in trainer.steps():
        if trainer.step == stop:
            break
    return trainer


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ModelSpec("wan2.1-t2v-tiny")  # the tiny configs' preset


class FakeText:
    """Stand-in for MiniLM (no model load): a fixed random 384-d vector per word, between a
    start and an end token; zero-padded to 32 tokens."""

    dim, max_length = 384, 32

    def encode(self, prompts: list[str]) -> TextStates:
        states = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            words = ["<s>", *prompt.split(), "</s>"]
            for j, word in enumerate(words):
                g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
                states[i, j] = torch.randn(self.dim, generator=g)
            mask[i, : len(words)] = True
        return TextStates(states, mask)


def dit_run_config(out, vae_dir, cache_dir, *overrides):
    return load_config(CONFIGS / "tiny_dit.yaml", [
        f"out={out}", f"cache.vae={vae_dir}", f"cache.dir={cache_dir}", "cache.build=false",
        *overrides])
