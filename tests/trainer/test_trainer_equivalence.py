"""GalvatronTrainer vs the plain HF Trainer (one process): same logged losses step by step, across layouts,
through a checkpoint saved in one layout and resumed in another, and through export -> from_pretrained.

One 4-rank gloo launch per model family runs every layout (each launch costs seconds); the reference is an
in-process single-rank plain Trainer. fp32, dropout off: losses agree to 1e-5 relative.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import trainer_cases as cases

from galvatron_hf.testing.distributed import run_distributed

RTOL = 1e-5

RUNS = [
    {"flags": {"dp_type": "zero3"}},  # ZeRO-3 over 4 ranks
    {
        "flags": {
            "tp": 2,
            "dp_type": "zero3",
            "gradient_accumulation_steps": 2,
        }
    },  # TP2 x ZeRO-3 2
    {
        "flags": {
            "pp": 2,
            "dp_type": "ddp",
            "num_micro_batches": 2,
            "per_device_eval_batch_size": 4,
        },
        "evaluate": True,
    },  # PP2 x DDP2 (1F1B, the default with 2 micro-batches), forward-only pipeline evaluation
    {
        "flags": {
            "tp": 2,
            "dp_type": "zero3",
            "save_strategy": "steps",
            "save_steps": 3,
            "save_total_limit": 2,
        },
        "dir": "saved",
        "logits": True,
    },  # TP2 x ZeRO-3 2, checkpoints at steps 3 and 5
    {
        "flags": {
            "pp": 2,
            "dp_type": "ddp",
            "num_micro_batches": 2,
            "schedule": "gpipe",
            "resume_from_checkpoint": "saved/checkpoint-3",
        },
        "dir": "resumed",
        "export": "exported",
    },
]
NAMES = ["zero3", "tp2_zero3_accum2", "pp2_ddp2", "tp2_zero3_save", "pp2_ddp2_resumed"]


@pytest.fixture(scope="module", params=["llama", "t5"])
def family_runs(request, tmp_path_factory):
    family = request.param
    workdir = tmp_path_factory.mktemp(f"trainer_{family}")
    reference = cases.reference_run(family, str(workdir / "reference"))
    results = run_distributed(cases.galvatron_worker, 4, family, RUNS, str(workdir), timeout_s=900)
    return family, workdir, reference, results


def _assert_close(actual: list[float], expected: list[float], what: str) -> None:
    assert len(actual) == len(expected) == cases.STEPS, f"{what}: {actual} vs {expected}"
    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), rtol=RTOL, atol=0, msg=what)


def test_losses_match_plain_trainer_in_every_layout(family_runs):
    family, _, reference, results = family_runs
    for name, result in zip(NAMES, results[0]):
        _assert_close(result["losses"], reference["losses"], f"{family} {name}")
    for rank_results in results[1:]:  # every rank logs the same global mean loss
        for name, result, first in zip(NAMES, rank_results, results[0]):
            assert result["losses"] == first["losses"], f"{family} {name}: ranks disagree"


def test_plans_are_the_asked_layouts(family_runs):
    _, _, _, results = family_runs
    plans = [result["plan"] for result in results[0]]
    assert {(s.tp, s.dp, s.dp_type) for s in plans[0].layers} == {(1, 4, "zero3")}
    assert {(s.tp, s.dp, s.dp_type) for s in plans[1].layers} == {(2, 2, "zero3")}
    assert plans[2].pp == 2 and {(s.tp, s.dp, s.dp_type) for s in plans[2].layers} == {(1, 2, "ddp")}
    assert all(plan.global_batch_size == cases.GLOBAL_BATCH for plan in plans)


def test_pipeline_evaluation_matches_plain_trainer(family_runs):
    family, _, reference, results = family_runs
    torch.testing.assert_close(
        torch.tensor(results[0][2]["eval_loss"]),
        torch.tensor(reference["eval_loss"]),
        rtol=RTOL,
        atol=0,
        msg=f"{family} eval loss",
    )


def test_resume_in_another_layout_continues_the_run(family_runs):
    family, workdir, reference, results = family_runs
    resumed = results[0][4]
    _assert_close(
        resumed["losses"],
        reference["losses"],
        f"{family} resumed PP2 x DDP2 from TP2 x ZeRO-3",
    )
    saved = workdir / "saved"
    assert sorted(p.name for p in saved.glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-5",
    ]
    state = json.loads((saved / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len(cases.logged_losses(state["log_history"])) == 3


def test_export_then_from_pretrained_gives_the_trained_logits(family_runs):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from galvatron_hf.checkpoint import export_to_hf

    family, workdir, reference, results = family_runs
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    # `galvatron-hf export` of the TP2 x ZeRO-3 run's last checkpoint: the logits that run's model gave
    export_to_hf(workdir / "saved" / "checkpoint-5", workdir / "exported-checkpoint")
    exported_checkpoint = auto.from_pretrained(workdir / "exported-checkpoint")
    torch.testing.assert_close(cases.logits(exported_checkpoint), results[0][3]["logits"])
    # trainer.save_model() after the resumed pipeline run; both agree with the single-process run's model
    exported_by_save_model = auto.from_pretrained(workdir / "exported")
    torch.testing.assert_close(cases.logits(exported_by_save_model), reference["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cases.logits(exported_checkpoint), reference["logits"], rtol=1e-4, atol=1e-5)


def test_report_prints_predicted_and_measured(family_runs):
    _, _, _, results = family_runs
    report = results[0][0]["report"]
    assert "predicted" in report and "measured" in report and "stage 0 peak memory" in report


def test_output_dir_keeps_the_plan_and_its_measured_report(family_runs):
    """plan.json (the plan trained with), plan_report.json (predicted vs measured per stage), plan.html."""
    from galvatron_hf.planner.plan import Plan

    _, _, _, results = family_runs
    for run in results[0]:
        directory = Path(run["output_dir"])
        assert Plan.load(directory / "plan.json") == run["plan"]
        written = json.loads((directory / "plan_report.json").read_text())
        assert len(written["measured"]["peak_memory_gb"]) == run["plan"].pp
        assert all(gb > 0 for gb in written["measured"]["peak_memory_gb"])
        assert written["predicted"]["step_time_s"] == run["plan"].predicted.step_time_s
        html = (directory / "plan.html").read_text()
        assert "measured peak" in html and "the training run measured" in html
