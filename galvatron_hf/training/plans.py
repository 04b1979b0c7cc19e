"""The plan ``GalvatronTrainer`` runs: its arguments' request, resolved by the planner's one front door.

Sources, precedence and defaults are ``planner/request.py``'s, the same as `galvatron-hf search`: a plan
(``plan=`` or ``galvatron_plan``) > ``auto_parallel`` (search) > uniform flags (``pp``, ``tp``, ``dp_type``,
``checkpoint``, ``schedule``, ``num_micro_batches``) > plain data parallelism over every process (what
``Trainer`` does under DDP; one process when launched alone). What is the trainer's own: the batch comes from
TrainingArguments (``training/arguments.py``), and it must split over the plan's data-parallel groups, which
is checked here, before the model is sharded. When ``resume_from_checkpoint`` names a checkpoint and no
global batch is given, the plan is made (searched) for the checkpoint's global batch (``training/resume.py``).
"""

from __future__ import annotations

from transformers import TrainingArguments

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.planner.plan import Plan
from galvatron_hf.planner.request import ResolvedPlan, resolve_plan
from galvatron_hf.training.arguments import plan_request
from galvatron_hf.training.batching import BatchGeometry
from galvatron_hf.training.resume import checkpoint_batch_for_request


def resolve_training_plan(
    args: TrainingArguments,
    spec: ModelSpec,
    *,
    world_size: int,
    attn_implementation: str,
    plan: Plan | str | None = None,
    auto_parallel: bool | None = None,
    max_pp: int | None = None,
    kernels: str | None = None,
) -> ResolvedPlan:
    """The plan to train ``spec`` with on ``world_size`` processes, validated and priced.

    ``plan`` (a :class:`Plan` or a plan path) and ``auto_parallel`` are the trainer's constructor arguments;
    they override ``args``. ``max_pp`` caps a searched plan's pipeline degree (1: the runtime has no pipeline
    stages for this head); ``kernels`` is the run's kernel label, which a model profile must have timed. Raises ``BatchSizeError`` when the batch does not split over the plan's groups.
    """
    request = plan_request(
        args,
        world_size,
        attn_implementation,
        auto_parallel=auto_parallel,
        galvatron_plan=plan if isinstance(plan, str) else None,
        global_batch_size=checkpoint_batch_for_request(args) if plan is None else None,
    )
    request.max_pp = max_pp
    request.kernels = kernels
    resolved = resolve_plan(request, spec, plan=plan if isinstance(plan, Plan) else None)
    BatchGeometry.from_arguments(
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        resolved.plan.vocab.dp,
        resolved.plan.global_batch_size,
    )
    return resolved
