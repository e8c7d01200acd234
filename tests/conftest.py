import pytest
import torch

from cineforge.data.latents import build_latent_cache
from cineforge.families.wan.vae import WanVAE
from cineforge.train.config import load_config
from cineforge.train.data import shapes_world
from cineforge.train.export import save_weights
from cineforge.train.models import build_model, load_vae
from cineforge.weights.files import write_model_config
from train_runs import CONFIGS, TINY, FakeText


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory):
    """An 'exported' tiny VAE (random weights, identity latent statistics)."""
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = build_model(TINY, "vae")
    assert isinstance(vae, WanVAE)
    save_weights(vae, folder / "vae.safetensors")
    write_model_config(vae.config, folder / "vae.json")
    return folder


@pytest.fixture(scope="session")
def cache_dir(vae_dir, tmp_path_factory):
    config = load_config(CONFIGS / "tiny_dit.yaml")
    folder = tmp_path_factory.mktemp("latents")
    build_latent_cache(folder, shapes_world(config.data, "cache"), config.cache.items,
                       encode_video=load_vae(TINY, vae_dir).encode, encode_text=FakeText().encode,
                       meta={"latent_channels": 16, "text_dim": 384, "text_len": 32},
                       shard_size=config.cache.shard_size)
    return folder
