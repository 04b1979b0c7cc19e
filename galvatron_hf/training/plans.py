"""Choosing the plan the trainer runs: a plan file, uniform-plan flags, the search, or plain data parallel.

Precedence: ``galvatron_plan`` (a file) > ``auto_parallel`` (search) > uniform flags (``pp_deg``,
``global_tp_deg``, ``dp_type``, ``global_checkpoint``, ``pipeline_type``, ``num_micro_batches``) > plain data
parallelism over every process (what ``Trainer`` does under DDP; one process when launched alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.planner.plan import Plan, PlanError
from galvatron_hf.training.batching import BatchGeometry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """The galvatron fields of ``GalvatronTrainingArguments`` (read with defaults from any TrainingArguments)."""

    auto_parallel: bool = False
    galvatron_plan: str | None = None
    pp_deg: int | None = None
    global_tp_deg: int | None = None
    dp_type: str | None = None
    global_checkpoint: bool = False
    pipeline_type: str = "gpipe"
    num_micro_batches: int | None = None
    global_batch_size: int | None = None
    memory_gb: float | None = None
    hardware: str = "h100"
    num_nodes: int | None = None
    model_profile: str | None = None
    seq_length: int | None = None
    attn_impl: str = "sdpa"  # the kernel the runtime will use (priced differently: eager keeps the scores)

    @property
    def uniform_flags_given(self) -> bool:
        return any(
            v is not None
            for v in (
                self.pp_deg,
                self.global_tp_deg,
                self.dp_type,
                self.num_micro_batches,
            )
        ) or (self.global_checkpoint)

    @property
    def source(self) -> str:
        if self.galvatron_plan:
            return f"plan file {self.galvatron_plan}"
        if self.auto_parallel:
            return "search"
        return "uniform flags" if self.uniform_flags_given else "plain data parallel (no galvatron options)"


@dataclass(frozen=True)
class BatchRequest:
    """TrainingArguments' batch fields, before the plan fixes how many data-parallel groups there are."""

    per_device_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int | None

    def geometry(self, data_size: int) -> BatchGeometry:
        return BatchGeometry.from_arguments(
            self.per_device_batch_size,
            self.gradient_accumulation_steps,
            data_size,
            self.global_batch_size,
        )


def choose_plan(
    options: PlanOptions,
    spec: ModelSpec,
    world_size: int,
    batch: BatchRequest,
    mixed_precision: str,
) -> Plan:
    """The plan to run, validated against ``spec`` and ``world_size``, with ``predicted`` filled when possible."""
    if options.galvatron_plan:
        plan = _plan_from_file(options.galvatron_plan, spec, world_size, batch)
    elif options.auto_parallel:
        return _searched_plan(options, spec, world_size, batch, mixed_precision)
    else:
        plan = _uniform(options, spec, world_size, batch, mixed_precision)
    plan.validate(world_size=world_size, spec=spec)
    return with_prediction(plan, spec, options)


def _plan_from_file(path: str, spec: ModelSpec, world_size: int, batch: BatchRequest) -> Plan:
    """A plan file fixes the global batch it was searched for, unless ``global_batch_size`` overrides it."""
    plan = Plan.load(path)
    plan.validate(world_size=world_size)
    wanted = batch.global_batch_size
    if wanted is None or wanted == plan.global_batch_size:
        return replace(plan, seq_len=spec.seq_len, predicted=None) if plan.seq_len != spec.seq_len else plan
    logger.warning(
        "plan %s was searched for a global batch of %d; training with global_batch_size=%d (prediction recomputed)",
        path,
        plan.global_batch_size,
        wanted,
    )
    return replace(plan, global_batch_size=wanted, seq_len=spec.seq_len, predicted=None)


