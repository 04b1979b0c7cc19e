"""The one plan front door (planner/request.py): sources, defaults, deprecated names, refusals, and the summary."""

from __future__ import annotations

import argparse
import logging
import math

import pytest

from galvatron_hf.planner.plan import PlanError
from galvatron_hf.planner.request import (
    PlanOptions,
    PlanRequest,
    default_micro_batches,
    fold_deprecated_names,
    resolve_plan,
)
from galvatron_hf.planner.summary import format_summary
from galvatron_hf.profiler.builtin_hardware import hardware_for


def test_plain_data_parallel_is_a_priced_uniform_plan(spec_factory):
    spec = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128)
    resolved = resolve_plan(PlanRequest(world_size=4, per_device_batch_size=2, mixed_precision="fp32"), spec)
    plan = resolved.plan
    assert resolved.source == "plain data parallel (no galvatron options)" and resolved.search is None
    assert (plan.pp, plan.global_batch_size, plan.num_micro_batches) == (1, 8, 1)
    assert {(s.tp, s.dp, s.dp_type, s.checkpoint) for s in plan.layers} == {(1, 4, "ddp", False)}
    assert plan.predicted is not None and plan.predicted.memory_budget_gb == resolved.memory_gb == 73.6
    assert resolved.fits and resolved.hardware.name == "builtin:h100"


def test_uniform_defaults_batch_micro_batches_and_schedule(spec_factory):
    spec = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128)
    request = PlanRequest(
        pp=2, tp=2, dp_type="zero3", checkpoint=True, world_size=8, per_device_batch_size=2, accumulation_steps=2
    )
    plan = resolve_plan(request, spec).plan
    # batch = per-device 2 x 2 data-parallel groups x 2 accumulation steps; the most micro-batches up to
    # max(pp, accumulation) that split it over the stage's 4 devices; 1F1B since M >= pp
    assert (plan.global_batch_size, plan.num_micro_batches, plan.schedule) == (8, 2, "1f1b")
    assert {(s.tp, s.dp, s.dp_type, s.checkpoint) for s in plan.layers} == {(2, 2, "zero3", True)}
    assert plan.vocab.tp == 2
    # without a per-device batch (the search command): one sample per data-parallel group and micro-batch
    plan = resolve_plan(PlanRequest(pp=2, num_micro_batches=4, world_size=8), spec).plan
    assert (plan.global_batch_size, plan.num_micro_batches, plan.schedule) == (16, 4, "1f1b")
    # too few micro-batches for 1F1B: GPipe; an explicit schedule is kept
    plan = resolve_plan(PlanRequest(pp=2, world_size=2), spec).plan
    assert (plan.num_micro_batches, plan.schedule) == (1, "gpipe")
    plan = resolve_plan(PlanRequest(pp=2, num_micro_batches=2, schedule="gpipe", world_size=2), spec).plan
    assert plan.schedule == "gpipe"
    # a vocabulary tp cannot split stays whole
    odd_vocab = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=127)
    assert resolve_plan(PlanRequest(tp=2, world_size=2), odd_vocab).plan.vocab.tp == 1


def test_default_micro_batches():
    assert default_micro_batches(1, 4, 16, 2) == 4
    assert default_micro_batches(2, 1, 16, 2) == 2
    assert default_micro_batches(4, 1, 8, 2) == 4
    assert default_micro_batches(4, 1, 6, 2) == 3


