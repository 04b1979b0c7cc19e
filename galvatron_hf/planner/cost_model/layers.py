"""The cost model: time and memory of each layer under a strategy (blocks and vocabulary layers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model.communication import CommunicationCosts
from galvatron_hf.constants import GB
from galvatron_hf.planner.cost_model.compute import AnalyticCompute, LayerCostSource
from galvatron_hf.planner.cost_model.memory import MemoryCosts, rank_state_params
from galvatron_hf.planner.cost_model.offload import OffloadCosts
from galvatron_hf.planner.cost_model.shapes import LayerCost, StepShape
from galvatron_hf.planner.cost_model.units import (
    ACCUMULATED_GRAD_BYTES,
    ADAM_BYTES,
    GRAD_BYTES,
    Precision,
)
from galvatron_hf.planner.plan import DP_TYPES, PlanError, VocabStrategy

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


def state_sharding(dp: int, dp_type: str, dp_shard: int) -> tuple[int, str]:
    """(ranks the state is split over, dp type whose memory rules apply): an HSDP layer keeps what a ZeRO-3
    layer over its shard group keeps; only its gradient sync differs (``_dp_comm_exposed_s``)."""
    if dp_type != "hsdp":
        return dp, dp_type
    if not (1 < dp_shard < dp and dp % dp_shard == 0):
        raise PlanError(f"hsdp needs dp_shard dividing dp={dp} with 1 < dp_shard < dp, got {dp_shard}")
    return dp_shard, "zero3"


class CostModel(CommunicationCosts, MemoryCosts, OffloadCosts):
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
        self._sp_layers: dict[tuple[int, int], LayerSpec] = {}
        self.pre_layers = tuple(spec.pre_layers)  # the spec's properties rescan every layer: keep them
        self.post_layers = tuple(spec.post_layers)


    def local_params(self, layer: LayerSpec, tp: int) -> float:
        """Parameters one rank holds before DP sharding: TP-split ones divided by tp."""
        return (layer.params - layer.tp_params) + layer.tp_params / tp

    @staticmethod
    def trainable_share(layer: LayerSpec) -> float:
        """The share of the layer's parameters that train (gradients, optimizer state): 1 unless some are
        frozen (``LayerSpec.frozen_params``, e.g. the base under LoRA)."""
        return 1.0 - layer.frozen_params / layer.params if layer.params else 1.0

    def layer_cost(
        self,
        layer: LayerSpec,
        tp: int,
        dp: int,
        dp_type: str,
        checkpoint: bool,
        shape: StepShape,
        dp_shard: int = 0,
        sp: bool = False,
    ) -> LayerCost:
        """Time and memory of a block, or of a vocab layer (embedding, norm, head) under ``(tp, dp)``
        (``dp_shard``: the shard-group size of an "hsdp" layer; ``sp``, blocks with tp > 1: the block's norms
        and residual stream run sequence-parallel).

        Memoised: a model's blocks are mostly copies, and the search asks for the same prices many times.
        """
        sp = sp and tp > 1 and bool(layer.tp_params)
        key = (id(layer), tp, dp, dp_type, checkpoint, shape, dp_shard, sp)
        cost = self._cache.get(key)
        if cost is None:
            cost = self._layer_cost(layer, tp, dp, dp_type, checkpoint, shape, dp_shard, sp)
            self._cache[key] = cost
        return cost

    def _layer_cost(
        self,
        layer: LayerSpec,
        tp: int,
        dp: int,
        dp_type: str,
        checkpoint: bool,
        shape: StepShape,
        dp_shard: int,
        sp: bool,
    ) -> LayerCost:
        if dp_type not in DP_TYPES:
            raise PlanError(f"dp_type {dp_type!r} is not one of {DP_TYPES}")
        state_dp, state_type = state_sharding(dp, dp_type, dp_shard)
        # a rank's share of the micro-batch's tokens: 1 / dp of the samples, 1 / cp of each sample's tokens
        samples = shape.micro_batch_size / dp / shape.cp
        # FSDP2 shards parameters' states over the data- and context-parallel ranks (hsdp: its shard group x cp)
        shard = state_dp * shape.cp
        compute_tp = tp if layer.tp_params else 1
        forward = self.compute.forward_time_s(layer, samples, compute_tp)
        backward = self.compute.backward_time_s(layer, samples, compute_tp)
        tp_forward, tp_backward = self._tp_comm_s(layer, tp, samples, sp)
        ring_forward, ring_backward = self.ring_exchange_s(layer, tp, samples, shape, forward, backward)
        tp_comm = tp_forward + tp_backward + ring_forward + ring_backward
        per_micro_batch = forward + backward + tp_comm
        if checkpoint:  # recomputation re-runs the forward and its collectives
            per_micro_batch += forward + tp_forward + ring_forward
            tp_comm += tp_forward + ring_forward
        params = self.local_params(layer, tp)
        trainable = params * self.trainable_share(layer)
        comm_shard = dp_shard * shape.cp if dp_type == "hsdp" else 0
        dp_comm = self._dp_comm_exposed_s(
            params, tp, dp * shape.cp, dp_type, forward, backward, shape, comm_shard, trainable
        )
        sharded_params = rank_state_params(trainable, shard, state_type)  # the state that trains: grads, AdamW
        if shape.offload:
            offload = self.offload_s(params, sharded_params, state_type, shape, forward + backward)
            memory_bound = self.fsdp_copy_s(params, shard, state_type, shape)
        else:
            offload = 0.0
            memory_bound = self.optimizer_step_s(sharded_params) + self.clip_s(sharded_params)
            memory_bound += self.fsdp_copy_s(params, shard, state_type, shape)
        m = shape.num_micro_batches
        time_s = per_micro_batch + (dp_comm + memory_bound + offload) / m
        # the LM head gathers its vocab-parallel logits (output_layouts=Replicate): every rank keeps them whole
        activation_tp = 1 if layer.kind == "head" else compute_tp
        priced = self.sequence_parallel_layer(layer, tp) if sp else layer
        activation = self.compute.activation_bytes(priced, samples, activation_tp, checkpoint)
        workspace = self._workspace_bytes(
            priced, params, compute_tp, samples, state_type, checkpoint, activation, shape, trainable
        )
        on_device = 0.0 if shape.offload else 1.0  # offloaded states live in host memory
        return LayerCost(
            time_s,
            self._static_bytes(params, shard, state_type, shape, trainable),
            activation,
            workspace,
            on_device * GRAD_BYTES * sharded_params,
            communication_s=tp_comm + dp_comm / m,
            memory_bound_s=memory_bound / m,
            optimizer_bytes=on_device * ADAM_BYTES * sharded_params,
            accumulated_grad_bytes=ACCUMULATED_GRAD_BYTES * trainable if shape.accumulates else 0.0,
            offload_s=offload / m,
        )

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
        costs = [
            self.layer_cost(layer, vocab.tp, vocab.dp, vocab.dp_type, False, shape, vocab.dp_shard) for layer in layers
        ]
        state_dp, state_type = state_sharding(vocab.dp, vocab.dp_type, vocab.dp_shard)
        if last and shape.pp > 1 and self.spec.tie_word_embeddings:
            head_params = sum(layer.params for layer in self.post_layers if layer.kind == "head")
            if not head_params:
                for layer in self.pre_layers:
                    params = self.local_params(layer, vocab.tp)
                    trainable = params * self.trainable_share(layer)
                    static = self._static_bytes(params, state_dp * shape.cp, state_type, shape, trainable)
                    sharded = rank_state_params(trainable, state_dp * shape.cp, state_type)
                    sharded *= 0.0 if shape.offload else 1.0  # offloaded states live in host memory
                    accumulated = ACCUMULATED_GRAD_BYTES * trainable if shape.accumulates else 0.0
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
            offload_s=sum(c.offload_s for c in costs),
        )
