"""What the plan report shows, gathered from the cost model's report and the search result.

Every number here is read from :class:`~galvatron_hf.planner.cost_model.CostReport` (per-stage time and
memory, with their parts), the plan itself, or the search's evaluated baselines; this module only regroups
them (and derives the pipeline timeline from the formula the cost model prices a step with), so the
drawing code in ``plan_html`` never computes a prediction. Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from galvatron_hf.planner.plan import DP_TYPE_NAMES
from galvatron_hf.planner.summary import layer_runs

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.planner.cost_model import CostReport, StageCost
    from galvatron_hf.planner.plan import Plan
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

MEMORY_PARTS = ("parameters", "gradients", "optimizer states", "activations", "workspace", "reserved")
TIME_PARTS = ("compute", "communication", "memory-bound")


@dataclass(frozen=True)
class Strategy:
    """A layout as the strip colours it: blocks with equal (tp, dp, dp_type) share a colour."""

    tp: int
    dp: int
    dp_type: str

    @property
    def label(self) -> str:
        return f"tp {self.tp} × dp {self.dp} · {DP_TYPE_NAMES.get(self.dp_type, self.dp_type)}"


@dataclass(frozen=True)
class BlockCell:
    """One transformer block of the plan: where it runs and how."""

    index: int
    name: str
    kind: str
    stage: int
    strategy: Strategy
    checkpoint: bool


@dataclass(frozen=True)
class Run:
    """Consecutive blocks with one stage, layout and checkpointing: a line of the plan's summary."""

    first: int
    last: int
    stage: int
    strategy: Strategy
    checkpoint: bool


@dataclass(frozen=True)
class VocabCell:
    """The embedding (first stage) or the norm / head layers (last stage), under the vocab strategy."""

    names: tuple[str, ...]
    stage: int
    strategy: Strategy
    at_start: bool  # before the first block (embedding) or after the last (norm, head)


@dataclass(frozen=True)
class Span:
    """A labelled run of consecutive blocks (a pipeline stage, or the encoder / decoder of T5)."""

    label: str
    first: int
    last: int


@dataclass(frozen=True)
class MemoryMoment:
    """A stage's memory at one moment of the step, split into ``MEMORY_PARTS`` (GB per GPU)."""

    name: str
    parts: tuple[tuple[str, float], ...]
    total_gb: float
    is_peak: bool


@dataclass(frozen=True)
class StageMemory:
    stage: int
    label: str
    in_flight: int
    moments: tuple[MemoryMoment, ...]
    peak_gb: float


@dataclass(frozen=True)
class StageTime:
    """One stage over one step: idle before its first micro-batch, busy (by part), waiting, idle after."""

    stage: int
    label: str
    per_micro_batch_s: float
    fill_s: float
    parts: tuple[tuple[str, float], ...]  # ``TIME_PARTS``, summed over the step's micro-batches
    waiting_s: float  # between micro-batches, paced by the slowest stage
    drain_s: float

    @property
    def busy_s(self) -> float:
        return sum(seconds for _, seconds in self.parts)

    @property
    def busy_share(self) -> float:
        """Share of the step this stage computes or communicates (the rest it is idle or waits)."""
        total = self.fill_s + self.busy_s + self.waiting_s + self.drain_s
        return self.busy_s / total if total > 0 else 0.0


@dataclass(frozen=True)
class Timeline:
    step_s: float
    bubble_s: float
    num_micro_batches: int
    schedule: str
    bottleneck: int
    stages: tuple[StageTime, ...]

    @property
    def bubble_share(self) -> float:
        return self.bubble_s / self.step_s if self.step_s > 0 else 0.0


@dataclass(frozen=True)
class ComparisonRow:
    """One plan of the comparison: the searched plan, the best uniform plan, plain DDP, plain ZeRO-3."""

    label: str
    detail: str
    fits: bool | None  # None: no such plan could be built at all
    tokens_per_s: float | None
    mfu: float | None
    peak_gb: float | None
    searched_over_this: float | None  # the searched plan's throughput divided by this one's


