"""Communication prices: collectives from the hardware profile's fits, TP and DP traffic of a layer, relayouts
between layers and pipeline sends (docs/cost_model.md, "Communication")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model.shapes import StepShape
from galvatron_hf.planner.cost_model.topology import GroupLayout, inter_node_fit
from galvatron_hf.planner.cost_model.units import GRAD_BYTES, Precision
from galvatron_hf.profiler.hardware_schema import bus_factor

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


class CommunicationCosts:
    """The communication half of :class:`~galvatron_hf.planner.cost_model.CostModel` (a mixin: it reads the
    model's hardware profile, precision and overlap slowdowns)."""

    hardware: HardwareProfile
    precision: Precision
    _fits: dict[tuple, object]

    def collective_s(self, op: str, nbytes: float, group_size: int, stride: int = 1) -> float:
        """One collective over ``group_size`` ranks spaced ``stride`` apart (nccl-tests ``nbytes``), priced by
        where the group lies: inside a node from the intra-node fit, across nodes from the inter-node fit
        scaled to the NICs this group drives (``cost_model/topology.py``; docs/cost_model.md, "Topology")."""
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        latency, busbw = self._collective_fit(op, group_size, stride)
        return latency + nbytes / (busbw * 1e9 / bus_factor(op, group_size))

    def _collective_fit(self, op: str, group_size: int, stride: int) -> tuple[float, float]:
        """(latency_s, busbw_GBps) of a collective over this group; memoised per (op, size, stride)."""
        key = (op, group_size, stride)
        priced = self._fits.get(key)
        if priced is None:
            priced = self._fits[key] = self._price_group(op, GroupLayout(group_size, stride, self.hardware.gpus_per_node))
        return priced

    def _price_group(self, op: str, layout: GroupLayout) -> tuple[float, float]:
        hw = self.hardware
        ranks = "consecutive" if layout.stride == 1 else "strided"
        if layout.placement == "intra_node":
            fit = hw.collective(op, layout.size, "intra_node", ranks)
            return fit.latency_s, fit.busbw_GBps
        fit = hw.collective(op, layout.size, "inter_node", ranks)
        intra = [c.busbw_GBps for c in hw.collectives if c.op == op and c.placement == "intra_node"]
        return inter_node_fit(hw, fit, layout, max(intra) if intra else None)

    def overlapped_s(self, window_s: float, comm_s: float) -> float:
        """Extra time when ``comm_s`` runs beside ``window_s`` of compute (slowdowns from the profile)."""
        if comm_s <= 0:
            return 0.0
        comm = comm_s * self.overlap.comm_slowdown
        overlapped = min(comm, window_s)
        return max(0.0, comm - window_s) + overlapped * (self.overlap.compute_slowdown - 1.0)


    def _tp_comm_s(self, layer: LayerSpec, tp: int, samples: float, sp: bool = False) -> tuple[float, float]:
        """Blocking TP collectives of one micro-batch: (forward, backward) seconds.

        With ``sp`` each all-reduce becomes a reduce-scatter after the row-parallel output plus an all-gather
        before the next column-parallel input (the same bytes on the wire: an all-reduce is the two), and the
        block's output is all-gathered along the sequence once forward (its gradient once backward), since the
        stream between blocks stays whole."""
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
        if sp:
            gather = self.collective_s("all_gather", hidden_bytes, tp)
            one = gather + self.collective_s("reduce_scatter", hidden_bytes, tp)
            return count * one + gather, count * one + gather
        one = self.collective_s("all_reduce", hidden_bytes, tp)
        return count * one, count * one

    def ring_exchange_s(
        self, layer: LayerSpec, tp: int, samples: float, shape: StepShape, forward: float, backward: float
    ) -> tuple[float, float]:
        """Context parallelism's ring exchange in one block, exposed beyond the attention it overlaps with.

        Each of the cp - 1 ring steps passes this rank's key and value chunk (its ``samples x seq_len`` tokens,
        ``2 x kv_heads x head_dim / tp`` elements each) to the next rank while the current chunk's attention runs:
        priced as one all-gather of ``cp`` chunks over the cp ranks (stride tp). Backward passes keys and values
        again plus their gradients (twice the bytes). The window is the attention's share of the block's time.
        """
        cp = shape.cp
        if cp <= 1 or not layer.is_block or not layer.num_heads:
            return 0.0, 0.0
        kv_heads = layer.num_kv_heads or layer.num_heads
        chunk = samples * layer.seq_len * 2 * kv_heads * layer.head_dim / tp * self.precision.compute_bytes
        ring = self.collective_s("all_gather", cp * chunk, cp, stride=tp)
        attention = 4.0 * layer.seq_len * (layer.kv_seq_len or layer.seq_len) * layer.num_heads * layer.head_dim
        share = min(1.0, attention / layer.forward_flops) if layer.forward_flops else 0.0
        return self.overlapped_s(forward * share, ring), self.overlapped_s(backward * share, 2 * ring)

    def _dp_comm_exposed_s(
        self,
        params: float,
        tp: int,
        dp: int,
        dp_type: str,
        forward: float,
        backward: float,
        shape: StepShape,
        dp_shard: int = 0,
        trainable: float | None = None,
    ) -> float:
        """Once-per-step DP communication left exposed after overlapping with this layer's compute.

        The gradients reduced are those of the ``trainable`` parameters (default: all ``params``; FSDP2 reduces
        only parameters that require a gradient, so a frozen base under LoRA sends none); the all-gathers carry
        every parameter. HSDP reduce-scatters inside its shard group (``dp_shard`` ranks strided by tp),
        all-reduces the shard across the ``dp / dp_shard`` replicas (strided by ``tp x dp_shard``) and
        all-gathers inside the shard group, as ZeRO-3 over the shard group does.
        """
        if dp <= 1:
            return 0.0
        grad_bytes = (params if trainable is None else trainable) * GRAD_BYTES  # reduce in fp32
        group = dp_shard if dp_type == "hsdp" else dp
        if dp_type == "ddp":
            sync = self.collective_s("all_reduce", grad_bytes, dp, stride=tp)
        else:
            sync = self.collective_s("reduce_scatter", grad_bytes, group, stride=tp)
        if dp_type == "hsdp":
            sync += self.collective_s("all_reduce", grad_bytes / dp_shard, dp // dp_shard, stride=tp * dp_shard)
        exposed = self.overlapped_s(backward, sync)
        gathers_forward, gathers_backward = self._gathers_per_step("zero3" if dp_type == "hsdp" else dp_type, shape)
        if gathers_forward or gathers_backward:
            gather = self.collective_s("all_gather", params * self.precision.compute_bytes, group, stride=tp)
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

    def relayout_s(self, boundary: LayerSpec, tp_from: int, tp_to: int, shape: StepShape) -> float:
        """Per micro-batch cost of the layout change after ``boundary`` (forward + backward).

        Growing TP all-gathers the batch parts within the new TP group (backward: a local slice); shrinking
        TP takes a local slice (backward: an all-gather of the gradient). Either way one all-gather of the
        larger per-rank batch part over ``max / min`` ranks strided by the smaller tp.
        """
        if tp_from == tp_to:
            return 0.0
        small, large = sorted((tp_from, tp_to))
        dp_of_large = shape.devices_per_stage // shape.cp // large
        nbytes = shape.micro_batch_size / dp_of_large / shape.cp * self._hidden_bytes(boundary)
        return self.collective_s("all_gather", nbytes, large // small, stride=small)

    def p2p_s(self, boundary: LayerSpec, dp: int, stage: int, shape: StepShape) -> float:
        """Per micro-batch send of activations to stage + 1 and receive of their gradients."""
        nbytes = shape.micro_batch_size / dp / shape.cp * self._hidden_bytes(boundary)
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
