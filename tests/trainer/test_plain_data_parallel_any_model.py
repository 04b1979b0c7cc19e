"""Any PreTrainedModel trains with plain data parallelism, as accelerate would run it, even when no adapter
describes it: Bloom, GPT-NeoX and a custom module stack, under DDP / ZeRO-2 / ZeRO-3 on 2 gloo ranks, give the
plain one-process Trainer's losses; asking such a model for TP (or a search, PP, checkpointing) is refused
with what works. One launch for every run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import generic_cases as gc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("generic")
    kinds = {kind for kind, _ in gc.RUNS.values()}
    reference = {kind: gc.plain_trainer_losses(kind, str(workdir / f"plain_{kind}")) for kind in kinds}
    return reference, run_distributed(gc.galvatron_runs, 2, str(workdir), timeout_s=600)


@pytest.mark.parametrize("name", list(gc.RUNS))
def test_a_model_no_adapter_describes_trains_like_the_plain_trainer(runs, name):
    reference, results = runs
    kind = gc.RUNS[name][0]
    for result in results:
        assert result[name]["family"] == "generic"
        assert result[name]["losses"] == pytest.approx(reference[kind], rel=1e-5)


def test_tp_search_and_pp_need_a_supported_family(runs):
    _, results = runs
    assert "--tp given" in results[0]["refusal"] and "need a supported model family" in results[0]["refusal"]