@dataclass(frozen=True)
class Headline:
    step_time_s: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float | None
    peak_gb: float
    budget_gb: float
    global_batch_size: int
    num_micro_batches: int
    micro_batch_size: int
    pp: int
    schedule: str
    source: str


@dataclass(frozen=True)
class Measured:
    """What a training run measured, drawn beside the prediction (``GalvatronTrainer`` adds it at the end)."""

    step_time_s: float | None  # mean optimizer step after the warm-up steps; None: too few steps
    peak_memory_gb: tuple[float, ...]  # per pipeline stage, the largest over the stage's ranks
    memory_kind: str  # what was measured: "CUDA max allocated", "process peak RSS"
    steps: int  # optimizer steps the step time is the mean of


@dataclass(frozen=True)
class PlanReport:
    """Everything the HTML report draws, in plain numbers and strings."""

    title: str
    facts: tuple[tuple[str, str], ...]
    headline: Headline
    blocks: tuple[BlockCell, ...]
    runs: tuple[Run, ...]
    vocab: tuple[VocabCell, ...]
    stage_spans: tuple[Span, ...]
    kind_spans: tuple[Span, ...]
    strategies: tuple[Strategy, ...]
    memory: tuple[StageMemory, ...]
    timeline: Timeline
    comparison: tuple[ComparisonRow, ...]
    footnote: str
    measured: Measured | None = None


# ----- gathering ------------------------------------------------------------------------------------------
def gather_plan_report(
    spec: ModelSpec,
    hardware: HardwareProfile,
    plan: Plan,
    report: CostReport,
    memory_gb: float,
    result: Any = None,
) -> PlanReport:
    """The report of ``plan`` as ``report`` (from ``estimate_plan``) priced it; ``result`` (a search's
    ``SearchResult``, optional) adds the comparison with the best uniform plan and plain DDP / ZeRO-3."""
    blocks = _block_cells(spec, plan)
    vocab = _vocab_cells(spec, plan)
    return PlanReport(
        title=f"{spec.name} on {plan.world_size} GPU{'s' if plan.world_size > 1 else ''}",
        facts=_facts(spec, hardware, plan, memory_gb),
        headline=_headline(plan, report, memory_gb),
        blocks=blocks,
        runs=_runs(plan),
        vocab=vocab,
        stage_spans=tuple(_stage_span(stage) for stage in report.stages),
        kind_spans=_kind_spans(blocks),
        strategies=_strategies(vocab, blocks),
        memory=tuple(_stage_memory(stage) for stage in report.stages),
        timeline=_timeline(plan, report),
        comparison=_comparison(result) if result is not None else (),
        footnote=_footnote(hardware, report, result),
    )


def _facts(spec: ModelSpec, hardware: HardwareProfile, plan: Plan, memory_gb: float) -> tuple[tuple[str, str], ...]:
    return (
        ("model", f"{spec.architecture}, {spec.total_params / 1e9:.2f} B parameters"),
        ("sequence", f"{spec.tokens_per_sample:,} tokens per sample"),
        (
            "cluster",
            f"{plan.world_size} GPUs: {hardware.num_nodes} node{'s' if hardware.num_nodes > 1 else ''} "
            f"× {hardware.gpus_per_node} ({hardware.name})",
        ),
        ("budget", f"{memory_gb:g} GB per GPU"),
        ("precision", plan.mixed_precision),
    )


def _headline(plan: Plan, report: CostReport, memory_gb: float) -> Headline:
    predicted = report.predicted
    return Headline(
        step_time_s=predicted.step_time_s,
        tokens_per_s=predicted.tokens_per_s,
        samples_per_s=predicted.samples_per_s,
        mfu=predicted.mfu,
        peak_gb=report.peak_memory_gb,
        budget_gb=memory_gb,
        global_batch_size=plan.global_batch_size,
        num_micro_batches=plan.num_micro_batches,
        micro_batch_size=plan.micro_batch_size,
        pp=plan.pp,
        schedule=plan.schedule,
        source=predicted.source,
    )


