"""``cineforge curate ingest|run|status|export`` on a few tiny files, captions and latent
shards included."""

import json
from pathlib import Path

import numpy as np
import pytest

from cineforge.cli.main import main
from cineforge.data.curate.shards import ShardDataset
from curate_corpus import clip, write

pytest.importorskip("scenedetect")


def test_curate_cli_end_to_end(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write(videos / "three.mp4", np.concatenate([clip(31), clip(32), clip(33)]))
    (videos / "broken.mov").write_bytes(b"garbage" * 50)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"source": str(videos / "three.mp4"), "start": 0, "end": 6,
                                    "caption": "shapes drift over a field"}) + "\n")
    db = str(tmp_path / "c.db")

    assert main(["curate", "ingest", str(videos), "--db", db]) == 0
    assert "added 1, rejected 1" in capsys.readouterr().out
    assert main(["curate", "ingest", str(videos), "--db", db]) == 0  # again: nothing new
    assert "already known 2" in capsys.readouterr().out

    args = ["curate", "run", "--db", db, "--workers", "2", "--captioner", f"manual:{captions}",
            "--encoder", "curate_corpus:make_encoder", "--shards", str(tmp_path / "shards"),
            "--clip-frames", "9", "--clip-fps", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rejected unreadable           1" in out
    assert "caption          0        0        3        0" in out
    assert "rejected at caption  no_caption     1" in out  # the third scene (6..9 s)
    assert "encode           0        0        2        0" in out

    assert main(["curate", "status", "--db", db]) == 0
    assert capsys.readouterr().out == out[out.index("sources"):]

    target = tmp_path / "out" / "scenes.jsonl"
    assert main(["curate", "export", "--db", db, "--after", "caption", "-o", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 36), (36, 72)]
    assert all(r["captions"] == {"manual": "shapes drift over a field"} for r in rows)
    assert rows[0]["crop"] == [0, 0, 64, 64] and rows[0]["metrics"]["motion"] > 0
    assert all(Path(r["shard"]).is_file() for r in rows)
    shards = ShardDataset(tmp_path / "shards")
    assert sorted(shards.key(i) for i in range(len(shards))) == [r["scene_id"] for r in rows]


def test_curate_cli_errors_are_one_line(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    assert main(["curate", "run", "--db", db, "--stages", "split,polish"]) == 2
    assert "unknown or missing stages ['polish']" in capsys.readouterr().err
    assert main(["curate", "run", "--db", db, "--filter", "nomodule"]) == 2
    assert "package.module:FilterName" in capsys.readouterr().err
    assert main(["curate", "ingest", str(tmp_path / "nothing"), "--db", db]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["curate", "status", "--db", str(tmp_path / "no" / "c.db")]) == 2
    assert "create it first" in capsys.readouterr().err
    assert main(["curate", "run", "--db", db, "--stages", "encode"]) == 2
    assert "needs --encoder" in capsys.readouterr().err
    assert main(["curate", "run", "--db", db, "--encoder", "x:y", "--clip-frames", "8"]) == 2
    assert "frames = 1 + 4k" in capsys.readouterr().err
    assert main(["curate", "run", "--db", db, "--workers", "0"]) == 2
    assert "error: --workers must be >= 1, got 0" in capsys.readouterr().err
