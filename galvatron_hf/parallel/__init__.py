"""Apply a Plan to an HF model with PyTorch-native parallelism (DeviceMesh, DTensor, FSDP2, pipelining).

See ``docs/runtime.md`` for the API and the batch / loss contract. One file per technique (tensor_parallel,
activation_checkpoint, data_parallel, pipeline_parallel, relayout); ``apply_plan.parallelize`` walks them in a
fixed order; ``families/`` holds what differs per model family.
"""

from galvatron_hf.parallel.apply_plan import materialize, parallelize
from galvatron_hf.parallel.attention import (
    FULL_MASK_SDPA,
    attention_for,
    default_attn_implementation,
    set_attn_implementation,
)
from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.parallel_model import ParallelModel
from galvatron_hf.parallel.pipeline_stages import label_items
from galvatron_hf.parallel.plan_check import check_plan
from galvatron_hf.parallel.relayout import RelayoutTracker

__all__ = [
    "FULL_MASK_SDPA",
    "Layout",
    "LossScaler",
    "ParallelDims",
    "ParallelModel",
    "RelayoutTracker",
    "attention_for",
    "check_plan",
    "default_attn_implementation",
    "label_items",
    "materialize",
    "parallelize",
    "set_attn_implementation",
]