def _block_cells(spec: ModelSpec, plan: Plan) -> tuple[BlockCell, ...]:
    return tuple(
        BlockCell(
            index=index,
            name=layer.name,
            kind=layer.kind,
            stage=strategy.stage,
            strategy=Strategy(strategy.tp, strategy.dp, strategy.dp_type),
            checkpoint=strategy.checkpoint,
        )
        for index, (layer, strategy) in enumerate(zip(spec.blocks, plan.layers))
    )


def _runs(plan: Plan) -> tuple[Run, ...]:
    return tuple(
        Run(first, last, layer.stage, Strategy(layer.tp, layer.dp, layer.dp_type), layer.checkpoint)
        for first, last, layer in layer_runs(plan)
    )


def _vocab_cells(spec: ModelSpec, plan: Plan) -> tuple[VocabCell, ...]:
    strategy = Strategy(plan.vocab.tp, plan.vocab.dp, plan.vocab.dp_type)
    cells = []
    if spec.pre_layers:
        cells.append(VocabCell(tuple(layer.name for layer in spec.pre_layers), 0, strategy, at_start=True))
    if spec.post_layers:
        cells.append(VocabCell(tuple(layer.name for layer in spec.post_layers), plan.pp - 1, strategy, at_start=False))
    return tuple(cells)


def _stage_label(stage: StageCost) -> str:
    first, last = stage.blocks
    blocks = f"block {first}" if first == last else f"blocks {first}–{last}"
    return f"stage {stage.stage} · {blocks}"


def _stage_span(stage: StageCost) -> Span:
    return Span(_stage_label(stage), *stage.blocks)


KIND_NAMES = {"encoder_block": "encoder", "decoder_block": "decoder", "cross_decoder_block": "decoder"}


def _kind_spans(blocks: tuple[BlockCell, ...]) -> tuple[Span, ...]:
    """Encoder and decoder runs, only for models that have both (T5); one kind needs no label."""
    spans: list[Span] = []
    for block in blocks:
        name = KIND_NAMES.get(block.kind, block.kind)
        if spans and spans[-1].label == name:
            spans[-1] = Span(name, spans[-1].first, block.index)
        else:
            spans.append(Span(name, block.index, block.index))
    return tuple(spans) if len(spans) > 1 else ()


def _strategies(vocab: tuple[VocabCell, ...], blocks: tuple[BlockCell, ...]) -> tuple[Strategy, ...]:
    """Distinct layouts in order of first use, left to right along the strip."""
    seen: dict[Strategy, None] = {}
    for cell in (*(v for v in vocab if v.at_start), *blocks, *(v for v in vocab if not v.at_start)):
        seen.setdefault(cell.strategy)
    return tuple(seen)


def _stage_memory(stage: StageCost) -> StageMemory:
    """The two moments the cost model prices a stage's peak at (see ``StageCost.peak_memory_gb``)."""
    backward = {
        "parameters": stage.param_gb,
        "gradients": stage.accumulated_grad_gb,
        "optimizer states": stage.optimizer_gb,
        "activations": stage.activation_gb,
        "workspace": stage.workspace_gb,
        "reserved": stage.reserved_gb,
    }
    optimizer = {
        **backward,
        "gradients": stage.accumulated_grad_gb + stage.grad_gb,
        "activations": 0.0,
        "workspace": 0.0,
    }
    at_backward = stage.backward_start_gb >= stage.optimizer_step_gb
    moments = (
        MemoryMoment("backward start", _ordered(backward), stage.backward_start_gb, at_backward),
        MemoryMoment("optimizer step", _ordered(optimizer), stage.optimizer_step_gb, not at_backward),
    )
    return StageMemory(stage.stage, _stage_label(stage), stage.in_flight, moments, stage.peak_memory_gb)


