"""Memory prices: the bytes FSDP2, AdamW and checkpointing keep per layer, and the time of memory-bound work
(optimizer step, clipping, FSDP2's copies) as HBM traffic (docs/cost_model.md, "Memory")."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model.compute import LayerCostSource
from galvatron_hf.planner.cost_model.shapes import StepShape
from galvatron_hf.planner.cost_model.units import (
    ACCUMULATED_GRAD_BYTES,
    ADAM_BYTES,
    CLIP_BYTES,
    GRAD_BYTES,
    MASTER_BYTES,
    OPTIMIZER_BYTES,
    TRANSIENT_GRAD_BYTES,
    Precision,
)

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


def rank_state_params(params: float, dp: int, dp_type: str) -> float:
    """Parameters whose fp32 state (weights, gradients, AdamW) one rank holds: all of them under ddp."""
    return params if dp_type == "ddp" else params / dp


def sequence_parallel_activation(layer: LayerSpec, tp: int) -> LayerSpec:
    """``layer`` as sequence parallelism runs it: what every TP rank kept whole (norm inputs, residual stream,
    their fp32 upcasts and dropout masks) is split along the sequence, 1 / tp per rank. Token ids and the
    checkpointed layer input (the block's input stays whole between blocks) are not."""
    act = layer.activation
    split = replace(
        act,
        replicated=act.replicated / tp,
        fp32_replicated=act.fp32_replicated / tp,
        upcast_replicated=act.upcast_replicated / tp,
        bool_replicated=act.bool_replicated / tp,
    )
    return replace(layer, activation=split)


class MemoryCosts:
    """The memory half of :class:`~galvatron_hf.planner.cost_model.CostModel` (a mixin: it reads the model's
    hardware profile, precision and compute source; ``_gathers_per_step`` comes from the communication half)."""

    hardware: HardwareProfile
    precision: Precision
    compute: LayerCostSource
    _sp_layers: dict[tuple[int, int], LayerSpec]

    def sequence_parallel_layer(self, layer: LayerSpec, tp: int) -> LayerSpec:
        """:func:`sequence_parallel_activation`, memoised per (layer, tp)."""
        key = (id(layer), tp)
        if key not in self._sp_layers:
            self._sp_layers[key] = sequence_parallel_activation(layer, tp)
        return self._sp_layers[key]

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


    def _static_bytes(
        self, params: float, dp: int, dp_type: str, shape: StepShape, trainable: float | None = None
    ) -> float:
        """Resident bytes: sharded fp32 weights and AdamW states, plus what FSDP2 keeps unsharded (see
        docs/cost_model.md). The sharded gradients are :attr:`LayerCost.grad_bytes`. Of ``params``, only
        ``trainable`` (default: all) have AdamW states and accumulated gradients."""
        gathered = self.precision.compute_bytes
        # offload keeps the sharded fp32 weights and AdamW states in host memory
        trainable = params if trainable is None else trainable
        sharded = 0.0 if shape.offload else MASTER_BYTES * params + ADAM_BYTES * trainable
        accumulated = ACCUMULATED_GRAD_BYTES * trainable if shape.accumulates else 0.0
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
        trainable: float | None = None,
    ) -> float:
        workspace = TRANSIENT_GRAD_BYTES * (params if trainable is None else trainable)  # frozen: no gradient
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
