"""One plan front door: the request `galvatron-hf search` and ``GalvatronTrainer`` both make, resolved once.

:class:`PlanOptions` holds what a user gives, in the Plan's own names (``pp``, ``tp``, ``dp_type``,
``checkpoint``, ``schedule``, ``num_micro_batches``, ``seq_len``, ``profile``, ``attn_implementation``, ...);
it is declared here once: ``GalvatronTrainingArguments`` inherits it and `galvatron-hf search` builds its
flags from it. :class:`PlanRequest` adds what the front door knows (devices, precision, batch), and
:func:`resolve_plan` turns it into a validated plan with its prediction (``planner/summary.py`` prints it).

Defaults, decided here once:

* source: a plan file > the search (``auto_parallel``) > uniform flags > plain data parallelism (a uniform
  plan with every default). `galvatron-hf search` searches unless a uniform flag is given.
* uniform plan: pp 1, tp 1 (the embedding and head take tp when it divides the vocabulary), ddp, no
  checkpointing; micro-batches: the accumulation steps without a pipeline, with one the largest count up to
  ``max(pp, accumulation steps)`` that splits the batch over the stage; schedule: 1F1B when
  ``num_micro_batches >= pp``, else GPipe (what the search picks; the runtime runs both).
* global batch: ``global_batch_size``; else ``per_device_batch_size x data-parallel groups x accumulation
  steps`` (the trainer's rule; the search is asked for it over every device); a request without a per-device
  batch (`galvatron-hf search`) takes one sample per data-parallel group and micro-batch for a uniform plan,
  and searches the batch.
* hardware: the built-in h100 node, as many nodes as the devices fill; memory budget: the device's memory less
  ``DEFAULT_MEMORY_HEADROOM``; attention: sdpa (the trainer passes the kernel its runtime will run).

Pure Python (no torch.distributed): `galvatron-hf search` runs on a laptop.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field, fields, make_dataclass, replace
from typing import TYPE_CHECKING, Any, get_type_hints

from galvatron_hf.planner.plan import DP_TYPES, SCHEDULES, Plan, PlanError

if TYPE_CHECKING:
    from collections.abc import Callable

    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.planner.cost_model import CostReport
    from galvatron_hf.planner.search import SearchResult
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"
UNIFORM_OPTIONS = ("pp", "tp", "dp_type", "checkpoint", "schedule", "num_micro_batches", "sp", "cp", "offload")
UNIFORM_SWITCHES = ("checkpoint", "sp", "offload")  # booleans: given when True
# Galvatron-2 names of the options: still accepted, with a note naming the new one
DEPRECATED_NAMES = {
    "pp_deg": "pp",
    "global_tp_deg": "tp",
    "global_checkpoint": "checkpoint",
    "pipeline_type": "schedule",
    "seq_length": "seq_len",
    "model_profile": "profile",
    "attn_impl": "attn_implementation",
}


@dataclass
class PlanOptions:
    """The plan options a user gives. Help texts are shown by `galvatron-hf search --help` and by
    ``HfArgumentParser(GalvatronTrainingArguments)``; ``None`` means "the default above"."""

    auto_parallel: bool = field(
        default=False,
        metadata={"help": "Search the fastest plan that fits --memory_gb (measured layer costs with --profile)."},
    )
    galvatron_plan: str | None = field(
        default=None,
        metadata={"help": "A plan JSON (`galvatron-hf search --output`); wins over --auto_parallel and uniform flags."},
    )
    pp: int | None = field(default=None, metadata={"help": "Uniform plan: pipeline stages (default 1)."})
    tp: int | None = field(
        default=None,
        metadata={"help": "Uniform plan: tensor-parallel degree of every block (default 1)."},
    )
    dp_type: str | None = field(
        default=None,
        metadata={"help": "Uniform plan: data parallelism of every block (default ddp).", "choices": DP_TYPES},
    )
    checkpoint: bool = field(
        default=False,
        metadata={"help": "Uniform plan: activation checkpointing on every block."},
    )
    sp: bool = field(
        default=False,
        metadata={"help": "Uniform plan: sequence parallelism in every block (Megatron-style; needs --tp > 1)."},
    )
    cp: int | None = field(
        default=None,
        metadata={"help": "Uniform plan: context parallelism, each sequence split over this many ranks (default 1)."},
    )
    offload: bool = field(
        default=False,
        metadata={
            "help": "Uniform plan: keep parameters, gradients and optimizer states in host memory (FSDP2 "
            "CPUOffloadPolicy). The search decides it: it offloads when nothing fits in device memory."
        },
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "help": "Uniform plan: pipeline schedule (default: 1f1b when num_micro_batches >= pp, else gpipe).",
            "choices": SCHEDULES,
        },
    )
    num_micro_batches: int | None = field(
        default=None,
        metadata={
            "help": "Uniform plan: micro-batches per step (default: the accumulation steps without a pipeline; "
            "with one, the largest count up to max(pp, accumulation steps) that splits the batch)."
        },
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Samples per optimizer step over all data-parallel groups (default: per-device batch x "
            "data-parallel groups x accumulation steps; `galvatron-hf search`: searched)."
        },
    )
    memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "Memory budget per device in GB (1e9 bytes; default: the device's memory less 8 percent "
            "headroom for allocator fragmentation)."
        },
    )
    hardware: str = field(
        default="h100",
        metadata={
            "help": "Hardware to price plans on: a built-in node (a100, h100, h200), auto (the device this runs "
            "on: CUDA's name, memory and count, or a CPU node) or a JSON profile from `galvatron-hf profile "
            "hardware` (default h100; GalvatronTrainer: auto)."
        },
    )
    num_nodes: int | None = field(
        default=None,
        metadata={"help": "Nodes in the cluster (default: as many as the devices fill)."},
    )
    gpus_per_node: int | None = field(
        default=None,
        metadata={
            "help": "GPUs used on each node (default: the devices / --num_nodes, else full nodes); collectives "
            "are priced by how many of a group's ranks share a node."
        },
    )
    profile: str | None = field(
        default=None,
        metadata={"help": "Model profile JSON (`galvatron-hf profile model`): measured layer costs, not FLOPs."},
    )
    seq_len: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per sample to plan for (default: the trainer's first training sample; "
            "`galvatron-hf search`: the model's default)."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel to price (and the trainer to run; default: flash_attention_2 on CUDA with "
            "flash-attn installed, else sdpa).",
            "choices": ATTN_IMPLEMENTATIONS,
        },
    )

    @classmethod
    def of(cls, source: Any) -> PlanOptions:
        """The options held by ``source`` (TrainingArguments, an argparse Namespace, ...); defaults for the
        ones it lacks or leaves None."""
        values = {f.name: getattr(source, f.name, None) for f in fields(PlanOptions)}
        return cls(**{name: value for name, value in values.items() if value is not None})

    @property
    def uniform_flags_given(self) -> bool:
        given = [getattr(self, name) for name in UNIFORM_OPTIONS if name not in UNIFORM_SWITCHES]
        return any(getattr(self, name) for name in UNIFORM_SWITCHES) or any(value is not None for value in given)

    @property
    def plan_source(self) -> str:
        """Where the plan comes from, as the printed summary names it."""
        if self.galvatron_plan:
            return f"plan file {self.galvatron_plan}"
        if self.auto_parallel:
            return "search"
        return "uniform flags" if self.uniform_flags_given else "plain data parallel (no galvatron options)"


def _deprecated_fields() -> list[tuple[str, Any, Any]]:
    """One hidden field per Galvatron-2 name, typed as its new name (None: not given)."""
    hints = get_type_hints(PlanOptions)
    by_name = {f.name: f for f in fields(PlanOptions)}
    declared = []
    for old, new in DEPRECATED_NAMES.items():
        metadata: dict[str, Any] = {"help": argparse.SUPPRESS}
        if by_name[new].metadata.get("choices"):
            metadata["choices"] = by_name[new].metadata["choices"]
        if hints[new] is bool:  # HfArgumentParser: `--global_checkpoint` alone means True, as before
            metadata.update(nargs="?", const=True)
        declared.append((old, hints[new] | None, field(default=None, metadata=metadata)))
    return declared


DeprecatedPlanOptions = make_dataclass(
    "DeprecatedPlanOptions",
    _deprecated_fields(),
    namespace={
        "__module__": __name__,
        "__doc__": "The Galvatron-2 names of PlanOptions fields (``DEPRECATED_NAMES``), hidden in --help.",
    },
)


def fold_deprecated_names(options: Any) -> list[str]:
    """Move values given under Galvatron-2 names onto the Plan's names (in place) and return one deprecation
    note per old name used. An old name and its new name given with different values is an error."""
    defaults = {f.name: f.default for f in fields(PlanOptions)}
    notes = []
    for old, new in DEPRECATED_NAMES.items():
        value = getattr(options, old, None)
        if value is None:
            continue
        current = getattr(options, new, None)
        if current not in (None, defaults[new]) and current != value:
            raise ValueError(
                f"{old}={value!r} and {new}={current!r} disagree: {old} is the deprecated name of {new}; give "
                f"--{new} only"
            )
        setattr(options, new, value)
        setattr(options, old, None)
        notes.append(f"{old} (--{old}) is deprecated: use {new} (--{new})")
    return notes


@dataclass(kw_only=True)
class PlanRequest(PlanOptions):
    """:class:`PlanOptions` plus what the front door knows: how many devices, which precision, and (the
    trainer) the batch its TrainingArguments imply."""

    world_size: int
    mixed_precision: str = "bf16"
    per_device_batch_size: int | None = None  # the trainer's per_device_train_batch_size; None: `search`
    accumulation_steps: int = 1
    max_global_batch_size: int | None = None  # the largest batch a search without global_batch_size tries
    max_pp: int | None = None  # the runtime's limit: 1 when it cannot run the model's head as pipeline stages
    kernels: str | None = None  # the trainer's kernel label (a profile must have measured the same); None: `search`

    @classmethod
    def of(cls, source: Any, **values: Any) -> PlanRequest:
        """The request for the options of ``source`` (see :meth:`PlanOptions.of`); ``values`` set the front
        door's fields and override options."""
        options = PlanOptions.of(source)
        return cls(**{**{f.name: getattr(options, f.name) for f in fields(PlanOptions)}, **values})

    @property
    def attention(self) -> str:
        return self.attn_implementation or DEFAULT_ATTN_IMPLEMENTATION