def _uniform(
    options: PlanOptions,
    spec: ModelSpec,
    world_size: int,
    batch: BatchRequest,
    precision: str,
) -> Plan:
    from galvatron_hf.planner.search import uniform_plan

    pp = options.pp_deg or 1
    tp = options.global_tp_deg or 1
    if world_size % pp or (world_size // pp) % tp:
        raise PlanError(
            f"pp_deg={pp} x global_tp_deg={tp} does not divide the {world_size} launched processes; pick degrees "
            f"whose product divides {world_size}"
        )
    vocab_tp = tp if spec.vocab_size % tp == 0 else 1
    geometry = batch.geometry((world_size // pp) // vocab_tp)
    micro = options.num_micro_batches or default_micro_batches(pp, geometry, world_size // pp)
    return uniform_plan(
        spec,
        world_size,
        global_batch_size=geometry.global_batch_size,
        pp=pp,
        tp=tp,
        dp_type=options.dp_type or "ddp",
        checkpoint=options.global_checkpoint,
        num_micro_batches=micro,
        schedule=options.pipeline_type,
        mixed_precision=precision,
        vocab_tp=vocab_tp,
    )


def default_micro_batches(pp: int, geometry: BatchGeometry, devices_per_stage: int) -> int:
    """Accumulation steps without pipelining; with it, the most micro-batches up to max(pp, accumulation)."""
    if pp == 1:
        return geometry.gradient_accumulation_steps
    for count in range(max(pp, geometry.gradient_accumulation_steps), 0, -1):
        if geometry.global_batch_size % (count * devices_per_stage) == 0:
            return count
    return 1


def _searched_plan(
    options: PlanOptions,
    spec: ModelSpec,
    world_size: int,
    batch: BatchRequest,
    precision: str,
) -> Plan:
    from galvatron_hf.planner.search import default_memory_gb, search_plan

    hardware = load_hardware_profile(options, world_size)
    # the cost model already charges device.reserved_memory_gb; the default keeps the search's headroom
    memory_gb = options.memory_gb or default_memory_gb(hardware)
    global_batch = batch.global_batch_size or batch.geometry(world_size).global_batch_size
    result = search_plan(
        spec,
        hardware,
        world_size,
        memory_gb,
        global_batch_size=global_batch,
        mixed_precision=precision,
        attn_impl=options.attn_impl,
        compute=layer_costs(options, spec, hardware, precision),
    )
    plan = result.plan.validate(world_size=world_size, spec=spec)
    data_size = plan.vocab.dp
    BatchGeometry.from_arguments(
        batch.per_device_batch_size,
        batch.gradient_accumulation_steps,
        data_size,
        global_batch,
    )
    return plan


def load_hardware_profile(options: PlanOptions, world_size: int):
    from galvatron_hf.profiler.builtin_hardware import load_hardware

    hardware = load_hardware(options.hardware, options.num_nodes)
    if options.num_nodes is None and world_size > hardware.world_size:
        nodes = -(-world_size // hardware.gpus_per_node)
        hardware = load_hardware(options.hardware, nodes)
    return hardware


def layer_costs(options: PlanOptions, spec: ModelSpec, hardware, precision: str):
    """Measured layer costs when a model profile is given, else None (the analytic cost model)."""
    if not options.model_profile:
        return None
    from galvatron_hf.planner.profiled_costs import profiled_compute

    return profiled_compute(
        options.model_profile, spec, hardware, mixed_precision=precision, attn_impl=options.attn_impl
    )


def with_prediction(plan: Plan, spec: ModelSpec, options: PlanOptions) -> Plan:
    """Fill ``plan.predicted`` from the cost model unless it already holds one."""
    if plan.predicted is not None:
        return plan
    from galvatron_hf.planner.cost_model import estimate_plan

    hardware = load_hardware_profile(options, plan.world_size)
    compute = layer_costs(options, spec, hardware, plan.mixed_precision)
    report = estimate_plan(
        plan, spec, hardware, memory_gb=options.memory_gb, attn_impl=options.attn_impl, compute=compute
    )
    return plan.with_predicted(report.predicted)


def describe_plan(plan: Plan, source: str, hardware: str) -> str:
    """A short human summary: layout per stage, batch, and the prediction."""
    lines = [
        (
            f"galvatron plan ({source}): {plan.world_size} process{'es' if plan.world_size != 1 else ''}, pp={plan.pp} ({plan.schedule}), "
            f"global batch {plan.global_batch_size} in {plan.num_micro_batches} micro-batch(es), "
            f"{plan.mixed_precision}"
        )
    ]
    for stage in range(plan.pp):
        indices = plan.stage_layers(stage)
        kinds = sorted({(s.tp, s.dp, s.dp_type, s.checkpoint) for s in (plan.layers[i] for i in indices)})
        text = ", ".join(
            f"tp{tp} x dp{dp} ({dp_type}{', checkpointed' if ckpt else ''})" for tp, dp, dp_type, ckpt in kinds
        )
        lines.append(f"  stage {stage}: layers {indices[0]}-{indices[-1]}: {text}")
    lines.append(f"  vocab: tp{plan.vocab.tp} x dp{plan.vocab.dp} ({plan.vocab.dp_type})")
    predicted = plan.predicted
    if predicted is not None:
        memory = ", ".join(f"{gb:.2f}" for gb in predicted.peak_memory_gb)
        lines.append(
            f"  predicted ({predicted.source}, {hardware}): {predicted.step_time_s * 1e3:.3g} ms/step, "
            f"{predicted.samples_per_s:.1f} samples/s, peak memory per stage [{memory}] GB"
        )
    return "\n".join(lines)
