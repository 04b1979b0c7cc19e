"""The runtime's plan check: ``Plan.validate`` plus the one thing only the runtime knows.

``Plan.validate`` (planner/plan.py, pure Python) checks the plan alone, then against the launched world size
and the model's spec, listing every problem with its fix. What it cannot know is whether the model's family
runs as pipeline stages: that is the family's runtime half (``parallel/families``). Everything is checked
before any collective runs, so a bad plan fails with a message instead of a hang.
"""

from __future__ import annotations

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.families import family_for
from galvatron_hf.parallel.sequence_parallel import SEQUENCE_PARALLEL_FAMILIES
from galvatron_hf.planner.plan import Plan, PlanError


def check_plan(plan: Plan, spec: ModelSpec, world_size: int | None = None) -> None:
    """Raise :class:`PlanError` naming the fix if ``plan`` cannot run ``spec`` on ``world_size`` processes."""
    plan.validate(world_size=world_size, spec=spec)
    if any(layer.sp for layer in plan.layers) and spec.family not in SEQUENCE_PARALLEL_FAMILIES:
        raise PlanError(
            f"sequence parallelism (sp) runs on the {'/'.join(SEQUENCE_PARALLEL_FAMILIES)} families, not on "
            f"{spec.family}: set sp to false on every layer"
        )
    unsupported = _not_yet_run(plan)
    if unsupported:
        raise PlanError(f"this runtime does not run {unsupported} yet; search or write a plan without it")
    if plan.pp > 1:
        refusal = family_for(spec).pipeline_refusal(spec)
        if refusal is not None:
            raise PlanError(f"plan cannot be pipelined: {refusal}")


def _not_yet_run(plan: Plan) -> str:
    """Plan-format-2 options whose runtime part is not in this version (refused, never ignored)."""
    parts = []
    if plan.cp > 1:
        parts.append(
            f"context parallelism (cp={plan.cp}): torch's context_parallel shards only the CUDA SDPA kernels (the "
            "CPU attention op has no sharding rule) and its CUDA part is not in this runtime"
        )
    return ", ".join(parts)
