"""A whole plan: per-stage time and peak memory, the pipeline step, and :func:`estimate_plan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from galvatron_hf.constants import GB
from galvatron_hf.planner.cost_model.compute import LayerCostSource
from galvatron_hf.planner.cost_model.layers import CostModel
from galvatron_hf.planner.cost_model.shapes import StepShape
from galvatron_hf.planner.plan import LayerStrategy, Plan, Predicted

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


@dataclass(frozen=True)
class StageCost:
    """One pipeline stage: its time per micro-batch and its peak memory, split by kind."""

    stage: int
    blocks: tuple[int, int]  # [first, last] block index
    time_per_micro_batch_s: float
    in_flight: int
    static_gb: float
    activation_gb: float
    workspace_gb: float
    reserved_gb: float
    grad_gb: float = 0.0
    # Parts of the totals above, for reports:
    communication_s: float = 0.0  # of time_per_micro_batch_s: collectives, relayouts, pipeline sends
    memory_bound_s: float = 0.0  # of time_per_micro_batch_s: optimizer step, clipping, FSDP2 copies
    optimizer_gb: float = 0.0  # of static_gb: AdamW states
    accumulated_grad_gb: float = 0.0  # of static_gb: unsharded gradients accumulated while M > 1
    offload_s: float = 0.0  # of time_per_micro_batch_s: exposed host-device copies, host optimizer step

    @property
    def compute_s(self) -> float:
        """Forward, backward and recomputation per micro-batch: the time that is none of the parts."""
        return self.time_per_micro_batch_s - self.communication_s - self.memory_bound_s - self.offload_s

    @property
    def param_gb(self) -> float:
        """Weights: sharded fp32 masters and the gathered copies FSDP2 keeps (static less its other parts)."""
        return self.static_gb - self.optimizer_gb - self.accumulated_grad_gb

    @property
    def backward_start_gb(self) -> float:
        """Every activation held, plus the worst workspace; this step's sharded gradients do not exist yet."""
        return self.static_gb + self.reserved_gb + (self.activation_gb + self.workspace_gb)

    @property
    def optimizer_step_gb(self) -> float:
        """The sharded gradients are complete; activations are freed."""
        return self.static_gb + self.reserved_gb + self.grad_gb

    @property
    def peak_memory_gb(self) -> float:
        """The larger of the two moments: the start of backward and the optimizer step."""
        return max(self.backward_start_gb, self.optimizer_step_gb)


@dataclass(frozen=True)
class CostReport:
    """What :func:`estimate_plan` predicts for a plan: per-stage time and memory, and the step."""

    stages: list[StageCost]
    step_time_s: float
    bubble_time_s: float
    predicted: Predicted
    notes: list[str] = field(default_factory=list)

    @property
    def peak_memory_gb(self) -> float:
        return max(stage.peak_memory_gb for stage in self.stages)

    def fits(self, memory_gb: float) -> bool:
        return self.peak_memory_gb <= memory_gb + 1e-9


def pipeline_step_s(stage_times: list[float], num_micro_batches: int) -> float:
    """Fill and drain cost every stage once; the slowest stage paces the other M - 1 micro-batches."""
    return sum(stage_times) + (num_micro_batches - 1) * max(stage_times)


def step_shape(plan: Plan) -> StepShape:
    """What every layer of ``plan`` shares, as the cost model prices it."""
    return StepShape(
        plan.pp,
        plan.num_micro_batches,
        plan.micro_batch_size,
        plan.devices_per_stage,
        plan.schedule,
        cp=plan.cp,
        offload=plan.offloaded,
    )


def estimate_plan(
    plan: Plan,
    spec: ModelSpec,
    hardware: HardwareProfile,
    *,
    memory_gb: float | None = None,
    attn_impl: str = "sdpa",
    compute: LayerCostSource | None = None,
    cost_model: CostModel | None = None,
) -> CostReport:
    """Predict step time, throughput and per-stage peak memory of ``plan`` (validated against ``spec``)."""
    plan.validate(spec=spec)
    model = cost_model or CostModel(
        spec, hardware, mixed_precision=plan.mixed_precision, attn_impl=attn_impl, compute=compute
    )
    shape = step_shape(plan)
    blocks = spec.blocks
    stages = [_stage_cost(model, plan, blocks, stage, shape) for stage in range(plan.pp)]
    times = [s.time_per_micro_batch_s for s in stages]
    step = pipeline_step_s(times, plan.num_micro_batches)
    samples_per_s = plan.global_batch_size / step
    peak = hardware.device.peak_tflops.get(plan.mixed_precision)
    mfu = None
    if peak:
        model_flops = 3 * spec.forward_flops * plan.global_batch_size  # forward + backward, no recomputation
        mfu = model_flops / step / (plan.world_size * peak * 1e12)
    predicted = Predicted(
        step_time_s=step,
        samples_per_s=samples_per_s,
        tokens_per_s=samples_per_s * spec.tokens_per_sample,
        peak_memory_gb=[round(s.peak_memory_gb, 3) for s in stages],
        mfu=mfu,
        memory_budget_gb=memory_gb,
        source=getattr(model.compute, "source", "analytic"),
    )
    bubble = step - plan.num_micro_batches * max(times)
    return CostReport(stages, step, max(0.0, bubble), predicted)


def _stage_cost(model: CostModel, plan: Plan, blocks, stage: int, shape: StepShape) -> StageCost:
    indices = plan.stage_layers(stage)
    first, last = stage == 0, stage == plan.pp - 1
    in_flight = shape.in_flight(stage)
    vocab = model.vocab_cost(plan.vocab, first, last, shape)
    costs = [vocab]
    time_s = vocab.time_s
    transfer = 0.0  # relayouts between layers and the send to the next stage, per micro-batch
    # the first block receives the embedding output (first stage) or the previous stage's last block output
    previous_tp = plan.vocab.tp if first else plan.layers[indices[0] - 1].tp
    for index in indices:
        strategy: LayerStrategy = plan.layers[index]
        cost = model.layer_cost(
            blocks[index],
            strategy.tp,
            strategy.dp,
            strategy.dp_type,
            strategy.checkpoint,
            shape,
            strategy.dp_shard,
            strategy.sp,
        )
        costs.append(cost)
        relayout = model.relayout_s(blocks[max(index - 1, 0)], previous_tp, strategy.tp, shape)
        time_s += cost.time_s
        time_s += relayout
        transfer += relayout
        previous_tp = strategy.tp
    end = plan.layers[indices[-1]]
    if last:
        last_transfer = model.relayout_s(blocks[indices[-1]], end.tp, plan.vocab.tp, shape)
    else:
        last_transfer = model.p2p_s(blocks[indices[-1]], end.dp, stage, shape)
    return StageCost(
        stage=stage,
        blocks=(indices[0], indices[-1]),
        time_per_micro_batch_s=time_s + last_transfer,
        in_flight=in_flight,
        static_gb=sum(c.static_bytes for c in costs) / GB,
        activation_gb=sum(in_flight * c.activation_bytes for c in costs) / GB,
        workspace_gb=max(c.workspace_bytes for c in costs) / GB,
        reserved_gb=model.reserved_bytes / GB,
        grad_gb=sum(c.grad_bytes for c in costs) / GB,
        communication_s=sum(c.communication_s for c in costs) + transfer + last_transfer,
        memory_bound_s=sum(c.memory_bound_s for c in costs),
        offload_s=sum(c.offload_s for c in costs),
        optimizer_gb=sum(c.optimizer_bytes for c in costs) / GB,
        accumulated_grad_gb=sum(c.accumulated_grad_bytes for c in costs) / GB,
    )
