"""The cost model: time and memory of each layer under a strategy, and of a whole plan.

Every formula is written out in ``docs/cost_model.md``; this module is that document in code. It prices
what the runtime really runs (``docs/runtime.md``): DTensor TP (Megatron-style, blocking all-reduces), FSDP2
``fully_shard`` for ddp (HSDP with shard size 1), zero2 (``reshard_after_forward=False``) and zero3, with
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` over fp32 master weights, AdamW (two fp32
states), non-reentrant checkpointing, relayout between layers, and ``torch.distributed.pipelining``.

Compute is pluggable: :class:`LayerCostSource` is what the search asks for forward/backward time and
activation bytes; :class:`AnalyticCompute` answers from FLOPs and the hardware's matmul rate, a profiled
source (``planner/profiled_costs.py``) from measurements. Everything else (communication, parameter and
optimizer memory, pipeline) is priced here the same way for both.

Units: seconds, bytes; ``GB`` means 1e9 bytes everywhere in the planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from galvatron_hf.planner.plan import (
    DP_TYPES,
    MIXED_PRECISIONS,
    LayerStrategy,
    Plan,
    PlanError,
    Predicted,
    VocabStrategy,
)
from galvatron_hf.profiler.hardware_schema import bus_factor

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

GB = 1e9
MASTER_BYTES = 4  # fp32 master weights (the sharded parameter FSDP2 keeps)
GRAD_BYTES = 4  # fp32 sharded gradients (reduce_dtype=fp32)
ADAM_BYTES = 8  # AdamW exp_avg + exp_avg_sq in fp32
ACCUMULATED_GRAD_BYTES = 4  # unsharded fp32 gradient FSDP2 accumulates while gradient sync is off (M > 1)
TRANSIENT_GRAD_BYTES = 6  # one layer's unsharded gradient in param dtype (2) + its fp32 copy for the reduce (4)
# A fused AdamW step reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq, all fp32:
# 7 x 4 bytes of memory traffic per parameter (torch.optim.AdamW(fused=True) makes one pass).
OPTIMIZER_BYTES = 28
# Gradient clipping (the HF Trainer clips by default, max_grad_norm=1.0): one foreach norm reads every local
# fp32 gradient (4 bytes), one foreach scale reads and writes it (8 bytes).
CLIP_BYTES = 12


@dataclass(frozen=True)
class Precision:
    """Byte sizes a mixed-precision setting implies."""

    name: str
    compute_bytes: int  # activations and the gathered (unsharded) parameters

    @classmethod
    def of(cls, name: str) -> Precision:
        if name not in MIXED_PRECISIONS:
            raise PlanError(f"mixed_precision {name!r} is not one of {MIXED_PRECISIONS}")
        return cls(name, 4 if name == "fp32" else 2)


# ----- compute: the pluggable part ------------------------------------------------------------------------
@runtime_checkable
class LayerCostSource(Protocol):
    """Where the search gets a layer's compute time and activation memory.

    ``samples`` is the number of samples one rank processes in one micro-batch (micro-batch / dp); ``tp``
    the TP degree the layer runs with. Times are seconds on one device, activation bytes what that rank
    keeps for backward. ``source`` ends up in ``Predicted.source`` ("analytic", "profiled").
    """

    source: str

    def forward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float: ...

    def backward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float: ...

    def activation_bytes(self, layer: LayerSpec, samples: float, tp: int, checkpoint: bool) -> float: ...


# Share of the large-matmul rate a whole HF layer reaches (norms, rotary, softmax, element-wise ops and
# kernel launches around the matmuls). Measured on one H100 (torch 2.11, HF Llama-1B block, seq 2048, bf16,
# sdpa; benchmarks/profiles/h100/truth-report.txt): forward + backward took 8.72 ms where FLOPs at the
# measured 774.7 TFLOP/s matmul rate give 4.39 ms (0.50); the LM head 0.47. Larger layers do a little better.
LAYER_EFFICIENCY = 0.5


@dataclass(frozen=True)
class AnalyticCompute:
    """Compute from FLOPs: ``forward_flops x samples / tp / (matmul rate x layer_efficiency)``.

    ``matmul_tflops`` of the hardware profile is the rate large matmuls reach (what the profiler measures);
    ``layer_efficiency`` folds in the non-matmul work of a real layer (see ``LAYER_EFFICIENCY``). The
    backward is ``backward_factor`` (2: input and weight gradients) times the forward. Activation bytes come
    from the spec's :class:`ActivationModel`.
    """

    hardware: HardwareProfile
    mixed_precision: str = "bf16"
    attn_impl: str = "sdpa"
    backward_factor: float = 2.0
    layer_efficiency: float = LAYER_EFFICIENCY
    source: str = "analytic"

    def forward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        rate = self.hardware.matmul_flops_per_s(self.mixed_precision) * self.layer_efficiency
        return layer.forward_flops * samples / tp / rate

    def backward_time_s(self, layer: LayerSpec, samples: float, tp: int) -> float:
        return self.backward_factor * self.forward_time_s(layer, samples, tp)

    def activation_bytes(self, layer: LayerSpec, samples: float, tp: int, checkpoint: bool) -> float:
        dtype_bytes = Precision.of(self.mixed_precision).compute_bytes
        # per micro-batch, not samples x per-sample: some tensors are kept once per micro-batch (T5's bias)
        return layer.activation_bytes_per_micro_batch(samples, tp, dtype_bytes, checkpoint, self.attn_impl)


# ----- the step a layer is priced in ----------------------------------------------------------------------
@dataclass(frozen=True)
class StepShape:
    """What every layer of one plan shares: pipeline degree, micro-batching and devices per stage."""

    pp: int
    num_micro_batches: int
    micro_batch_size: int  # samples per micro-batch across the stage (the stage's DP ranks split it)
    devices_per_stage: int
    schedule: str = "1f1b"

    @property
    def accumulates(self) -> bool:
        """Gradient sync only on the last micro-batch: unsharded gradients accumulate in between."""
        return self.num_micro_batches > 1

    def in_flight(self, stage: int) -> int:
        """Micro-batches whose activations a stage holds at its peak: M for GPipe, pp - stage for 1F1B."""
        if self.schedule == "gpipe":
            return self.num_micro_batches
        return min(self.num_micro_batches, self.pp - stage)


@dataclass(frozen=True)
class LayerCost:
    """One layer under one strategy.

    ``time_s`` is per micro-batch, with the once-per-step costs (gradient sync, parameter gathers) spread
    over the M micro-batches; ``static_bytes`` stays resident through forward and backward (parameters,
    optimizer states, buffers FSDP2 keeps); ``activation_bytes`` is kept per micro-batch in flight;
    ``workspace_bytes`` is transient (recomputation, gathered parameters, unsharded gradients before their
    reduce): a stage needs the largest of its layers' workspaces on top of the rest. ``grad_bytes`` are the
    sharded fp32 gradients: the optimizer step needs them, but at the backward peak (its start, when every
    activation is still held) they do not exist yet (``zero_grad`` freed the last step's), so they are a
    second, separate peak (see :attr:`StageCost.peak_memory_gb`).
    """

    time_s: float
    static_bytes: float
    activation_bytes: float
    workspace_bytes: float
    grad_bytes: float = 0.0
    # Parts of the totals above, for reports (the search reads the totals only):
    communication_s: float = 0.0  # of time_s: TP collectives and exposed DP sync / gathers
    memory_bound_s: float = 0.0  # of time_s: optimizer step, clipping, FSDP2 copies (HBM traffic)
    optimizer_bytes: float = 0.0  # of static_bytes: AdamW states
    accumulated_grad_bytes: float = 0.0  # of static_bytes: unsharded gradients accumulated while M > 1


class CostModel:
    """Prices layers, layout changes and pipeline transfers for one model on one cluster."""

    def __init__(
        self,
        spec: ModelSpec,
        hardware: HardwareProfile,
        *,
        mixed_precision: str = "bf16",
        attn_impl: str = "sdpa",
        compute: LayerCostSource | None = None,
    ) -> None:
        self.spec = spec
        self.hardware = hardware
        self.precision = Precision.of(mixed_precision)
        self.attn_impl = attn_impl
        self.compute = compute or AnalyticCompute(hardware, mixed_precision, attn_impl)
        self.overlap = hardware.overlap
        self.reserved_bytes = hardware.device.reserved_memory_gb * GB
        self._cache: dict[tuple, LayerCost] = {}
        self._fits: dict[tuple, object] = {}
        self.pre_layers = tuple(spec.pre_layers)  # the spec's properties rescan every layer: keep them
        self.post_layers = tuple(spec.post_layers)

    # ----- communication ---------------------------------------------------------------------------------
    def collective_s(self, op: str, nbytes: float, group_size: int, stride: int = 1) -> float:
        """One collective over ``group_size`` ranks spaced ``stride`` apart (nccl-tests ``nbytes``).

        Inside a node the profile's fit is used as is. Across nodes a ring is bounded by the NICs its GPUs
        drive, so the fit's busbw is scaled by (GPUs per node in this group) / (GPUs per node in the group
        the fit was measured on); see docs/cost_model.md.
        """
        hw = self.hardware
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        placement = hw.placement_of(group_size, stride)
        ranks = "consecutive" if stride == 1 else "strided"
        key = (op, group_size, placement, ranks)
        fit = self._fits.get(key)
        if fit is None:
            fit = self._fits[key] = hw.collective(op, group_size, placement, ranks)
        scale = 1.0
        if placement == "inter_node":
            scale = self._gpus_per_node_in(group_size, stride) / self._fit_gpus_per_node(fit)
        algbw = fit.busbw_GBps * scale * 1e9 / bus_factor(op, group_size)
        return fit.latency_s + nbytes / algbw

    def _gpus_per_node_in(self, group_size: int, stride: int) -> int:
        gpn = self.hardware.gpus_per_node
        if stride >= gpn:
            return 1
        return max(1, min(group_size, gpn // stride))

    def _fit_gpus_per_node(self, fit) -> int:
        if fit.ranks == "consecutive":
            return max(1, min(fit.group_size, self.hardware.gpus_per_node))
        measured_stride = max(1, self.hardware.world_size // fit.group_size)
        return self._gpus_per_node_in(fit.group_size, measured_stride)

    def optimizer_step_s(self, params: float) -> float:
        """AdamW over ``params`` fp32 parameters: memory-bound, ``OPTIMIZER_BYTES`` of HBM traffic each.

        Zero when the profile has no memory bandwidth (it then cannot be priced, and is small anyway).
        """
        return self.memory_traffic_s(params * OPTIMIZER_BYTES)

    def clip_s(self, params: float) -> float:
        """Gradient clipping over ``params`` local fp32 gradients (norm, then scale)."""
        return self.memory_traffic_s(params * CLIP_BYTES)

    def memory_traffic_s(self, nbytes: float) -> float:
        """Seconds of memory-bound work moving ``nbytes`` through HBM (0 without a measured bandwidth)."""
        bandwidth = self.hardware.device.memory_bandwidth_GBps
        if bandwidth <= 0:
            return 0.0
        return nbytes / (bandwidth * 1e9)

    def fsdp_copy_s(self, params: float, dp: int, dp_type: str, shape: StepShape) -> float:
        """FSDP2's casts and copies around its collectives, per step, on the compute stream's memory.

        They happen at every degree, dp = 1 included: each all-gather casts the fp32 shard into the bf16
        gather buffer (copy-in) and copies the gathered buffer out into the unsharded parameters; each
        gradient reduction casts the bf16 gradient into an fp32 reduce buffer and accumulates its shard into
        the sharded gradient; with M > 1 and sync off, each micro-batch adds its gradient into the unsharded
        fp32 accumulator. Measured on one H100 (benchmarks/results/h100-step-breakdown) these copies were
        most of the gap between our runtime's step and the sum of its layers' compute.
        """
        act = self.precision.compute_bytes
        forward_gathers, backward_gathers = self._gathers_per_step("zero2" if dp_type == "ddp" else dp_type, shape)
        gather = params / dp * (MASTER_BYTES + act) + params * 2 * act
        reduce = params * (act + GRAD_BYTES) + params / dp * 2 * GRAD_BYTES
        accumulate = (shape.num_micro_batches - 1) * params * (act + 2 * ACCUMULATED_GRAD_BYTES)
        return self.memory_traffic_s((forward_gathers + backward_gathers) * gather + reduce + accumulate)

    def overlapped_s(self, window_s: float, comm_s: float) -> float:
        """Extra time when ``comm_s`` runs beside ``window_s`` of compute (slowdowns from the profile)."""
        if comm_s <= 0:
            return 0.0
        comm = comm_s * self.overlap.comm_slowdown
        overlapped = min(comm, window_s)
        return max(0.0, comm - window_s) + overlapped * (self.overlap.compute_slowdown - 1.0)

    # ----- one layer -------------------------------------------------------------------------------------
    def local_params(self, layer: LayerSpec, tp: int) -> float:
        """Parameters one rank holds before DP sharding: TP-split ones divided by tp."""
        return (layer.params - layer.tp_params) + layer.tp_params / tp

    def layer_cost(
        self, layer: LayerSpec, tp: int, dp: int, dp_type: str, checkpoint: bool, shape: StepShape
    ) -> LayerCost:
        """Time and memory of a block, or of a vocab layer (embedding, norm, head) under ``(tp, dp)``.

        Memoised: a model's blocks are mostly copies, and the search asks for the same prices many times.
        """
        key = (id(layer), tp, dp, dp_type, checkpoint, shape)
        cost = self._cache.get(key)
        if cost is None:
            cost = self._layer_cost(layer, tp, dp, dp_type, checkpoint, shape)
            self._cache[key] = cost
        return cost

    def _layer_cost(
        self, layer: LayerSpec, tp: int, dp: int, dp_type: str, checkpoint: bool, shape: StepShape
    ) -> LayerCost:
        if dp_type not in DP_TYPES:
            raise PlanError(f"dp_type {dp_type!r} is not one of {DP_TYPES}")
        samples = shape.micro_batch_size / dp
        compute_tp = tp if layer.tp_params else 1
        forward = self.compute.forward_time_s(layer, samples, compute_tp)
        backward = self.compute.backward_time_s(layer, samples, compute_tp)
        tp_forward, tp_backward = self._tp_comm_s(layer, tp, samples)
        tp_comm = tp_forward + tp_backward
        per_micro_batch = forward + backward + tp_comm
        if checkpoint:
            per_micro_batch += forward + tp_forward  # recomputation re-runs the forward and its collectives
            tp_comm += tp_forward
        params = self.local_params(layer, tp)
        dp_comm = self._dp_comm_exposed_s(params, tp, dp, dp_type, forward, backward, shape)
        sharded_params = _sharded(params, dp, dp_type)
        memory_bound = self.optimizer_step_s(sharded_params) + self.clip_s(sharded_params)
        memory_bound += self.fsdp_copy_s(params, dp, dp_type, shape)
        m = shape.num_micro_batches
        time_s = per_micro_batch + (dp_comm + memory_bound) / m
        # the LM head gathers its vocab-parallel logits (output_layouts=Replicate): every rank keeps them whole
        activation_tp = 1 if layer.kind == "head" else compute_tp
        activation = self.compute.activation_bytes(layer, samples, activation_tp, checkpoint)
        workspace = self._workspace_bytes(layer, params, compute_tp, samples, dp_type, checkpoint, activation, shape)
        return LayerCost(
            time_s,
            self._static_bytes(params, dp, dp_type, shape),
            activation,
            workspace,
            GRAD_BYTES * sharded_params,
            communication_s=tp_comm + dp_comm / m,
            memory_bound_s=memory_bound / m,
            optimizer_bytes=ADAM_BYTES * sharded_params,
            accumulated_grad_bytes=ACCUMULATED_GRAD_BYTES * params if shape.accumulates else 0.0,
        )

    def _tp_comm_s(self, layer: LayerSpec, tp: int, samples: float) -> tuple[float, float]:
        """Blocking TP collectives of one micro-batch: (forward, backward) seconds."""
        if tp <= 1 or not layer.tp_params:
            return 0.0, 0.0
        act = self.precision.compute_bytes
        hidden_bytes = samples * layer.seq_len * layer.hidden_size * act
        if layer.kind == "embedding":  # vocab-parallel rows: partial sums all-reduced; input grads are ids
            return self.collective_s("all_reduce", hidden_bytes, tp), 0.0
        if layer.kind == "head":  # vocab-parallel columns, logits gathered; input grad all-reduced
            logits = samples * layer.seq_len * max(layer.vocab_size, 1) * act
            return self.collective_s("all_gather", logits, tp), self.collective_s("all_reduce", hidden_bytes, tp)
        # Megatron-style block: one all-reduce per row-parallel output forward, one per column-parallel
        # input backward; one each per sub-layer (attention, MLP, cross-attention).
        count = sum(rule.style == "rowwise" for rule in layer.tp_rules) or 2
        one = self.collective_s("all_reduce", hidden_bytes, tp)
        return count * one, count * one

    def _dp_comm_exposed_s(
        self, params: float, tp: int, dp: int, dp_type: str, forward: float, backward: float, shape: StepShape
    ) -> float:
        """Once-per-step DP communication left exposed after overlapping with this layer's compute."""
        if dp <= 1:
            return 0.0
        grad_bytes = params * GRAD_BYTES  # reduce in fp32
        if dp_type == "ddp":
            sync = self.collective_s("all_reduce", grad_bytes, dp, stride=tp)
        else:
            sync = self.collective_s("reduce_scatter", grad_bytes, dp, stride=tp)
        exposed = self.overlapped_s(backward, sync)
        gathers_forward, gathers_backward = self._gathers_per_step(dp_type, shape)
        if gathers_forward or gathers_backward:
            gather = self.collective_s("all_gather", params * self.precision.compute_bytes, dp, stride=tp)
            exposed += gathers_forward * self.overlapped_s(forward, gather)
            exposed += gathers_backward * self.overlapped_s(backward, gather)
        return exposed

    @staticmethod
    def _gathers_per_step(dp_type: str, shape: StepShape) -> tuple[int, int]:
        """(forward, backward) parameter all-gathers per step; ddp gathers over a shard group of one."""
        m = shape.num_micro_batches
        if dp_type == "zero2":  # gathered once, kept until backward (and across micro-batches when M > 1)
            return (1 if (m == 1 or shape.pp > 1) else m), 0
        if dp_type == "zero3":
            if m == 1:
                return 1, 1
            if shape.pp > 1:  # pipelining turns reshard-after-backward off until the last micro-batch
                return 1, m
            return m, m
        return 0, 0

    def _static_bytes(self, params: float, dp: int, dp_type: str, shape: StepShape) -> float:
        """Resident bytes: sharded fp32 weights and AdamW states, plus what FSDP2 keeps unsharded (see
        docs/cost_model.md). The sharded gradients are :attr:`LayerCost.grad_bytes`."""
        gathered = self.precision.compute_bytes
        sharded = (MASTER_BYTES + ADAM_BYTES) * params
        accumulated = ACCUMULATED_GRAD_BYTES * params if shape.accumulates else 0.0
        if dp_type == "ddp":  # HSDP with shard size 1: whole state on every rank, bf16 copy kept fwd->bwd
            return sharded + gathered * params + accumulated
        if dp_type == "zero2":  # reshard_after_forward=False: unsharded params live from forward to backward
            return sharded / dp + gathered * params + accumulated
        held = gathered * params if (shape.accumulates and shape.pp > 1) else 0.0
        return sharded / dp + accumulated + held

    def _workspace_bytes(
        self,
        layer: LayerSpec,
        params: float,
        tp: int,
        samples: float,
        dp_type: str,
        checkpoint: bool,
        activation: float,
        shape: StepShape,
    ) -> float:
        workspace = TRANSIENT_GRAD_BYTES * params
        if dp_type == "zero3" and not (shape.accumulates and shape.pp > 1):
            workspace += 2 * self.precision.compute_bytes * params  # this layer and the prefetched next one
        if checkpoint:  # backward recomputes the whole layer's activations for one micro-batch
            workspace += self.compute.activation_bytes(layer, samples, tp, False) - activation
        if layer.kind == "head":
            # the loss backward materialises the fp32 gradients of the log-softmax output and of its input
            # on top of what the head keeps: measured on one H100 for a 128k vocabulary, the head's backward
            # peak above its start is 1.98x its activations (benchmarks/profiles/h100/llama-1b-*.json), and
            # pricing it at 1x let a searched plan run out of memory (benchmarks/results/h100-plan-accuracy)
            workspace += 2 * activation
        return workspace

    # ----- between layers and stages ---------------------------------------------------------------------
    def relayout_s(self, boundary: LayerSpec, tp_from: int, tp_to: int, shape: StepShape) -> float:
        """Per micro-batch cost of the layout change after ``boundary`` (forward + backward).

        Growing TP all-gathers the batch parts within the new TP group (backward: a local slice); shrinking
        TP takes a local slice (backward: an all-gather of the gradient). Either way one all-gather of the
        larger per-rank batch part over ``max / min`` ranks strided by the smaller tp.
        """
        if tp_from == tp_to:
            return 0.0
        small, large = sorted((tp_from, tp_to))
        dp_of_large = shape.devices_per_stage // large
        nbytes = shape.micro_batch_size / dp_of_large * self._hidden_bytes(boundary)
        return self.collective_s("all_gather", nbytes, large // small, stride=small)

    def p2p_s(self, boundary: LayerSpec, dp: int, stage: int, shape: StepShape) -> float:
        """Per micro-batch send of activations to stage + 1 and receive of their gradients."""
        nbytes = shape.micro_batch_size / dp * self._hidden_bytes(boundary)
        placement = self._p2p_placement(stage, shape)
        return 2 * self.hardware.p2p_time(nbytes, placement)

    def _p2p_placement(self, stage: int, shape: StepShape) -> str:
        gpn = self.hardware.gpus_per_node
        first = stage * shape.devices_per_stage
        for rank in range(first, first + shape.devices_per_stage):
            if rank // gpn != (rank + shape.devices_per_stage) // gpn:
                return "inter_node"
        return "intra_node"

    def _hidden_bytes(self, layer: LayerSpec) -> float:
        return layer.seq_len * layer.hidden_size * self.precision.compute_bytes

    # ----- vocabulary layers -----------------------------------------------------------------------------
    def vocab_cost(self, vocab: VocabStrategy, first: bool, last: bool, shape: StepShape) -> LayerCost:
        """Embedding (first stage) and norm / pooler / head (last stage) under the vocab strategy, summed.

        With tied embeddings and pp > 1 the last stage holds its own copy of the tied weight (estimate).
        """
        layers = []
        if first:
            layers += list(self.pre_layers)
        if last:
            layers += list(self.post_layers)
        costs = [self.layer_cost(layer, vocab.tp, vocab.dp, vocab.dp_type, False, shape) for layer in layers]
        if last and shape.pp > 1 and self.spec.tie_word_embeddings:
            head_params = sum(layer.params for layer in self.post_layers if layer.kind == "head")
            if not head_params:
                for layer in self.pre_layers:
                    params = self.local_params(layer, vocab.tp)
                    static = self._static_bytes(params, vocab.dp, vocab.dp_type, shape)
                    sharded = _sharded(params, vocab.dp, vocab.dp_type)
                    accumulated = ACCUMULATED_GRAD_BYTES * params if shape.accumulates else 0.0
                    costs.append(
                        LayerCost(
                            time_s=0.0,
                            static_bytes=static,
                            activation_bytes=0.0,
                            workspace_bytes=0.0,
                            grad_bytes=GRAD_BYTES * sharded,
                            optimizer_bytes=ADAM_BYTES * sharded,
                            accumulated_grad_bytes=accumulated,
                        )
                    )
        return LayerCost(
            time_s=sum(c.time_s for c in costs),
            static_bytes=sum(c.static_bytes for c in costs),
            activation_bytes=sum(c.activation_bytes for c in costs),
            workspace_bytes=max((c.workspace_bytes for c in costs), default=0.0),
            grad_bytes=sum(c.grad_bytes for c in costs),
            communication_s=sum(c.communication_s for c in costs),
            memory_bound_s=sum(c.memory_bound_s for c in costs),
            optimizer_bytes=sum(c.optimizer_bytes for c in costs),
            accumulated_grad_bytes=sum(c.accumulated_grad_bytes for c in costs),
        )


def _sharded(params: float, dp: int, dp_type: str) -> float:
    """Parameters whose fp32 state (weights, gradients, AdamW) one rank holds: all of them under ddp."""
    return params if dp_type == "ddp" else params / dp


# ----- a whole plan ---------------------------------------------------------------------------------------
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

    @property
    def compute_s(self) -> float:
        """Forward, backward and recomputation per micro-batch: the time that is neither of the parts."""
        return self.time_per_micro_batch_s - self.communication_s - self.memory_bound_s

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
    shape = StepShape(plan.pp, plan.num_micro_batches, plan.micro_batch_size, plan.devices_per_stage, plan.schedule)
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
        cost = model.layer_cost(blocks[index], strategy.tp, strategy.dp, strategy.dp_type, strategy.checkpoint, shape)
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
        optimizer_gb=sum(c.optimizer_bytes for c in costs) / GB,
        accumulated_grad_gb=sum(c.accumulated_grad_bytes for c in costs) / GB,
    )
