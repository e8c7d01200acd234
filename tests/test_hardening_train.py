"""Training and evaluation as a careless user drives them: a run killed mid-write, a corrupt
checkpoint, an empty config, an output folder that cannot be written, counts below 1.

The trainer tests drive ``Trainer`` over a toy task (a linear model on random rows), so a
whole run takes milliseconds. The unwritable folders are made so for root too: a folder
under a regular file (NotADirectoryError), or ``Path.mkdir`` raising PermissionError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cineforge.cli.main import main
from cineforge.errors import CineforgeError
from cineforge.train import run
from cineforge.train.checkpoint import list_checkpoints, load_checkpoint
from cineforge.train.config import load_config
from cineforge.train.loop import StepLoss, Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ToyTask:
    """Fit a linear model to the sum of random rows; the data position is the batch count."""

    name, work_unit = "toy", "rows"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.batches = 0

    def next_batch(self, generator: torch.Generator) -> torch.Tensor:
        self.batches += 1
        return torch.randn(8, 4, generator=generator)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> StepLoss:
        error = model(batch) - batch.sum(1, keepdim=True)
        return StepLoss(error.square().mean(), work=len(batch))

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"val_loss": 0.0}

    def data_state(self) -> dict:
        return {"batches": self.batches}

    def load_data_state(self, state: dict) -> None:
        self.batches = state["batches"]

    def export(self, model: nn.Module, folder: Path) -> list[Path]:
        return []


def toy_trainer(out: Path) -> Trainer:
    """4 steps, a checkpoint every 2 (the newest 2 kept), a log record every step."""
    return Trainer(load_config(CONFIGS / "tiny_vae.yaml", [f"out={out}"]), ToyTask(), out)


def trained(out: Path) -> Trainer:
    trainer = toy_trainer(out)
    for _ in trainer.steps():
        pass
    return trainer


def log_lines(out: Path) -> list[str]:
    return (out / "log.jsonl").read_text().splitlines()


def numbers(out: Path) -> list[tuple]:
    """The log's records without their timings."""
    return [(r["kind"], r["step"], r.get("loss"), r.get("lr"), r.get("grad_norm"))
            for r in map(json.loads, log_lines(out))]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("cineforge: error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("cut", ['{"kind": "train", "step": 5, "lo', '{"kind', "\x00\x00"])
def test_resume_drops_a_partial_last_log_line_and_keeps_the_records(tmp_path, cut):
    first = trained(tmp_path)
    whole = log_lines(tmp_path)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(cut)  # killed while writing a record
    resumed = toy_trainer(tmp_path)
    assert resumed.resume() == 4
    assert log_lines(tmp_path) == whole  # every complete record, nothing else
    assert [json.loads(line)["step"] for line in whole] == [1, 2, 2, 3, 4, 4]
    resumed._log({"kind": "note", "step": 4})
    assert [json.loads(line) for line in log_lines(tmp_path)][-1] == {"kind": "note", "step": 4}
    assert torch.equal(resumed.model.weight, first.model.weight)


def test_resume_from_an_older_checkpoint_drops_a_partial_line_and_later_records(tmp_path):
    trained(tmp_path)
    (tmp_path / "checkpoints" / "step-00000004.pt").unlink()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    assert toy_trainer(tmp_path).resume() == 2
    assert [json.loads(line)["step"] for line in log_lines(tmp_path)] == [1, 2, 2]


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "zeroed": lambda data: bytes(len(data)),
    "text": lambda data: b"hello",
    "noise": lambda data: bytes(range(256)) * 8,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_resume_auto_falls_back_to_the_newest_readable_checkpoint(tmp_path, corrupt, capsys):
    straight = trained(tmp_path / "a")
    first = trained(tmp_path / "b")
    newest = tmp_path / "b" / "checkpoints" / "step-00000004.pt"
    bad = CORRUPTIONS[corrupt](newest.read_bytes())
    newest.write_bytes(bad)
    capsys.readouterr()
    resumed = toy_trainer(tmp_path / "b")
    assert resumed.resume() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step-00000004.pt is unreadable" in err
    assert "resuming from step 2" in err
    kept = newest.with_name("step-00000004.pt.unreadable")
    assert kept.read_bytes() == bad  # set aside, not destroyed
    assert [step for step, _ in list_checkpoints(newest.parent)] == [2]
    assert [json.loads(line)["step"] for line in log_lines(tmp_path / "b")] == [1, 2, 2]
    assert not torch.equal(resumed.model.weight, first.model.weight)  # step 2, not 4
    for _ in resumed.steps():
        pass
    assert resumed.step == 4
    assert torch.equal(resumed.model.weight, straight.model.weight)  # still an exact resume
    assert numbers(tmp_path / "b") == numbers(tmp_path / "a")


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_an_unreadable_checkpoint_is_a_one_line_error(tmp_path, corrupt):
    path = tmp_path / "step-00000002.pt"
    path.write_bytes(CORRUPTIONS[corrupt](b"x" * 4096))
    with pytest.raises(CineforgeError, match="cannot read checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_resume_auto_refuses_when_no_checkpoint_is_readable(tmp_path):
    trained(tmp_path)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(b"")
    with pytest.raises(CineforgeError, match="no checkpoint in .* is readable") as info:
        toy_trainer(tmp_path).resume()
    assert "\n" not in str(info.value)
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2  # nothing renamed


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty;"),
        ("# only a comment\n\n", "is empty;"),
        ("{}\n", "is empty;"),
        ("steps: [4\nout: x\n", "is not valid YAML"),
        ("steps: 4\n\x00", "is not valid YAML"),
    ],
)
def test_an_empty_or_broken_config_is_a_one_line_error(tmp_path, text, message, capsys,
                                                       monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(run, "train", no_run)
    (tmp_path / "c.yaml").write_text(text)
    assert main(["train", "vae", "--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    assert message in one_line_error(capsys)


def test_a_binary_config_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes(bytes(range(128, 256)))
    assert main(["train", "vae", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "is not a text file" in one_line_error(capsys)


# ----------------------------------------------------------------------------- --out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as building its task or reading weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(run, "build_task", refuse)
    monkeypatch.setattr(run, "load_checkpoint", refuse)


@pytest.mark.parametrize("task", ["vae", "dit"])
def test_train_into_an_unwritable_out_is_one_line_before_work(tmp_path, task, no_work, capsys):
    (tmp_path / "file").write_text("a regular file")
    out = tmp_path / "file" / "run"
    args = ["train", task, "--config", str(CONFIGS / f"tiny_{task}.yaml"), "--out", str(out),
            "--no-progress"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"cannot write the run folder {out}" in err and "choose another --out" in err


def test_export_into_an_unwritable_out_is_one_line_before_work(tmp_path, no_work, capsys):
    trainer = trained(tmp_path / "run")
    run.write_config(trainer.config, tmp_path / "run" / "config.yaml")
    (tmp_path / "file").write_text("a regular file")
    out = tmp_path / "file" / "weights"
    assert main(["train", "export", "--run", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"cannot write the export folder {out}" in err and "--out" in err


def test_permission_denied_on_the_run_folder_is_one_line(tmp_path, no_work, capsys,
                                                         monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "read-only" / "run"
    assert main(["train", "vae", "--config", str(CONFIGS / "tiny_vae.yaml"), "--out", str(out),
                 "--no-progress"]) == 2
    assert f"cannot write the run folder {out} (Permission denied)" in one_line_error(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_an_existing_read_only_out_is_one_line(tmp_path, no_work, capsys):
    trainer = trained(tmp_path / "run")
    run.write_config(trainer.config, tmp_path / "run" / "config.yaml")
    out = tmp_path / "read-only"
    out.mkdir(mode=0o500)
    try:
        assert main(["train", "export", "--run", str(tmp_path / "run"), "--out", str(out)]) == 2
    finally:
        out.chmod(0o700)
    assert "cannot write the export folder" in one_line_error(capsys)


def test_train_cache_into_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "load_vae", lambda *a: pytest.fail("the VAE was loaded"))
    (tmp_path / "file").write_text("a regular file")
    assert main(["train", "cache", "--config", str(CONFIGS / "tiny_dit.yaml"), "--out",
                 str(tmp_path / "file" / "run"), "--set", f"cache.vae={tmp_path}"]) == 2
    assert "cannot write the latent cache folder" in one_line_error(capsys)


# ----------------------------------------------------------------------------- eval


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "shapes", "--batch", "0"], "--batch must be at least 1, got 0"),
        (["eval", "shapes", "-n", "-3"], "-n must be at least 1, got -3"),
        (["eval", "text-use", "--batch", "-1"], "--batch must be at least 1, got -1"),
        (["eval", "text-use", "-n", "0"], "-n must be at least 1, got 0"),
    ],
)
def test_eval_counts_below_one_are_refused_before_loading(args, message, capsys, monkeypatch):
    import cineforge.cli.eval as cli_eval

    monkeypatch.setattr(cli_eval, "load_components", lambda *a: pytest.fail("weights loaded"))
    assert main(args) == 2
    assert message in one_line_error(capsys)