@dataclass(frozen=True)
class ResolvedPlan:
    """A validated plan with its prediction, and what it was priced with (the summary prints all of it)."""

    request: PlanRequest
    spec: ModelSpec
    hardware: HardwareProfile
    memory_gb: float
    plan: Plan
    source: str  # "search", "uniform flags", "plan file PATH", "given plan", "plain data parallel (...)"
    figure_sources: tuple[str, ...]  # where compute and memory figures come from, then profile mismatches
    report: CostReport | None = None  # None: the plan file's own prediction was kept
    search: SearchResult | None = None  # the search's comparisons, when the plan was searched

    @property
    def notes(self) -> tuple[str, ...]:
        """What the prediction depends on that a reader might not expect (printed under the plan)."""
        return pipeline_notes(self.plan)

    @property
    def fits(self) -> bool:
        peak = self.report.peak_memory_gb if self.report is not None else max(self.plan.predicted.peak_memory_gb)
        return peak <= self.memory_gb + 1e-9


@dataclass(frozen=True)
class _Pricing:
    """What every plan of one request is priced with."""

    spec: ModelSpec
    hardware: HardwareProfile
    memory_gb: float
    attention: str
    compute: Any  # LayerCostSource, or None for the analytic one
    figure_sources: tuple[str, ...]