def test_search_plan_file_and_given_plan(tmp_path, spec_factory, caplog):
    spec = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128)
    searched = resolve_plan(
        PlanRequest(auto_parallel=True, memory_gb=40, world_size=4, per_device_batch_size=2), spec
    )
    assert searched.source == "search" and searched.search is not None
    assert searched.plan.global_batch_size == 8  # per-device 2 x 4 devices: what DDP would train with
    path = searched.plan.save(tmp_path / "plan.json")
    same = resolve_plan(PlanRequest(galvatron_plan=str(path), world_size=4, per_device_batch_size=99), spec)
    assert same.plan == searched.plan and same.report is None  # a plan file keeps its batch and prediction
    assert same.source == f"plan file {path}"
    with caplog.at_level(logging.WARNING):
        bigger = resolve_plan(PlanRequest(galvatron_plan=str(path), global_batch_size=32, world_size=4), spec)
    assert bigger.plan.global_batch_size == 32 and bigger.report is not None and "searched for" in caplog.text
    with pytest.raises(PlanError, match="launch"):
        resolve_plan(PlanRequest(galvatron_plan=str(path), world_size=2), spec)
    given = resolve_plan(PlanRequest(auto_parallel=True, world_size=4), spec, plan=bigger.plan)
    assert given.source == "given plan" and given.plan == bigger.plan


def test_refusals_name_the_flag(spec_factory):
    spec = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128)
    with pytest.raises(PlanError, match="divide"):
        resolve_plan(PlanRequest(pp=3, world_size=4), spec)
    for bad in ({"num_micro_batches": 0}, {"global_batch_size": 0}, {"pp": -1}):
        with pytest.raises(ValueError, match=f"--{next(iter(bad))} must be >= 1"):
            resolve_plan(PlanRequest(world_size=4, **bad), spec)
    for budget in (0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="--memory_gb"):
            resolve_plan(PlanRequest(world_size=4, memory_gb=budget), spec)


def test_deprecated_names_fold_onto_the_plan_names():
    args = argparse.Namespace(pp_deg=2, pp=None, global_checkpoint=True, checkpoint=None, attn_impl="eager")
    notes = fold_deprecated_names(args)
    assert (args.pp, args.checkpoint, args.attn_implementation, args.pp_deg) == (2, True, "eager", None)
    assert notes[0] == "pp_deg (--pp_deg) is deprecated: use pp (--pp)" and len(notes) == 3
    same = argparse.Namespace(seq_length=16, seq_len=16)
    assert fold_deprecated_names(same) and same.seq_len == 16  # the same value twice is fine
    with pytest.raises(ValueError, match="give --tp only"):
        fold_deprecated_names(argparse.Namespace(global_tp_deg=2, tp=4))


def test_options_of_any_object_and_their_source():
    options = PlanOptions.of(argparse.Namespace(pp=2, hardware=None))
    assert (options.pp, options.hardware, options.plan_source) == (2, "h100", "uniform flags")
    assert PlanOptions.of(object()).plan_source.startswith("plain data parallel")
    assert PlanOptions(auto_parallel=True, pp=2).plan_source == "search"


def test_hardware_for_fills_as_many_nodes_as_the_devices_need(tmp_path):
    assert hardware_for("h100", 8).num_nodes == 1
    assert hardware_for("h100", 9).num_nodes == 2
    assert hardware_for("a100", 8, num_nodes=2).num_nodes == 2
    measured = hardware_for("h200", 16).save(tmp_path / "h200.json")
    assert hardware_for(str(measured), 8).num_nodes == 1  # a profile file follows the devices too


def test_summary_prints_header_sources_plan_and_prediction(spec_factory):
    spec = spec_factory(seq=16, hidden=256, ffn=512, heads=4, vocab=128, name="toy")
    resolved = resolve_plan(PlanRequest(pp=2, world_size=4, num_micro_batches=2, mixed_precision="fp32"), spec)
    text = format_summary(resolved)
    lines = text.splitlines()
    assert lines[0].startswith("galvatron plan (uniform flags): toy (LlamaForCausalLM")
    assert "on 4 devices (1 node(s) x 8, builtin:h100), 73.6 GB per device, fp32, sdpa attention" in lines[0]
    assert "analytic" in text and "stage 1" in text and "peak memory per stage (GB)" in text
    assert "plan: pp=2, schedule 1f1b, global batch 4 = 2 micro-batch(es) of 2" in text
