"""``model.generate`` through a parallelised model (plans with pp = 1): no gathered copy of the weights.

``enable_generation(parallel_model)`` wraps the HF module's ``generate`` once, so the Trainer's generation
(``Seq2SeqTrainer``'s ``predict_with_generate``) and a user's own ``trainer.model.generate(...)`` run through
the sharded model as its forward does:

- FSDP2: ``generate`` is registered as an FSDP forward method (``register_fsdp_forward_method``), so the
  parameters no block owns (embeddings, final norms, head) are all-gathered for the whole call: an
  encoder-decoder's ``generate`` runs its encoder outside the root ``forward``. Each block still all-gathers
  its own parameters in its forward, and ZeRO-3 frees them after it, so no rank ever holds the whole model.
- Tensor parallelism and per-layer layouts: the block hooks do their usual work; the relayout tracker is
  started for the call (the encoder's call does not pass the root's pre-hook).
- Every rank must run the same number of forwards (each one holds collectives), so ``synced_gpus`` is on when
  more than one process runs: a rank whose sequences have all ended keeps stepping until every rank is done.
  ``synced_gpus=False`` there is refused (it would hang).

With pp > 1 the module is one pipeline stage, which cannot generate: ``generate`` is refused with the fixes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import register_fsdp_forward_method

PIPELINE_GENERATION_MESSAGE = (
    "generation needs the whole model on each rank's forward; with pipeline parallelism (pp = {pp}) this rank "
    "holds one stage. Evaluate the loss only (predict_with_generate=False, or no compute_metrics), generate from "
    "an exported model (trainer.save_model(dir) then from_pretrained(dir).generate), or use a plan with pp = 1"
)


class GenerationError(ValueError):
    """A generation this layout cannot run as asked; the message names the fix."""


def enable_generation(parallel_model: Any) -> None:
    """Make ``parallel_model.module.generate`` run through the parallelised model (idempotent)."""
    module = parallel_model.module
    if getattr(module, "_galvatron_generate", False):
        return
    if not hasattr(module, "generate"):
        return  # not a generating model (a classifier): nothing to wrap
    if parallel_model.plan.pp > 1:
        module.generate = functools.partial(_refuse_pipeline, parallel_model.plan.pp)
    else:
        register_fsdp_forward_method(module, "generate")  # a no-op if the root is not an FSDP module
        module.generate = functools.partial(_generate, parallel_model, module.generate)
    module._galvatron_generate = True


def check_generation(pp: int) -> None:
    """Refuse, on every rank before any collective, generation with a pipeline plan."""
    if pp > 1:
        raise GenerationError(PIPELINE_GENERATION_MESSAGE.format(pp=pp))


def _refuse_pipeline(pp: int, *args: Any, **kwargs: Any) -> torch.Tensor:
    raise GenerationError(PIPELINE_GENERATION_MESSAGE.format(pp=pp))


def _generate(parallel_model: Any, fsdp_generate, *args: Any, **kwargs: Any):
    """HF ``generate`` with ``synced_gpus`` over all ranks and the relayout tracker started for the call."""
    kwargs = synced_generate_kwargs(kwargs, dist.get_world_size() if dist.is_initialized() else 1)
    rows = _batch_rows(args, kwargs)
    tracker = parallel_model.tracker
    if rows is not None:
        tracker.begin(rows * parallel_model.data_size)
    try:
        return fsdp_generate(*args, **kwargs)
    finally:
        tracker.end()


def synced_generate_kwargs(kwargs: dict[str, Any], world_size: int) -> dict[str, Any]:
    """``kwargs`` with ``synced_gpus`` on when several processes run (an explicit False there is refused)."""
    if world_size <= 1:
        return kwargs
    if kwargs.get("synced_gpus") is False:
        raise GenerationError(
            f"generate(synced_gpus=False) on {world_size} processes would hang: every rank must run the same "
            "number of forwards (the sharded layers all-gather and all-reduce in each); leave synced_gpus unset"
        )
    return {**kwargs, "synced_gpus": True}


def _batch_rows(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """This rank's samples: dim 0 of the first batch tensor (``input_ids``, ``inputs_embeds``, ...)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0])
    return None
