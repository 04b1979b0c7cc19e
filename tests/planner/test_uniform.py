"""Uniform plans: one strategy for every block, blocks split evenly, errors that name the fix."""

from __future__ import annotations

import pytest

from galvatron_hf.planner.plan import PlanError, VocabStrategy
from galvatron_hf.planner.uniform import uniform_plan


def test_uniform_plan_layout_and_errors(spec_factory):
    spec = spec_factory(num_blocks=7, heads=8)
    plan = uniform_plan(
        spec, 8, global_batch_size=16, pp=2, tp=2, dp_type="zero3", checkpoint=True, num_micro_batches=4
    )
    assert plan.stage_sizes == [4, 3]
    assert {(l.tp, l.dp, l.dp_type, l.checkpoint) for l in plan.layers} == {(2, 2, "zero3", True)}
    assert plan.vocab == VocabStrategy(2, 2, "zero3")
    with pytest.raises(PlanError, match="divide the GPUs per stage"):
        uniform_plan(spec, 8, global_batch_size=16, tp=3)
    with pytest.raises(PlanError, match="does not divide 6 heads"):
        uniform_plan(spec_factory(num_blocks=2, heads=6, hidden=768), 8, global_batch_size=16, tp=4)
    with pytest.raises(PlanError, match="larger than the number of blocks"):
        uniform_plan(spec_factory(num_blocks=2), 8, global_batch_size=16, pp=4)
