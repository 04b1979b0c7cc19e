"""`galvatron-hf search` and ``GalvatronTrainer`` are one front door: for the same request they choose the same
plan and print the same summary (uniform flags, in the new and the Galvatron-2 names, and the search)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import trainer_cases as cases

from galvatron_hf.cli import main
from galvatron_hf.planner.plan import Plan
from galvatron_hf.planner.summary import format_summary
from galvatron_hf.training.plans import resolve_training_plan

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """(config directory for the CLI, the same model on the meta device for the trainer)."""
    import torch
    import transformers as tf

    from galvatron_hf.adapters import load_config

    directory = tmp_path_factory.mktemp("tiny-llama")
    cases.make_model("llama").config.save_pretrained(directory)
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(load_config(str(directory)))
    return str(directory), model


def _trainer_side(model, world_size: int, **values):
    """What ``GalvatronTrainer`` resolves for these arguments on ``world_size`` processes (the model described
    at the planned sequence length, as the trainer does from its first sample). The command prices on an H100
    node by default, the trainer on the device it runs on: both are told the same hardware here."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.trainer import GalvatronTrainingArguments

    values = {"hardware": "h100", **values}
    args = GalvatronTrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **values)
    spec = describe_model(model, seq_len=args.seq_len)
    return resolve_training_plan(args, spec, world_size=world_size, attn_implementation="sdpa")


def _cli_side(directory: str, tmp_path, capsys, *flags: str) -> tuple[Plan, str]:
    out = tmp_path / "plan.json"
    args = ["search", "--model_name_or_path", directory, "--mixed_precision", "fp32", "--output", str(out), *flags]
    assert main(args) == 0
    return Plan.load(out), capsys.readouterr().out


UNIFORM = {"tp": 2, "dp_type": "zero3", "checkpoint": True, "num_micro_batches": 4, "global_batch_size": 16}


@pytest.mark.parametrize(
    "trainer_values",
    [
        {"pp": 2, "seq_len": SEQ_LEN, **UNIFORM},
        {"pp_deg": 2, "seq_length": SEQ_LEN, **UNIFORM},  # the Galvatron-2 names
    ],
    ids=["plan-names", "galvatron2-names"],
)
def test_uniform_flags_give_one_plan_and_one_summary(tiny_llama, tmp_path, capsys, trainer_values):
    directory, model = tiny_llama
    flags = ["--num_gpus", "8", "--seq_len", str(SEQ_LEN), "--pp", "2", "--tp", "2", "--dp_type", "zero3"]
    flags += ["--checkpoint", "--num_micro_batches", "4", "--global_batch_size", "16"]
    cli_plan, printed = _cli_side(directory, tmp_path, capsys, *flags)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = _trainer_side(model, 8, **trainer_values)
    deprecated = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert bool(deprecated) == ("pp_deg" in trainer_values)
    assert resolved.plan == cli_plan
    assert (cli_plan.pp, cli_plan.schedule, cli_plan.num_micro_batches) == (2, "1f1b", 4)
    summary = format_summary(resolved)
    assert summary.startswith("galvatron plan (uniform flags)") and summary in printed


def test_search_gives_one_plan_and_one_summary(tiny_llama, tmp_path, capsys):
    directory, model = tiny_llama
    flags = ["--num_gpus", "4", "--seq_len", str(SEQ_LEN), "--memory_gb", "40", "--global_batch_size", "8"]
    cli_plan, printed = _cli_side(directory, tmp_path, capsys, *flags)
    resolved = _trainer_side(model, 4, auto_parallel=True, memory_gb=40, global_batch_size=8, seq_len=SEQ_LEN)
    assert resolved.plan == cli_plan and resolved.search is not None
    summary = format_summary(resolved)
    assert summary.startswith("galvatron plan (search)") and summary in printed

