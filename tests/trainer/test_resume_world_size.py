"""A resume on another number of processes continues the same data and the same loss curve.

Without ``global_batch_size`` the global batch follows the process count; a resume keeps the checkpoint's
global batch, so the Trainer's step count lands on the exact place in the data (``training/resume.py``).
Launches (gloo): 2 processes train 2 steps and save; 4 processes resume for 2 more and save, and train the
``auto_parallel`` reference (pp=4 on 4 processes); 1 process finishes the epoch; 2 processes resume the
``auto_parallel`` run, re-planned for 2 processes (pp=2).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import resume_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("resume_world_size"))
    first = run_distributed(rc.chain_first, 2, workdir, timeout_s=600)
    second = run_distributed(rc.chain_second_and_auto_reference, 4, workdir, timeout_s=600)
    last = run_distributed(rc.chain_last, 1, workdir, timeout_s=600)
    resumed = run_distributed(rc.auto_resumed, 2, workdir, timeout_s=600)
    return {"first": first, "second": second, "last": last, "resumed": resumed}


def test_resume_2_to_4_to_1_processes_trains_every_sample_once(launches):
    phases = [launches["first"], launches["second"], launches["last"]]
    assert [result["chain"]["step"] for result in phases[0] + phases[1] + phases[2]] == [2] * 2 + [4] * 4 + [6]
    assert all(result["chain"]["global_batch"] == 8 for phase in phases for result in phase)
    seen = Counter(index for phase in phases for result in phase for index in result["chain"]["seen"])
    assert sorted(seen) == list(range(rc.EPOCH_SAMPLES)), "every sample of the epoch is trained"
    assert set(seen.values()) == {1}, f"trained more than once: {[i for i, n in seen.items() if n > 1]}"


def test_auto_parallel_resume_on_fewer_processes_replans_and_continues_the_loss_curve(launches):
    reference = launches["second"][0]["auto"]
    resumed = launches["resumed"][0]["auto"]
    assert (reference["plan"].world_size, reference["plan"].pp) == (4, 4)
    assert (resumed["plan"].world_size, resumed["plan"].pp) == (2, 2), "searched for the current cluster"
    assert resumed["plan"].global_batch_size == reference["plan"].global_batch_size == 8
    assert len(reference["losses"]) == len(resumed["losses"]) == rc.AUTO_STEPS
    assert resumed["losses"][rc.SAVE_EVERY :] == pytest.approx(reference["losses"][rc.SAVE_EVERY :], rel=1e-4)
