"""Fast checks (no launch) of the trainer's pieces: batch geometry, joining loader batches, argument parsing,
plan choice, scheduler state across layouts, the report."""

from __future__ import annotations

import pytest
import torch

from galvatron_hf.planner.request import PlanRequest, resolve_plan
from galvatron_hf.training.batching import (
    BatchGeometry,
    BatchSizeError,
    merge_micro_batches,
    pad_token_id,
)
from galvatron_hf.training.arguments import plan_request
from galvatron_hf.training.plans import resolve_training_plan
from galvatron_hf.training.report import format_report, measured_of
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


def test_batch_summary_and_pad_token():
    geometry = BatchGeometry.from_arguments(4, 2, data_size=3, global_batch_size=None)
    assert geometry.summary() == (
        "galvatron batch: global 24 = 4 per loader batch x 3 data-parallel group(s) x 2 accumulation step(s)"
    )
    import transformers as tf

    t5 = tf.T5ForConditionalGeneration(tf.T5Config(num_layers=1, d_model=8, d_ff=8, pad_token_id=5))
    assert pad_token_id(t5) == 5
    assert pad_token_id(torch.nn.Linear(2, 2)) == 0  # no config: token keys pad with 0


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


def _arguments(**values):
    from galvatron_hf.trainer import GalvatronTrainingArguments

    values = {"hardware": "h100", **values}  # plans priced as on a GPU node (the trainer's default: this CPU)
    return GalvatronTrainingArguments(output_dir="x", use_cpu=True, report_to="none", **values)


def test_parser_shows_the_plan_names_and_accepts_the_galvatron2_names():
    from transformers import HfArgumentParser

    from galvatron_hf.trainer import GalvatronTrainingArguments

    parser = HfArgumentParser(GalvatronTrainingArguments)
    text = parser.format_help()
    for flag in (
        "--auto_parallel",
        "--galvatron_plan",
        "--pp PP",
        "--tp TP",
        "--dp_type",
        "--checkpoint",
        "--schedule",
        "--num_micro_batches",
        "--global_batch_size",
        "--memory_gb",
        "--hardware",
        "--profile",
        "--seq_len",
        "--attn_implementation",
    ):
        assert flag in text
    assert "data-parallel" in text  # help metadata is shown
    assert "--pp_deg" not in text and "--pipeline_type" not in text  # the old names are accepted, not shown
    base = ["--output_dir", "x", "--use_cpu", "--report_to", "none"]
    with pytest.warns(FutureWarning) as warned:
        (args,) = parser.parse_args_into_dataclasses(
            [*base, "--pp_deg", "2", "--global_checkpoint", "--pipeline_type", "gpipe", "--dp_type", "zero3"]
        )
    assert [str(w.message) for w in warned] == [
        "pp_deg (--pp_deg) is deprecated: use pp (--pp)",
        "global_checkpoint (--global_checkpoint) is deprecated: use checkpoint (--checkpoint)",
        "pipeline_type (--pipeline_type) is deprecated: use schedule (--schedule)",
    ]
    assert (args.pp, args.checkpoint, args.schedule, args.dp_type, args.pp_deg) == (2, True, "gpipe", "zero3", None)
    request = plan_request(args, 4, "sdpa", auto_parallel=True)
    assert (request.pp, request.auto_parallel, request.plan_source) == (2, True, "search")
    with pytest.raises(ValueError, match="give --pp only"):
        parser.parse_args_into_dataclasses([*base, "--pp_deg", "2", "--pp", "4"])
    with pytest.warns(FutureWarning, match="use seq_len"):
        assert _arguments(seq_length=16, seq_len=16).seq_len == 16  # one value under both names is fine


def test_a_plain_training_arguments_means_data_parallel():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="x", use_cpu=True, report_to="none", per_device_train_batch_size=2)
    request = plan_request(args, 4, "sdpa")
    assert not request.auto_parallel and not request.uniform_flags_given and request.mixed_precision == "fp32"
    plan = resolve_training_plan(args, _llama_spec(), world_size=4, attn_implementation="sdpa").plan
    assert plan.pp == 1 and plan.global_batch_size == 8
    assert {(s.tp, s.dp, s.dp_type) for s in plan.layers} == {(1, 4, "ddp")}
    assert plan.predicted is not None  # priced by the analytic cost model


def test_trainer_plans_follow_the_arguments_batch():
    spec = _llama_spec()
    args = _arguments(
        pp=2, tp=2, dp_type="zero3", checkpoint=True, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        bf16=True,
    )
    resolved = resolve_training_plan(args, spec, world_size=8, attn_implementation="sdpa")
    plan = resolved.plan
    assert plan.pp == 2 and plan.schedule == "1f1b" and plan.global_batch_size == 2 * 2 * 2
    assert plan.mixed_precision == "bf16" and resolved.source == "uniform flags"
    with pytest.raises(BatchSizeError, match="multiple of 6"):  # refused before the model is sharded
        resolve_training_plan(
            _arguments(global_batch_size=16, gradient_accumulation_steps=3, num_micro_batches=1),
            spec,
            world_size=2,
            attn_implementation="sdpa",
        )


def test_constructor_arguments_override_the_plan_source(tmp_path):
    spec = _llama_spec()
    args = _arguments(pp=2, per_device_train_batch_size=2, bf16=True, memory_gb=40)
    searched = resolve_training_plan(args, spec, world_size=4, attn_implementation="sdpa", auto_parallel=True)
    assert searched.source == "search" and searched.plan.global_batch_size == 8
    path = searched.plan.save(tmp_path / "plan.json")
    with pytest.raises(ValueError, match="is the whole plan; --pp would be ignored"):  # a plan file and pp=2
        resolve_training_plan(args, spec, world_size=4, attn_implementation="sdpa", plan=str(path))
    args = _arguments(per_device_train_batch_size=2, bf16=True, memory_gb=40)
    from_file = resolve_training_plan(args, spec, world_size=4, attn_implementation="sdpa", plan=str(path))
    assert from_file.plan == searched.plan and from_file.source == f"plan file {path}"
    given = resolve_training_plan(args, spec, world_size=4, attn_implementation="sdpa", plan=searched.plan)
    assert given.source == "given plan"


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
    request = PlanRequest(pp=2, world_size=2, per_device_batch_size=4, mixed_precision="fp32")
    plan = resolve_plan(request, _llama_spec()).plan
    measured = measured_of(plan, [(0, 1.5, 0.2), (1, 2.5, 0.25)], "CUDA max allocated", steps=3)
    assert measured.step_time_s == 0.25 and measured.peak_memory_gb == (1.5, 2.5)
    text = format_report(plan, measured)
    assert "measured 250.0 ms" in text and "stage 1 peak memory" in text and "measured 2.50 GB" in text
