"""``galvatron_hf.training.checkpoint_hooks`` in the Trainer loop: what ``checkpoint-N/`` holds (and which of the
Trainer's own files it does not), the fp16 loss scale carried through a resume, ``load_best_model_at_end``
restoring the best sharded checkpoint, and ``save_only_model``.

One 2-rank gloo launch (ZeRO-3 x 2, fp16) runs three trainers: 4 steps with a checkpoint and an evaluation
every 2 steps, a resume from its ``checkpoint-2``, and a one-step ``save_only_model`` run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_cases as cc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state_0.pth", "rng_state_1.pth", "model.safetensors")


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("checkpoint_hooks")
    return workdir, run_distributed(cc.checkpoint_worker, 2, str(workdir), timeout_s=600)


def _manifest(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "checkpoint.json").read_text())


def test_checkpoint_holds_the_sharded_state_and_not_the_trainers_files(launch):
    workdir, _ = launch
    checkpoint = workdir / "best" / "checkpoint-2"
    manifest = _manifest(checkpoint)
    assert manifest["has_optimizer"] and manifest["step"] == 2
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "training_args.bin").is_file()
    assert sorted(p.name for p in (checkpoint / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    # the scheduler is the checkpoint's own (saved by save_checkpoint); the others the Trainer would write
    assert [name for name in TRAINER_FILES if (checkpoint / name).exists()] == ["scheduler.pt"]


def test_fp16_loss_scale_is_saved_and_resumed(launch):
    workdir, results = launch
    for result in results:
        assert result["best"]["saved"][2]["scale"] == cc.SCALE
        assert result["resumed"]["scale_at_begin"] == cc.SCALE  # a fresh runtime starts at 2**16
    assert _manifest(workdir / "best" / "checkpoint-2")["extra"] == {"loss_scale": cc.SCALE}
    first, resumed = results[0]["best"]["losses"], results[0]["resumed"]["losses"]
    assert len(first) == len(resumed) == 4  # the resumed history starts with the checkpoint's two steps
    assert resumed == pytest.approx(first, rel=1e-5), "the resumed run continues the first one"


def test_load_best_model_at_end_restores_the_best_checkpoint(launch):
    workdir, results = launch
    for result in results:
        best = result["best"]
        assert best["best_step"] == 2 and best["best_checkpoint"] == str(workdir / "best" / "checkpoint-2")
        last, chosen = best["saved"][4]["logits"], best["saved"][2]["logits"]
        assert not torch.allclose(last, chosen), "training moved the model: the best one is not the last"
        torch.testing.assert_close(best["final_logits"], chosen, rtol=0, atol=0)


def test_save_only_model_leaves_the_optimizer_out(launch):
    workdir, _ = launch
    manifest = _manifest(workdir / "only_model" / "checkpoint-1")
    assert not manifest["has_optimizer"] and not manifest["has_scheduler"]
