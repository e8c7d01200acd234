"""resolve_repo against a hub cache built here on disk; nothing touches the network."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors.torch import load_file, save_file

from cineforge.errors import CineforgeError
from cineforge.weights.hub import resolve_repo

OFFICIAL = "Wan-AI/Wan2.1-T2V-1.3B"
DIFFUSERS = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def _cache(hub: Path, repo_id: str) -> Path:
    """Put ``repo_id`` in the hub cache layout under ``hub``; return its snapshot folder.

    models--ORG--NAME/refs/main holds the commit hash, models--ORG--NAME/snapshots/<hash>/
    holds the files (the hub links them to blobs/; plain files read the same).
    """
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    storage = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, snapshot / "dit.safetensors")
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return snapshot


def _no_download(repo_id: str) -> Path:
    raise AssertionError(f"tried to download {repo_id}")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_cached_repo_resolves_to_its_snapshot(hub):
    snapshot = _cache(hub, OFFICIAL)
    folder = resolve_repo([OFFICIAL], what="wan", cache_dir=hub, download=_no_download)
    assert folder == snapshot
    torch.testing.assert_close(
        load_file(folder / "dit.safetensors")["w"], torch.arange(6.0).reshape(2, 3)
    )


def test_first_cached_repo_in_order_wins(hub):
    second = _cache(hub, DIFFUSERS)
    repos = (OFFICIAL, DIFFUSERS)
    assert resolve_repo(repos, what="wan", cache_dir=hub, download=_no_download) == second
    first = _cache(hub, OFFICIAL)
    assert resolve_repo(repos, what="wan", cache_dir=hub, download=_no_download) == first


def test_offline_and_not_cached_names_the_fetch_command(hub):
    with pytest.raises(CineforgeError) as err:
        resolve_repo([OFFICIAL, DIFFUSERS], what="wan", cache_dir=hub, download=_no_download)
    message = str(err.value)
    assert message.startswith("wan: ")
    assert f"`hf download {OFFICIAL}`" in message
    assert "HF_HUB_OFFLINE" in message and "weights=DIR" in message
    assert "\n" not in message


def test_online_and_not_cached_downloads_the_first_repo(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _cache(hub, "Other/Repo")  # a cache that holds something else
    calls = []

    def download(repo_id: str) -> Path:
        calls.append(repo_id)
        return tmp_path / "fetched"

    assert (
        resolve_repo([OFFICIAL, DIFFUSERS], what="wan", cache_dir=hub, download=download)
        == tmp_path / "fetched"
    )
    assert calls == [OFFICIAL]


def _client_error(message: str) -> Exception:
    """The HTTP client's own error (httpx2's here), which the hub lets through unwrapped."""
    (client_error,) = (b for b in HfHubHTTPError.__bases__ if b is not OSError)
    return client_error(message)


@pytest.mark.parametrize(
    "error",
    [
        OSError("connection refused"),
        LocalEntryNotFoundError("Got: ConnectError\nAn error happened while trying"),
        _client_error("proxy refused"),
    ],
    ids=["oserror", "hub-multiline", "http-client"],
)
def test_online_download_failure_is_one_line(hub, monkeypatch, error):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def download(repo_id: str) -> Path:
        raise error

    with pytest.raises(CineforgeError) as err:
        resolve_repo([OFFICIAL], what="wan", cache_dir=hub, download=download)
    message = str(err.value)
    assert f"cannot download {OFFICIAL}" in message
    assert f"`hf download {OFFICIAL} --local-dir DIR`" in message
    assert "weights=DIR" in message
    assert "\n" not in message
    assert err.value.__cause__ is error
