"""``GalvatronTrainingArguments``: ``TrainingArguments`` plus the plan options, and the request they make.

The plan fields are :class:`galvatron_hf.planner.request.PlanOptions` (declared once there, the same names,
help and defaults as `galvatron-hf search`'s flags). The Galvatron-2 names (``pp_deg``, ``global_tp_deg``,
``global_checkpoint``, ``pipeline_type``, ``seq_length``, ``model_profile``, ``attn_impl``) are still
accepted, in Python and on the command line through ``HfArgumentParser``: a ``FutureWarning`` names the new
field, and an old name and its new one given with different values is an error.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from galvatron_hf.profiler.builtin_hardware import AUTO
from galvatron_hf.planner.request import DeprecatedPlanOptions, PlanOptions, PlanRequest, fold_deprecated_names


@dataclass
class GalvatronTrainingArguments(PlanOptions, DeprecatedPlanOptions, TrainingArguments):
    """TrainingArguments plus the plan options; every inherited field keeps its Trainer meaning.

    ``hardware`` defaults to ``auto`` here: the trainer runs on the devices it plans for, so it prices plans on
    what CUDA reports (a CPU node without CUDA) and budgets the device's real memory."""

    hardware: str = field(
        default=AUTO,
        metadata={
            "help": "Hardware to price plans on: auto (default: the device this runs on), a built-in node "
            "(a100, h100, h200) or a JSON profile from `galvatron-hf profile hardware`."
        },
    )

    @property
    def place_model_on_device(self) -> bool:
        """False: the plan places the model (each rank's shards on its device, or in host memory under CPU
        offload, where the Trainer's ``model.to(device)`` would pull the offloaded shards back)."""
        return False

    def __post_init__(self) -> None:
        for note in fold_deprecated_names(self):
            warnings.warn(note, FutureWarning, stacklevel=3)
        if launched_on_cpu_only(self.use_cpu):
            # without it the Trainer's device set-up on a machine with no accelerator makes every launched
            # process rank 0 of a world of 1 (each would write every file); the CPU is what this run has
            self.use_cpu = True
        super().__post_init__()


def launched_on_cpu_only(use_cpu: bool) -> bool:
    """Several processes launched (``WORLD_SIZE`` > 1) on a machine without an accelerator, ``use_cpu`` unset."""
    if use_cpu or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    accelerator = getattr(torch, "accelerator", None)
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return not available


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
