"""Find a preset's weights folder in the Hugging Face hub cache; download it only if absent.

``resolve_repo`` takes the hub repositories that each hold a complete weights folder, in
order of preference, and

1. looks each one up in the local hub cache (``snapshot_download(..., local_files_only=True)``,
   no network); the first one cached wins and its snapshot folder is returned;
2. if none is cached and the hub is offline (``HF_HUB_OFFLINE`` set to 1/ON/YES/TRUE), raises
   a one-line ``CineforgeError`` naming the first repository and the command that fetches it;
3. otherwise downloads the first repository and returns its folder; a failed download is a
   one-line ``CineforgeError`` as well.

huggingface_hub is imported inside the function, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cineforge.errors import CineforgeError

_TRUE = {"1", "ON", "YES", "TRUE"}  # the values huggingface_hub reads as "on"


def resolve_repo(
    repos: Sequence[str],
    *,
    what: str,
    cache_dir: str | Path | None = None,
    download: Callable[[str], Path] | None = None,
) -> Path:
    """The weights folder of the first of ``repos`` in the hub cache, else of ``repos[0]``
    downloaded (with ``download(repo_id)`` if given, else ``snapshot_download``).

    ``what`` names the weights in error messages, e.g. ``"wan2.1-t2v-1.3b"``.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not repos:
        raise ValueError("resolve_repo needs at least one repository id")
    for repo in repos:
        try:
            return Path(snapshot_download(repo, local_files_only=True, cache_dir=cache_dir))
        except LocalEntryNotFoundError:  # not in the cache, or only part of it
            continue

    first = repos[0]
    if _hub_offline():
        raise CineforgeError(
            f"{what}: weights not found in the Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1); fetch them with `hf download {first}` on a machine with "
            "access, or pass {weights}=DIR",
            fields=("weights",)
        )
    fetch = download or (lambda repo_id: snapshot_download(repo_id, cache_dir=cache_dir))
    try:
        return Path(fetch(first))
    except _download_errors() as e:
        cause = " ".join(f"{type(e).__name__}: {e}".split())  # hub messages span lines
        raise CineforgeError(
            f"{what}: cannot download {first} from the Hugging Face hub ({cause}); fetch it "
            f"with `hf download {first} --local-dir DIR` and pass {{weights}}=DIR",
            fields=("weights",)
        ) from e


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) read now, with huggingface_hub's rules.

    huggingface_hub reads it once, at import, into ``constants.HF_HUB_OFFLINE``.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in _TRUE


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises.

    ``OSError`` covers huggingface_hub's own errors: repository not found, gated, HTTP
    errors, not cached, offline (all subclass it). The HTTP client's base error (httpx's in
    huggingface_hub 1.x, httpx2's in 2.x; ``HfHubHTTPError`` derives from it) covers the
    dropped connections and proxy failures that huggingface_hub lets through unwrapped.
    """
    from huggingface_hub.errors import HfHubHTTPError

    client_errors = [base for base in HfHubHTTPError.__bases__ if base is not OSError]
    return (OSError, *client_errors)