def resolve_plan(
    request: PlanRequest,
    spec: ModelSpec,
    plan: Plan | None = None,
    progress: Callable[[str], None] | None = None,
) -> ResolvedPlan:
    """The plan ``request`` asks for, validated against ``spec`` and the world size, with its prediction.

    ``plan``: a :class:`Plan` given directly (the trainer's ``plan=``) wins over every other source.
    ``progress`` receives the search's progress lines. Raises ``ValueError`` (``PlanError``,
    ``HardwareProfileError``, ``ImpossibleBudgetError``) naming the fix.
    """
    check_request(request)
    pricing = _pricing(request, spec)
    if plan is None and not request.galvatron_plan and request.auto_parallel:
        return _searched(request, pricing, progress)
    chosen, source = _chosen(request, spec, plan)
    chosen = chosen.validate(world_size=request.world_size, spec=spec)
    check_precision(chosen, request.mixed_precision, source)
    report = None
    if chosen.predicted is None:
        from galvatron_hf.planner.cost_model import estimate_plan

        report = estimate_plan(
            chosen,
            spec,
            pricing.hardware,
            memory_gb=pricing.memory_gb,
            attn_impl=pricing.attention,
            compute=pricing.compute,
        )
        chosen = chosen.with_predicted(report.predicted)
    return _resolved(request, pricing, chosen, source, report)


def _chosen(request: PlanRequest, spec: ModelSpec, plan: Plan | None) -> tuple[Plan, str]:
    """The plan a request names without searching, and its source."""
    if plan is not None:
        return plan, "given plan"
    if request.galvatron_plan:
        return _plan_from_file(request, spec), request.plan_source
    return _uniform(request, spec), request.plan_source


