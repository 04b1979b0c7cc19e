"""The search space: which step configs the search visits, and the options that change it."""

from __future__ import annotations

from galvatron_hf.planner.search import search_plan, step_configs


def accumulating(configs):
    return {c for c in configs if c.pp == 1 and c.num_micro_batches > 1}


def test_pp1_gradient_accumulation_can_be_turned_off(spec_factory, h100):
    """pp = 1 plans accumulate over micro-batches by default; accumulate_without_pipeline=False keeps them to
    one micro-batch (for a runtime that runs the batch in one pass) and leaves pipelined configs as they are."""
    spec = spec_factory(num_blocks=4, hidden=4096, heads=32, ffn=11008, seq=2048)
    default = step_configs(spec, 8, 64)
    single = step_configs(spec, 8, 64, accumulate_without_pipeline=False)
    assert accumulating(default) and not accumulating(single)
    assert set(default) - accumulating(default) == set(single)
    accumulated = search_plan(spec, h100, 8, 16.0, global_batch_size=64)
    one_pass = search_plan(spec, h100, 8, 16.0, global_batch_size=64, accumulate_without_pipeline=False)
    assert (accumulated.plan.pp, accumulated.plan.num_micro_batches) == (1, 4)
    assert one_pass.plan.pp > 1 or one_pass.plan.num_micro_batches == 1
    assert one_pass.best.samples_per_s < accumulated.best.samples_per_s
