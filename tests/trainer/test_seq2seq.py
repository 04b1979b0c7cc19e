"""GalvatronSeq2SeqTrainer vs the plain single-process Seq2SeqTrainer on a tiny T5: training losses, eval_loss,
and ``predict_with_generate`` (greedy, and beam search) giving the same generated ids and ``compute_metrics``.

One 2-rank gloo launch runs every layout: DDP, ZeRO-2, ZeRO-3 (2 beams), TP2, and pp = 2 (training and
eval_loss; generation refused with the fix). ``predict()`` reads 7 samples, 2 per data-parallel group: the last
step's fillers must be dropped from the gathered ids (under DDP also without labels).

``predict()``'s ``test_loss`` on that uneven set is not compared: the plain Seq2SeqTrainer weights its last,
smaller step as a whole one (it gathers with ``accelerator.gather``), where GalvatronTrainer weights each step by
its real samples, as the plain Trainer does. evaluate() reads whole steps, where both agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import seq2seq_cases as sc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-5


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seq2seq")
    results = run_distributed(sc.worker, 2, list(sc.LAYOUTS), str(workdir), timeout_s=900)
    settings = {name: (run["data_size"], run["flags"].get("generation_num_beams")) for name, run in sc.LAYOUTS.items()}
    runs = {key: sc.reference(str(workdir / f"ref_{i}"), *key) for i, key in enumerate(set(settings.values()))}
    return results, {name: runs[setting] for name, setting in settings.items()}


def _close(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys(), f"{what}: {sorted(got)} vs {sorted(expected)}"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=RTOL), f"{what}: {key} {got[key]} vs {value}"


@pytest.mark.parametrize("layout", list(sc.LAYOUTS))
def test_generation_matches_plain_seq2seq_trainer(launch, layout):
    results, references = launch
    expected = references[layout]
    assert expected["metrics"]["eval_id_sum"] > 0  # the model generates tokens, not only padding
    for rank, rank_results in enumerate(results):
        got = rank_results[layout]
        what = f"{layout} rank {rank}"
        assert got["losses"] == pytest.approx(expected["losses"], rel=RTOL), what
        _close(got["metrics"], expected["metrics"], f"{what} evaluate()")
        test_metrics = {k: v for k, v in expected["test_metrics"].items() if k != "test_loss"}
        _close({k: v for k, v in got["test_metrics"].items() if k != "test_loss"}, test_metrics, f"{what} predict()")
        for key in ("predictions", "label_ids", "unlabelled")[: 3 if sc.LAYOUTS[layout].get("unlabelled") else 2]:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{what} {key}")
        assert len(got["predictions"]) == sc.TEST_SAMPLES


def test_pipeline_trains_and_refuses_generation(launch):
    results, references = launch
    expected = references["tp2"]  # one data-parallel group, the same training
    for rank_results in results:
        got = rank_results["pipeline"]
        assert got["losses"] == pytest.approx(expected["losses"], rel=RTOL)
        assert got["eval_loss"] == pytest.approx(expected["pipeline_eval_loss"], rel=RTOL)
        assert len(got["errors"]) == 2
        for error in got["errors"]:
            assert error is not None and "pp = 1" in error and "save_model" in error
