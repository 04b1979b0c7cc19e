"""Per-block activation checkpointing (non-reentrant), without a wrapper module.

The block's own ``forward`` is replaced on the instance by one that runs the original under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)``. Nothing is inserted into the module tree, so
parameter names stay HF's; module hooks (FSDP unshard, relayout) run outside the checkpointed region and
are not repeated by the recomputation.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.model_parts import present_blocks
from galvatron_hf.planner.plan import Plan


def apply_ac(module: nn.Module, spec: ModelSpec, plan: Plan) -> None:
    """Checkpoint every block of ``module`` (a model or a pipeline stage) whose strategy says so."""
    for index, _layer, block in present_blocks(module, spec):
        if plan.layers[index].checkpoint:
            apply_activation_checkpointing(block)


def apply_activation_checkpointing(block: nn.Module) -> None:
    """Recompute ``block``'s forward during backward instead of keeping its activations."""
    if getattr(block, "_galvatron_checkpointed", False):
        return
    original = block.forward

    @functools.wraps(original)
    def checkpointed_forward(*args, **kwargs):
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed_forward
    block._galvatron_checkpointed = True
