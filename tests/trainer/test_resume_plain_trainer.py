"""A plain HF ``Trainer`` checkpoint (HF weights, ``optimizer.pt``, ``scheduler.pt``, RNG files) resumes in any
layout: the plain Trainer trains 4 steps in this process and saves ``checkpoint-2``; one 2-rank gloo launch
resumes it under ZeRO-3, TP2 and PP2, each continuing the plain run's losses (fp32, dropout off)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import resume_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("plain_resume")
    reference = rc.plain_trainer_run(str(workdir / "plain"))
    checkpoint = workdir / "plain" / f"checkpoint-{rc.SAVE_EVERY}"
    assert (checkpoint / "optimizer.pt").is_file() and not (checkpoint / "checkpoint.json").exists()
    return reference, run_distributed(rc.resume_plain_checkpoint, 2, str(workdir), str(checkpoint), timeout_s=600)


@pytest.mark.parametrize("layout", list(rc.PLAIN_LAYOUTS))
def test_a_plain_trainer_checkpoint_resumes_in_any_layout(runs, layout):
    reference, results = runs
    for losses in (result[layout] for result in results):
        assert len(losses) == len(reference) == rc.AUTO_STEPS
        assert losses[rc.SAVE_EVERY :] == pytest.approx(reference[rc.SAVE_EVERY :], rel=1e-5)