def _ordered(parts: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((name, parts[name]) for name in MEMORY_PARTS)


def _timeline(plan: Plan, report: CostReport) -> Timeline:
    """Each stage's step as the cost model's ``pipeline_step_s`` prices it.

    ``step = sum(C_i) + (M - 1) max(C_i)``: micro-batch k reaches stage i after the earlier stages' first
    micro-batch (fill: ``sum(C_j, j < i)``) and the slowest stage paces the rest, so stage i is busy
    ``M C_i``, waits ``(M - 1)(max C - C_i)`` between micro-batches and is idle for the later stages' last
    micro-batch (drain: ``sum(C_j, j > i)``). The bubble is the slowest stage's fill + drain.
    """
    times = [stage.time_per_micro_batch_s for stage in report.stages]
    slowest = max(times)
    m = plan.num_micro_batches
    stages = tuple(
        StageTime(
            stage=stage.stage,
            label=f"stage {stage.stage}",
            per_micro_batch_s=stage.time_per_micro_batch_s,
            fill_s=sum(times[: stage.stage]),
            parts=(
                ("compute", m * stage.compute_s),
                ("communication", m * stage.communication_s),
                ("memory-bound", m * stage.memory_bound_s),
            ),
            waiting_s=(m - 1) * (slowest - stage.time_per_micro_batch_s),
            drain_s=sum(times[stage.stage + 1 :]),
        )
        for stage in report.stages
    )
    return Timeline(
        step_s=report.step_time_s,
        bubble_s=report.bubble_time_s,
        num_micro_batches=m,
        schedule=plan.schedule,
        bottleneck=times.index(slowest),
        stages=stages,
    )


# ----- the comparison (what ``galvatron-hf search`` prints below the plan) --------------------------------
def _comparison(result: Any) -> tuple[ComparisonRow, ...]:
    best = result.best.report.predicted.tokens_per_s
    rows = [_row("searched plan", _batch_detail(result.best.plan), result.best, best, result.memory_gb)]
    uniform = result.best_uniform
    rows.append(_row("best uniform plan", _uniform_detail(uniform), uniform, best, result.memory_gb))
    for name, label in (("ddp", "plain DDP"), ("zero3", "plain ZeRO-3")):
        evaluated = result.baselines.get(name)
        detail = _batch_detail(evaluated.plan) if evaluated is not None else ""
        rows.append(_row(label, detail, evaluated, best, result.memory_gb))
    return tuple(rows)


def _row(label: str, detail: str, evaluated: Any, best_tokens_per_s: float, memory_gb: float) -> ComparisonRow:
    if evaluated is None:
        return ComparisonRow(label, detail, None, None, None, None, None)
    report = evaluated.report
    fits = report.fits(memory_gb)
    tokens = report.predicted.tokens_per_s
    return ComparisonRow(
        label=label,
        detail=detail,
        fits=fits,
        tokens_per_s=tokens if fits else None,
        mfu=report.predicted.mfu if fits else None,
        peak_gb=report.peak_memory_gb,
        searched_over_this=best_tokens_per_s / tokens if fits else None,
    )


def _batch_detail(plan: Plan) -> str:
    return f"batch {plan.global_batch_size} = {plan.num_micro_batches} × {plan.micro_batch_size}"


def _uniform_detail(evaluated: Any) -> str:
    if evaluated is None:
        return ""
    plan = evaluated.plan
    layer = plan.layers[0]
    checkpoint = " + checkpointing" if layer.checkpoint else ""
    layout = Strategy(layer.tp, layer.dp, layer.dp_type).label
    return f"pp {plan.pp} · {layout}{checkpoint} · {_batch_detail(plan)}"


def _footnote(hardware: HardwareProfile, report: CostReport, result: Any) -> str:
    text = (
        f"Predicted by the galvatron-hf cost model ({report.predicted.source} layer costs, "
        f"communication and memory from the hardware profile {hardware.name})."
    )
    if result is not None:
        stats = result.stats
        text += (
            f" The search visited {stats.configs} step configurations ({stats.relaxed_solves} bounded, "
            f"{stats.exact_solves} solved exactly) in {stats.seconds:.1f} s."
        )
    return text
