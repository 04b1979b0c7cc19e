"""Fast checks (no launch) of the trainer's pieces: batch geometry, joining loader batches, argument parsing,
plan choice, scheduler state across layouts, the report."""

from __future__ import annotations

import pytest
import torch

from galvatron_hf.planner.plan import PlanError
from galvatron_hf.training.batching import (
    BatchGeometry,
    BatchSizeError,
    merge_micro_batches,
)
from galvatron_hf.training.plans import (
    BatchRequest,
    PlanOptions,
    choose_plan,
    default_micro_batches,
    describe_plan,
)
from galvatron_hf.training.report import format_report
from galvatron_hf.training.scheduler_state import SchedulerStateError, adapt_to_groups


def _llama_spec(seq_len: int = 16):
    import transformers as tf

    from galvatron_hf.adapters import describe_model

    config = tf.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return describe_model(config, seq_len=seq_len, architecture="LlamaForCausalLM")


def test_batch_geometry_from_per_device_and_from_global():
    plain = BatchGeometry.from_arguments(4, 2, data_size=3, global_batch_size=None)
    assert (plain.global_batch_size, plain.per_rank_batch_size) == (24, 4)
    fixed = BatchGeometry.from_arguments(99, 2, data_size=2, global_batch_size=16)
    assert fixed.per_rank_batch_size == 4
    with pytest.raises(BatchSizeError, match="multiple of 6"):
        BatchGeometry.from_arguments(4, 3, data_size=2, global_batch_size=16)


def test_merge_pads_each_key_with_its_own_value():
    first = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
    }
    second = {
        "input_ids": torch.ones(1, 5, dtype=torch.long),
        "labels": torch.ones(1, 5, dtype=torch.long),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
    }
    merged = merge_micro_batches([first, second], pad_token_id=7)
    assert merged["input_ids"].shape == (3, 5)
    assert merged["input_ids"][0].tolist() == [1, 1, 1, 7, 7]
    assert merged["labels"][0].tolist() == [1, 1, 1, -100, -100]
    assert merged["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def test_parser_shows_galvatron_options_with_help():
    from transformers import HfArgumentParser

    from galvatron_hf.trainer import GalvatronTrainingArguments, plan_options

    parser = HfArgumentParser(GalvatronTrainingArguments)
    text = parser.format_help()
    for flag in (
        "--auto_parallel",
        "--galvatron_plan",
        "--pp_deg",
        "--global_tp_deg",
        "--dp_type",
        "--global_checkpoint",
        "--pipeline_type",
        "--num_micro_batches",
        "--global_batch_size",
        "--memory_gb",
        "--hardware",
        "--model_profile",
    ):
        assert flag in text
    assert "data-parallel" in text  # help metadata is shown
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            "x",
            "--pp_deg",
            "2",
            "--dp_type",
            "zero3",
            "--use_cpu",
            "--report_to",
            "none",
        ]
    )
    options = plan_options(args, auto_parallel=True)
    assert (options.pp_deg, options.dp_type, options.auto_parallel, options.source) == (
        2,
        "zero3",
        True,
        "search",
    )


def test_plan_options_of_a_plain_training_arguments_mean_data_parallel():
    from transformers import TrainingArguments

    from galvatron_hf.trainer import plan_options

    options = plan_options(TrainingArguments(output_dir="x", use_cpu=True, report_to="none"))
    assert not options.auto_parallel and not options.uniform_flags_given
    plan = choose_plan(options, _llama_spec(), 4, BatchRequest(2, 1, None), "fp32")
    assert plan.pp == 1 and plan.global_batch_size == 8
    assert {(s.tp, s.dp, s.dp_type) for s in plan.layers} == {(1, 4, "ddp")}
    assert plan.predicted is not None  # priced by the analytic cost model


def test_uniform_flags_and_their_errors():
    spec = _llama_spec()
    options = PlanOptions(
        pp_deg=2,
        global_tp_deg=2,
        dp_type="zero3",
        global_checkpoint=True,
        pipeline_type="1f1b",
    )
    plan = choose_plan(options, spec, 8, BatchRequest(2, 2, None), "bf16")
    assert plan.pp == 2 and plan.schedule == "1f1b" and plan.global_batch_size == 2 * 2 * 2
    assert {(s.tp, s.dp, s.dp_type, s.checkpoint) for s in plan.layers} == {(2, 2, "zero3", True)}
    assert plan.num_micro_batches >= 2 and plan.global_batch_size % (plan.num_micro_batches * 2) == 0
    with pytest.raises(PlanError, match="divide"):
        choose_plan(PlanOptions(pp_deg=3), spec, 4, BatchRequest(2, 1, None), "fp32")
    assert "stage 1" in describe_plan(plan, "uniform flags", "h100")


def test_default_micro_batches():
    geometry = BatchGeometry(16, 2, 1)
    assert default_micro_batches(1, BatchGeometry(16, 2, 4), 2) == 4
    assert default_micro_batches(2, geometry, 2) == 2
    assert default_micro_batches(4, BatchGeometry(8, 2, 1), 2) == 4


def test_search_and_plan_file_override(tmp_path):
    spec = _llama_spec()
    searched = choose_plan(
        PlanOptions(auto_parallel=True, memory_gb=40),
        spec,
        4,
        BatchRequest(2, 1, None),
        "bf16",
    )
    assert searched.world_size == 4 and searched.global_batch_size == 8 and searched.predicted is not None
    path = searched.save(tmp_path / "plan.json")
    same = choose_plan(
        PlanOptions(galvatron_plan=str(path)),
        spec,
        4,
        BatchRequest(99, 1, None),
        "bf16",
    )
    assert same.global_batch_size == 8  # a plan file keeps its batch ...
    bigger = choose_plan(PlanOptions(galvatron_plan=str(path)), spec, 4, BatchRequest(2, 1, 32), "bf16")
    assert bigger.global_batch_size == 32 and bigger.predicted is not None  # ... unless global_batch_size is set
    with pytest.raises(PlanError, match="launch"):
        choose_plan(
            PlanOptions(galvatron_plan=str(path)),
            spec,
            2,
            BatchRequest(2, 1, None),
            "bf16",
        )


def test_scheduler_state_maps_onto_another_group_count():
    saved = {
        "base_lrs": [0.1, 0.1, 0.1],
        "_last_lr": [0.05] * 3,
        "last_epoch": 3,
        "lr_lambdas": [None] * 3,
    }
    current = {
        "base_lrs": [0.1, 0.1],
        "_last_lr": [0.1, 0.1],
        "last_epoch": 0,
        "lr_lambdas": [None, None],
    }
    adapted = adapt_to_groups(saved, current)
    assert adapted["_last_lr"] == [0.05, 0.05] and adapted["last_epoch"] == 3
    with pytest.raises(SchedulerStateError, match="different"):
        adapt_to_groups({**saved, "base_lrs": [0.1, 0.2, 0.1]}, current)


def test_report_lists_every_stage():
    plan = choose_plan(PlanOptions(pp_deg=2), _llama_spec(), 2, BatchRequest(4, 1, None), "fp32")
    text = format_report(plan, [(0, 1.5, 0.2), (1, 2.5, 0.25)], "CUDA max allocated")
    assert "measured 250.0 ms" in text and "stage 1 peak memory" in text and "measured 2.50 GB" in text
