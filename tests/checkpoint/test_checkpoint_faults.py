"""Checkpoint I/O faults say what and where, and never cost the user a file: export never overwrites without
``--overwrite`` and refuses a file path; a truncated checkpoint, a model class of another family and a missing
scheduler file are named errors, not tracebacks; a save that fills the disk removes its unfinished folder and
leaves the previous checkpoint loadable and the disk as it was (a small tmpfs; skipped where none can be
mounted). One process, no process group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from galvatron_hf.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from galvatron_hf.cli import main as cli_main
from galvatron_hf.training.scheduler_state import SchedulerStateError, load_scheduler_state
from tests.checkpoint.test_checkpoint_hf_load import llama_config


def _model_and_optimizer(layers: int = 2):
    torch.manual_seed(0)
    config = llama_config()
    config.num_hidden_layers = layers
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 4, dtype=torch.long)).loss.backward()
    optimizer.step()  # the optimizer holds state (exp_avg, exp_avg_sq)
    return model, optimizer, scheduler


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, optimizer, scheduler = _model_and_optimizer()
    target = tmp_path_factory.mktemp("faults") / "ckpt"
    save_checkpoint(target, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=None, step=1)
    return target


def test_export_refuses_a_non_empty_directory_without_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    assert cli_main(["export", str(checkpoint), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == {"mine": True}, "the user's file is untouched"
    assert cli_main(["export", str(checkpoint), str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_export_to_a_file_path_is_an_error(checkpoint, tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_text("keep")
    assert cli_main(["export", str(checkpoint), str(target), "--overwrite"]) == 1
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep"


@pytest.mark.parametrize("damaged", ["shards", "index"])
def test_export_of_a_truncated_checkpoint_names_it(checkpoint, tmp_path, capsys, damaged):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    files = list((broken / "dcp").glob("*.distcp")) if damaged == "shards" else [broken / "dcp" / ".metadata"]
    for file in files:
        file.write_bytes(file.read_bytes()[:64])
    assert cli_main(["export", str(broken), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(broken / "dcp") in err and ("corrupt" in err or "truncated" in err)


def test_export_with_a_model_class_of_another_family_names_the_mismatch(checkpoint, tmp_path, capsys):
    assert cli_main(["export", str(checkpoint), str(tmp_path / "out"), "--model_class", "GPT2LMHeadModel"]) == 1
    err = capsys.readouterr().err
    assert "GPT2LMHeadModel" in err and "LlamaConfig" in err and "--model_class" in err


def test_a_missing_or_truncated_scheduler_file_is_named(checkpoint, tmp_path):
    _, _, scheduler = _model_and_optimizer()
    with pytest.raises(SchedulerStateError, match=r"incomplete.*scheduler\.pt is missing.*earlier checkpoint"):
        load_scheduler_state(scheduler, tmp_path / "scheduler.pt")
    truncated = tmp_path / "scheduler.pt"
    truncated.write_bytes((checkpoint / "scheduler.pt").read_bytes()[:20])
    with pytest.raises(SchedulerStateError, match="corrupt or truncated"):
        load_scheduler_state(scheduler, truncated)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root with mount rights only)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def _used_bytes(path: Path) -> int:
    usage = shutil.disk_usage(path)
    return usage.total - usage.free


def test_a_save_that_fills_the_disk_keeps_the_previous_checkpoint_and_the_disk(small_disk):
    small, small_optimizer, small_scheduler = _model_and_optimizer(layers=1)
    target = small_disk / "checkpoint-1"
    save_checkpoint(target, model=small, optimizer=small_optimizer, lr_scheduler=small_scheduler, plan=None, step=1)
    used = _used_bytes(small_disk)
    assert used < 600_000, "the first checkpoint must leave room for the test's point"
    big, big_optimizer, big_scheduler = _model_and_optimizer(layers=8)  # about 1.5 MB with its optimizer
    with pytest.raises(CheckpointError, match=r"disk holding .* is full.*removed.*previous checkpoint") as failure:
        save_checkpoint(target, model=big, optimizer=big_optimizer, lr_scheduler=big_scheduler, plan=None, step=2)
    assert str(small_disk) in str(failure.value)
    assert sorted(os.listdir(small_disk)) == ["checkpoint-1"], "no unfinished folder is left"
    assert _used_bytes(small_disk) == used, "the disk is as it was"
    fresh, fresh_optimizer, _ = _model_and_optimizer(layers=1)
    state = load_checkpoint(target, model=fresh, optimizer=fresh_optimizer)
    assert state.step == 1
    torch.testing.assert_close(fresh.lm_head.weight, small.lm_head.weight, rtol=0, atol=0)