def pipeline_notes(plan: Plan) -> tuple[str, ...]:
    """A pipeline with fewer micro-batches than stages leaves stages idle: say how much and how to change it."""
    if plan.pp == 1 or plan.num_micro_batches >= plan.pp:
        return ()
    idle = (plan.pp - 1) / (plan.num_micro_batches + plan.pp - 1)
    return (
        f"pp={plan.pp} with {plan.num_micro_batches} micro-batch(es): each stage waits for the others "
        f"{idle:.0%} of the step (the pipeline bubble), which the prediction includes; more micro-batches "
        "(--num_micro_batches, with a --global_batch_size they split) overlap the stages",
    )


def check_request(request: PlanRequest) -> None:
    """Refuse counts below one and budgets that are not a positive number, naming the flag."""
    if request.world_size < 1:
        raise ValueError(
            f"the number of devices (--num_gpus, or the processes launched) must be >= 1, got {request.world_size}"
        )
    for name in ("pp", "tp", "num_micro_batches", "global_batch_size", "max_global_batch_size", "num_nodes", "seq_len"):
        value = getattr(request, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if request.memory_gb is not None and not (math.isfinite(request.memory_gb) and request.memory_gb > 0):
        raise ValueError(f"--memory_gb must be a number of GB > 0, got {request.memory_gb}")
    if request.num_nodes is not None and (request.num_nodes > request.world_size or request.world_size % request.num_nodes):
        raise ValueError(
            f"--num_nodes {request.num_nodes} does not fit {request.world_size} devices: every node holds the same "
            f"number of devices, at least one; give a divisor of {request.world_size}"
        )
    check_plan_sources(request)


def check_plan_sources(options: PlanOptions) -> None:
    """A plan file is the whole plan: next to it, a search or uniform flags would be dropped, so refuse them."""
    if not options.galvatron_plan:
        return
    given = ["--auto_parallel"] if options.auto_parallel else []
    given += [f"--{name}" for name in UNIFORM_OPTIONS if getattr(options, name) not in (None, False)]
    if given:
        raise ValueError(
            f"--galvatron_plan {options.galvatron_plan} is the whole plan; {', '.join(given)} would be ignored. "
            "Give the plan file alone, or drop it to search / build a uniform plan"
        )


PRECISION_FLAGS = {"bf16": "--bf16", "fp16": "--fp16", "fp32": "neither --bf16 nor --fp16"}


def check_precision(plan: Plan, mixed_precision: str, source: str) -> None:
    """A plan is priced (and its memory checked) for its own precision: training in another is refused."""
    if plan.mixed_precision != mixed_precision:
        raise PlanError(
            f"{source} was made for {plan.mixed_precision} and this run trains in {mixed_precision} "
            f"({PRECISION_FLAGS.get(mixed_precision, mixed_precision)}); pass "
            f"{PRECISION_FLAGS.get(plan.mixed_precision, plan.mixed_precision)} to train as planned, or make the plan "
            f"for {mixed_precision}"
        )


def _pricing(request: PlanRequest, spec: ModelSpec) -> _Pricing:
    from galvatron_hf.planner.profiled_costs import profiled_source_for
    from galvatron_hf.planner.search import default_memory_gb
    from galvatron_hf.profiler.builtin_hardware import hardware_for

    hardware = hardware_for(request.hardware, request.world_size, request.num_nodes, request.gpus_per_node)
    check_cluster(request, hardware)
    memory_gb = request.memory_gb if request.memory_gb is not None else default_memory_gb(hardware)
    attention = request.attention
    compute, lines = profiled_source_for(
        request.profile, spec, hardware, request.mixed_precision, attention, kernels=request.kernels
    )
    return _Pricing(spec, hardware, memory_gb, attention, compute, tuple(lines))


def check_cluster(request: PlanRequest, hardware: HardwareProfile) -> None:
    """Refuse a budget above the device's memory (the hardware refuses more devices than its nodes hold)."""
    device = hardware.device
    if request.memory_gb is not None and request.memory_gb > device.memory_gb:
        raise ValueError(
            f"--memory_gb {request.memory_gb:g} is more than the {device.name} has ({device.memory_gb:g} GB); give "
            f"at most {device.memory_gb:g}, or a --hardware profile of the device you run on"
        )


def _resolved(request, pricing: _Pricing, plan: Plan, source: str, report, search=None) -> ResolvedPlan:
    return ResolvedPlan(
        request=request,
        spec=pricing.spec,
        hardware=pricing.hardware,
        memory_gb=pricing.memory_gb,
        plan=plan,
        source=source,
        figure_sources=pricing.figure_sources,
        report=report,
        search=search,
    )


def _searched(request: PlanRequest, pricing: _Pricing, progress) -> ResolvedPlan:
    from galvatron_hf.planner.search import search_plan

    result = search_plan(
        pricing.spec,
        pricing.hardware,
        request.world_size,
        pricing.memory_gb,
        global_batch_size=search_batch_size(request),
        mixed_precision=request.mixed_precision,
        attn_impl=pricing.attention,
        compute=pricing.compute,
        progress=progress,
        max_global_batch_size=request.max_global_batch_size,
        offload=True if request.offload else None,
        max_pp=request.max_pp,
    )
    plan = result.best.plan.validate(world_size=request.world_size, spec=pricing.spec)
    return _resolved(request, pricing, plan, request.plan_source, result.best.report, result)


def search_batch_size(request: PlanRequest) -> int | None:
    """The batch the search is asked for: the global batch, else per-device batch x devices x accumulation
    steps (what DDP over every device would train with), else None (the search tries batches)."""
    if request.global_batch_size is not None:
        return request.global_batch_size
    if request.per_device_batch_size is not None:
        return request.per_device_batch_size * request.world_size * request.accumulation_steps
    return None


def _plan_from_file(request: PlanRequest, spec: ModelSpec) -> Plan:
    """A plan file keeps the global batch it was searched for unless ``global_batch_size`` overrides it; its
    prediction is kept unless the batch or the sequence length changes."""
    plan = Plan.load(request.galvatron_plan)
    plan.validate(world_size=request.world_size)
    wanted = request.global_batch_size
    if wanted is None or wanted == plan.global_batch_size:
        return replace(plan, seq_len=spec.seq_len, predicted=None) if plan.seq_len != spec.seq_len else plan
    logger.warning(
        "plan %s was searched for a global batch of %d; using global_batch_size=%d (prediction recomputed)",
        request.galvatron_plan,
        plan.global_batch_size,
        wanted,
    )
    return replace(plan, global_batch_size=wanted, seq_len=spec.seq_len, predicted=None)


def _uniform(request: PlanRequest, spec: ModelSpec) -> Plan:
    from galvatron_hf.planner.search import uniform_plan, vocab_supports

    pp, tp, cp, world = request.pp or 1, request.tp or 1, request.cp or 1, request.world_size
    if world % pp or (world // pp) % (tp * cp):
        raise PlanError(
            f"pp={pp} x tp={tp} x cp={cp} does not divide the {world} devices; pick degrees whose product divides "
            f"{world}"
        )
    devices = world // pp // cp
    vocab_tp = tp if vocab_supports(spec, tp) else 1
    batch = uniform_batch_size(request, devices // vocab_tp)
    micro = request.num_micro_batches
    if micro is None:
        micro = default_micro_batches(pp, request.accumulation_steps, batch, devices)
    return uniform_plan(
        spec,
        world,
        global_batch_size=batch,
        pp=pp,
        tp=tp,
        dp_type=request.dp_type or "ddp",
        checkpoint=request.checkpoint,
        num_micro_batches=micro,
        schedule=request.schedule or default_schedule(pp, micro),
        mixed_precision=request.mixed_precision,
        vocab_tp=vocab_tp,
        sp=request.sp,
        cp=cp,
        offload=request.offload,
    )


def uniform_batch_size(request: PlanRequest, data_size: int) -> int:
    """The global batch, else per-device batch x ``data_size`` groups x accumulation steps; without a
    per-device batch (`galvatron-hf search`), one sample per group and micro-batch."""
    if request.global_batch_size is not None:
        return request.global_batch_size
    if request.per_device_batch_size is not None:
        return request.per_device_batch_size * data_size * request.accumulation_steps
    return (request.num_micro_batches or 1) * data_size


def default_micro_batches(pp: int, accumulation_steps: int, global_batch_size: int, devices_per_stage: int) -> int:
    """Accumulation steps without pipelining; with it, the most micro-batches up to max(pp, accumulation)
    that split the batch over the stage's devices."""
    if pp == 1:
        return accumulation_steps
    for count in range(max(pp, accumulation_steps), 0, -1):
        if global_batch_size % (count * devices_per_stage) == 0:
            return count
    return 1


def default_schedule(pp: int, num_micro_batches: int) -> str:
    """1F1B (fewer activations in flight) whenever the runtime can run it, i.e. with at least pp micro-batches."""
    return "1f1b" if num_micro_batches >= pp else "gpipe"
