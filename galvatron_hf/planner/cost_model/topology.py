"""Where a collective's group lies, and what that costs (docs/cost_model.md, "Topology").

Ranks are numbered node by node (rank ``r`` sits on node ``r // gpus_per_node``), as torchrun numbers them.
A group of ``size`` ranks spaced ``stride`` apart (TP groups: stride 1; DP groups: stride ``tp``; HSDP's
replica groups: stride ``tp x shard``) therefore has a fixed number of ranks on each node it touches, and
that decides its price:

* inside one node, the hardware profile's intra-node fit (NVLink / NVSwitch) as measured;
* across nodes, a ring is bounded by the NICs its ranks drive: the inter-node fit's bus bandwidth is scaled
  by (NICs this group drives per node) / (NICs the measured group drove per node), and never exceeds what
  the same collective reaches inside a node;
* with a ``network`` in the profile, latency follows NCCL's ring model: a base, one NVLink hop per ring step
  inside a node, one network hop per step that crosses nodes (a 512-rank ring pays 511 steps).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from galvatron_hf.profiler.hardware_schema import CollectiveFit, HardwareProfile, NetworkSpec


@dataclass(frozen=True)
class GroupLayout:
    """A process group of ``size`` ranks spaced ``stride`` apart on nodes of ``gpus_per_node`` ranks."""

    size: int
    stride: int
    gpus_per_node: int

    @cached_property
    def _per_node(self) -> Counter:
        return Counter(i * self.stride // self.gpus_per_node for i in range(self.size))

    @property
    def ranks_per_node(self) -> int:
        """Ranks of this group on the busiest node it touches (1 once the stride reaches a node's width)."""
        return max(self._per_node.values())

    @property
    def nodes(self) -> int:
        return len(self._per_node)

    @property
    def placement(self) -> str:
        return "intra_node" if self.nodes == 1 else "inter_node"


def fit_layout(fit: CollectiveFit, hardware: HardwareProfile) -> GroupLayout:
    """The layout a fit was measured on: consecutive ranks, or ranks strided by ``world / group`` (the
    profiler's two layouts, which the built-in profiles follow too)."""
    stride = 1 if fit.ranks == "consecutive" else max(1, hardware.world_size // fit.group_size)
    return GroupLayout(fit.group_size, stride, hardware.gpus_per_node)


def nics_driven(layout: GroupLayout, network: NetworkSpec | None) -> int:
    """NICs per node a ring over ``layout`` sends through: one per rank, up to the node's NICs."""
    if network is None:
        return layout.ranks_per_node
    return min(layout.ranks_per_node, network.nics_per_node)


def ring_steps(op: str, layout: GroupLayout) -> tuple[int, int]:
    """(steps inside a node, steps across nodes) of NCCL's ring for ``op``: ``n - 1`` steps per pass,
    ``nodes - 1`` of them across nodes, two passes for all-reduce (reduce-scatter then all-gather)."""
    passes = 2 if op == "all_reduce" else 1
    inter = layout.nodes - 1
    return passes * (layout.size - 1 - inter), passes * inter


def ring_latency_s(op: str, layout: GroupLayout, network: NetworkSpec) -> float:
    """NCCL's ring latency (``src/graph/tuning.cc``, Simple protocol): base + steps x hop latency."""
    intra, inter = ring_steps(op, layout)
    return network.ring_base_latency_s + intra * network.nvlink_hop_latency_s + inter * network.net_hop_latency_s


def inter_node_fit(
    hardware: HardwareProfile, fit: CollectiveFit, layout: GroupLayout, intra_busbw_GBps: float | None
) -> tuple[float, float]:
    """(latency_s, busbw_GBps) of an inter-node collective over ``layout``, from the fit measured on another
    layout of the same placement."""
    network = hardware.network
    scale = nics_driven(layout, network) / nics_driven(fit_layout(fit, hardware), network)
    busbw = fit.busbw_GBps * scale
    if intra_busbw_GBps is not None:
        busbw = min(busbw, intra_busbw_GBps)  # a node's NICs never beat its NVLink
    latency = fit.latency_s if network is None else ring_latency_s(fit.op, layout, network)
    return latency, busbw
