"""``GalvatronTrainingArguments``: ``TrainingArguments`` plus the plan options, and the request they make.

The plan fields are :class:`galvatron_hf.planner.request.PlanOptions` (declared once there, the same names,
help and defaults as `galvatron-hf search`'s flags). The Galvatron-2 names (``pp_deg``, ``global_tp_deg``,
``global_checkpoint``, ``pipeline_type``, ``seq_length``, ``model_profile``, ``attn_impl``) are still
accepted, in Python and on the command line through ``HfArgumentParser``: a ``FutureWarning`` names the new
field, and an old name and its new one given with different values is an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from galvatron_hf.planner.request import DeprecatedPlanOptions, PlanOptions, PlanRequest, fold_deprecated_names


@dataclass
class GalvatronTrainingArguments(PlanOptions, DeprecatedPlanOptions, TrainingArguments):
    """TrainingArguments plus the plan options; every inherited field keeps its Trainer meaning."""

    def __post_init__(self) -> None:
        for note in fold_deprecated_names(self):
            warnings.warn(note, FutureWarning, stacklevel=3)
        super().__post_init__()


def plan_request(
    args: TrainingArguments,
    world_size: int,
    attn_implementation: str,
    **overrides: Any,
) -> PlanRequest:
    """The plan request of ``args`` (plain data parallel for a plain TrainingArguments) on ``world_size``
    processes, priced for the attention kernel the runtime runs; ``overrides`` (the trainer's constructor
    arguments ``auto_parallel=`` / ``plan=PATH``) win when not None."""
    return PlanRequest.of(
        args,
        **{name: value for name, value in overrides.items() if value is not None},
        world_size=world_size,
        mixed_precision=mixed_precision_of(args),
        per_device_batch_size=args.per_device_train_batch_size,
        accumulation_steps=max(1, args.gradient_accumulation_steps),
        attn_implementation=attn_implementation,
    )


def mixed_precision_of(args: TrainingArguments) -> str:
    """``bf16`` / ``fp16`` flags -> the plan's mixed precision (FSDP2 MixedPrecisionPolicy; fp16 with loss scaling)."""
    if args.bf16:
        return "bf16"
    if args.fp16:
        return "fp16"
    return "fp32"
