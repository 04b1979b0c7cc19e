"""GalvatronTrainer's evaluate() with compute_metrics and predict() vs the plain single-process Trainer, training
from an unsized IterableDataset, and fp16 steps skipped for overflow leaving the LR schedule where it was.

One 4-rank gloo launch runs everything: a tiny BERT sequence classifier and a tiny Llama causal LM under
ZeRO-3 x 4, TP2 x ZeRO-3 2, a per-layer mixed TP layout and PP2 x DDP2 (same weights as the reference). 13 evaluation
samples, 2 per data-parallel group: the last step is uneven in every layout, so the loader's filler samples must
be dropped. The reference evaluates one Galvatron step's samples per step (8 or 4), which makes its eval_loss
(a mean of per-step means) comparable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import evaluation_cases as ec
import trainer_cases as cases

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-5
ATOL = 1e-6  # logits near zero: 1e-5 relative of the largest values is about this
FAMILIES = ("bert", "llama")
EVAL_RUNS = [
    {"kind": "evaluate", "family": family, "layout": layout} for family in FAMILIES for layout in ec.LAYOUTS
]
RUNS = EVAL_RUNS + [
    {"kind": "iterable", "layout": "zero3x4"},
    {"kind": "iterable", "layout": "tp2_zero3x2"},
    {"kind": "fp16"},
]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trainer_evaluation")
    results = run_distributed(ec.evaluation_worker, 4, RUNS, str(workdir), timeout_s=900)
    references = {
        (family, size): ec.reference_evaluation(family, str(workdir / f"ref_{family}_{size}"), ec.EVAL_BATCH * size)
        for family in FAMILIES
        for size in {layout["data_size"] for layout in ec.LAYOUTS.values()}
    }
    return workdir, results, references


def _close_metrics(got: dict, expected: dict, what: str) -> None:
    assert got.keys() == expected.keys(), f"{what}: {sorted(got)} vs {sorted(expected)}"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-12), f"{what}: {key} {got[key]} vs {value}"


def _close_arrays(got, expected, what: str) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=RTOL, atol=ATOL, msg=what)


@pytest.mark.parametrize("index", range(len(EVAL_RUNS)), ids=[f"{r['family']}-{r['layout']}" for r in EVAL_RUNS])
def test_evaluate_and_predict_match_plain_trainer(launch, index):
    _, results, references = launch
    run = EVAL_RUNS[index]
    what = f"{run['family']} {run['layout']}"
    reference = references[(run["family"], ec.LAYOUTS[run["layout"]]["data_size"])]
    for rank, rank_results in enumerate(results):  # every rank returns the whole, identical result
        got = rank_results[index]
        _close_metrics(got["metrics"], reference["metrics"], f"{what} rank {rank} evaluate()")
        _close_metrics(got["test_metrics"], reference["test_metrics"], f"{what} rank {rank} predict() metrics")
        _close_metrics(got["streamed_metrics"], reference["streamed_metrics"], f"{what} rank {rank} iterable")
        assert got["metrics"]["eval_rows"] == ec.EVAL_SAMPLES
        for key in ("predictions", "label_ids", "unlabelled", "streamed", "streamed_label_ids"):
            _close_arrays(got[key], reference[key], f"{what} rank {rank} {key}")
        assert got["unlabelled_label_ids"] is None and reference["unlabelled_label_ids"] is None
    assert len(results[0][index]["predictions"]) == ec.EVAL_SAMPLES


def test_training_from_an_iterable_dataset_matches_plain_trainer(launch):
    workdir, results, _ = launch
    expected = ec.reference_iterable_training(str(workdir / "ref_iterable"))
    assert len(expected) == cases.STEPS
    for offset, layout in enumerate(("zero3x4", "tp2_zero3x2")):
        got = results[0][len(EVAL_RUNS) + offset]["losses"]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=RTOL, atol=0, msg=layout)


def test_fp16_overflow_skips_the_scheduler_step(launch):
    _, results, _ = launch
    from transformers import get_linear_schedule_with_warmup

    got = results[0][-1]
    skipped = [step + 1 == ec.SKIPPED_STEP for step in range(cases.STEPS)]
    assert got["skipped"] == skipped
    # the schedule the steps should see: the skipped step's rate is used again by the next step
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=1, num_training_steps=cases.STEPS)
    rates = []
    for was_skipped in skipped:
        rates.append(optimizer.param_groups[0]["lr"])
        if not was_skipped:
            optimizer.step()
            schedule.step()
    assert got["rates"] == pytest.approx(rates, rel=1e-12)
    assert got["scheduler_steps"] == cases.STEPS - 1
    assert len(got["losses"]) == cases.STEPS and all(np.isfinite(got["losses"]))
