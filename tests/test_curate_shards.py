"""Latent shards: exact round trip, bucketing, crash safety, LatentCache-compatible reads."""

import multiprocessing as mp
import os
import signal

import pytest
import torch

from cineforge.data.curate.shards import ShardDataset, ShardWriter, bucket_name, fit_bucket
from cineforge.data.latents import CacheItem
from cineforge.errors import CineforgeError

META = {"vae": "tiny", "latent_channels": 4, "text_dim": 8}


def _items(n, generator):
    shapes = [(4, 5, 8, 8), (4, 3, 8, 12)]  # 64x64 x17 frames and 96x64 x9 frames
    return [(torch.randn(shapes[i % 2], generator=generator),
             torch.randn(3 + i, 8, generator=generator), f"caption {i}") for i in range(n)]


def test_shards_round_trip_exactly_by_bucket(tmp_path):
    items = _items(7, torch.Generator().manual_seed(0))
    written = []
    with ShardWriter(tmp_path, meta=META, shard_size=3, empty_text=torch.ones(2, 8)) as w:
        for i, (z, text, cap) in enumerate(items):
            written += w.add(z, cap, key=100 + i, text=text, attributes={"i": i})
        assert [s.count for s in written] == [3, 3]  # items 0, 2, 4 and 1, 3, 5
        assert written[1].keys == (101, 103, 105)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors"))
    assert files == ["bucket-64x64-f17/shard-w0-00000.safetensors",
                     "bucket-64x64-f17/shard-w0-00001.safetensors",
                     "bucket-96x64-f9/shard-w0-00000.safetensors", "empty.safetensors"]
    data = ShardDataset(tmp_path)
    assert len(data) == 7 and data.complete and data.meta == META
    by_key = {data.key(i): i for i in range(len(data))}
    for i, (z, text, cap) in enumerate(items):
        got = data[by_key[100 + i]]
        assert isinstance(got, CacheItem) and got.caption == cap
        assert torch.equal(got.latent, z.half().float())  # stored fp16, exactly
        assert torch.equal(got.text, text.half().float())
        assert data.shape(by_key[100 + i]) == tuple(z.shape)
        assert data.attributes(by_key[100 + i]) == {"i": i}
    assert torch.equal(data.empty_text(), torch.ones(2, 8))


def test_writer_resumes_numbering_and_checks_meta(tmp_path):
    z = torch.zeros(4, 1, 2, 2)
    ShardWriter(tmp_path, meta=META, shard_size=1).add(z, "a")
    again = ShardWriter(tmp_path, meta=META, shard_size=1).add(z, "b")
    assert again[0].path.name == "shard-w0-00001.safetensors"
    other = ShardWriter(tmp_path, meta=META, shard_size=1, name="w1").add(z, "c")
    assert other[0].path.name == "shard-w1-00000.safetensors"
    assert sorted(ShardDataset(tmp_path).caption(i) for i in range(3)) == ["a", "b", "c"]
    with pytest.raises(CineforgeError, match="other settings"):
        ShardWriter(tmp_path, meta={**META, "vae": "other"})
    with pytest.raises(CineforgeError, match="encode"):
        ShardWriter(tmp_path, meta=META).add_video(torch.zeros(3, 1, 16, 16), "x")


def test_add_video_encodes_and_buckets(tmp_path):
    def encode(video):  # B,3,T,H,W -> B,4,T_lat,H/8,W/8 (a stand-in VAE)
        first = video[:, :, :1]
        rest = video[:, :, 1:].unflatten(2, (-1, 4)).mean(3)
        pooled = torch.nn.functional.avg_pool3d(torch.cat([first, rest], 2), (1, 8, 8))
        return torch.cat([pooled, pooled[:, :1]], 1)

    video = torch.rand(3, 9, 32, 48) * 2 - 1
    with ShardWriter(tmp_path, meta=META, encode=encode) as w:
        w.add_video(video, "clip", key="s1")
    data = ShardDataset(tmp_path)
    assert data.files[0].parent.name == "bucket-48x32-f9" == bucket_name((4, 3, 4, 6))
    assert torch.equal(data[0].latent, encode(video[None])[0].half().float())
    assert data[0].text.shape == (0, 8)
    assert fit_bucket(720, 1280, 50, pixels=64 * 64) == (48, 80, 49)
    assert fit_bucket(64, 64, 17) == (64, 64, 17)


def _crash_mid_write(folder):
    """Child: start writing a shard, die by SIGKILL after half of the file is on disk."""
    def save_file(tensors, tmp, metadata=None):
        from safetensors.torch import save

        blob = save(tensors, metadata=metadata)
        with open(tmp, "wb") as f:
            f.write(blob[: len(blob) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    import safetensors.torch

    safetensors.torch.save_file = save_file
    w = ShardWriter(folder, meta=META, shard_size=2)
    w.add(torch.ones(4, 1, 2, 2), "kept")
    w.add(torch.ones(4, 1, 2, 2), "lost")


def test_killed_write_leaves_no_partial_shard(tmp_path):
    ShardWriter(tmp_path, meta=META, shard_size=1).add(torch.zeros(4, 1, 2, 2), "before")
    child = mp.get_context("fork").Process(target=_crash_mid_write, args=(tmp_path,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (tmp_path / "bucket-16x16-f1").iterdir())
    assert leftovers == ["shard-w0-00000.safetensors", "shard-w0-00001.tmp"]
    data = ShardDataset(tmp_path)
    assert [data.caption(i) for i in range(len(data))] == ["before"]
    ShardWriter(tmp_path, meta=META)  # the next writer of that name removes the stale tmp
    assert not list(tmp_path.rglob("*.tmp"))
