"""The cost model: time and memory of each layer under a strategy, and of a whole plan.

Every formula is written out in ``docs/cost_model.md``; this package is that document in code. It prices
what the runtime really runs (``docs/runtime.md``): DTensor TP (Megatron-style, blocking all-reduces), FSDP2
``fully_shard`` for ddp (HSDP with shard size 1), zero2 (``reshard_after_forward=False``) and zero3, with
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over fp32 master weights, AdamW (two fp32
states), non-reentrant checkpointing, relayout between layers, and ``torch.distributed.pipelining``.

Compute is pluggable: :class:`LayerCostSource` is what the search asks for forward/backward time and
activation bytes; :class:`AnalyticCompute` answers from FLOPs and the hardware's matmul rate, a profiled
source (``planner/profiled_costs.py``) from measurements. Everything else (communication, parameter and
optimizer memory, pipeline) is priced here the same way for both.

Units: seconds, bytes; ``GB`` means 1e9 bytes everywhere in the planner.

Modules: ``units`` (byte sizes, precision), ``compute`` (the pluggable part), ``shapes`` (step shape, layer
cost), ``communication`` and ``memory`` (the two halves of :class:`CostModel`'s prices), ``layers``
(:class:`CostModel`), ``pipeline`` (stages, :func:`estimate_plan`).
"""

from galvatron_hf.constants import GB
from galvatron_hf.planner.cost_model.compute import (
    LAYER_EFFICIENCY,
    AnalyticCompute,
    LayerCostSource,
)
from galvatron_hf.planner.cost_model.layers import CostModel
from galvatron_hf.planner.cost_model.pipeline import (
    CostReport,
    StageCost,
    estimate_plan,
    pipeline_step_s,
    step_shape,
)
from galvatron_hf.planner.cost_model.shapes import LayerCost, StepShape
from galvatron_hf.planner.cost_model.units import (
    ACCUMULATED_GRAD_BYTES,
    ADAM_BYTES,
    CLIP_BYTES,
    GRAD_BYTES,
    MASTER_BYTES,
    OPTIMIZER_BYTES,
    TRANSIENT_GRAD_BYTES,
    Precision,
)

__all__ = [
    "ACCUMULATED_GRAD_BYTES",
    "ADAM_BYTES",
    "CLIP_BYTES",
    "GB",
    "GRAD_BYTES",
    "LAYER_EFFICIENCY",
    "MASTER_BYTES",
    "OPTIMIZER_BYTES",
    "TRANSIENT_GRAD_BYTES",
    "AnalyticCompute",
    "CostModel",
    "CostReport",
    "LayerCost",
    "LayerCostSource",
    "Precision",
    "StageCost",
    "StepShape",
    "estimate_plan",
    "pipeline_step_s",
    "step_shape",
    "step_shape",
]
