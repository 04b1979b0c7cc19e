"""Apply a Plan to an HF model with PyTorch-native parallelism (DeviceMesh, DTensor, FSDP2, pipelining).

See ``docs/runtime.md`` for the API and the batch / loss contract.
"""

from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.relayout import RelayoutTracker
from galvatron_hf.parallel.runtime import (
    ParallelModel,
    check_plan,
    count_label_items,
    materialize,
    parallelize,
    parallelize_blocks,
    parallelize_vocab,
)

__all__ = [
    "Layout",
    "LossScaler",
    "ParallelDims",
    "ParallelModel",
    "RelayoutTracker",
    "check_plan",
    "count_label_items",
    "materialize",
    "parallelize",
    "parallelize_blocks",
    "parallelize_vocab",
]
