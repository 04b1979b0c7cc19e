"""The versioned hardware description: what the profiler writes and the planner reads.

Pure Python (no torch), so the planner can read it on a laptop. Conventions follow nccl-tests, so numbers
from either source mean the same thing:

* a collective's ``nbytes`` is the size of the full tensor: the input of all-reduce, reduce-scatter and
  all-to-all, the *output* of all-gather;
* ``time = latency_s + nbytes / algbw`` with ``algbw = busbw / factor``, where ``factor`` is
  ``2 (n - 1) / n`` for all-reduce and ``(n - 1) / n`` for all-gather, reduce-scatter and all-to-all.

Storing bus bandwidth makes entries comparable across group sizes: a ring's busbw is roughly constant in n,
so a group size that was not measured borrows the busbw of the nearest one that was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from galvatron_hf.jsonfile import VersionedJson

HARDWARE_SCHEMA = "galvatron-hf/hardware"
HARDWARE_VERSION = 2  # version 2 adds the optional ``network`` (inter-node links) and
# device.host_device_GBps / device.host_memory_bandwidth_GBps (CPU offload); version-1 files still read
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
PLACEMENTS = ("intra_node", "inter_node")

Placement = Literal["intra_node", "inter_node"]


class HardwareProfileError(ValueError):
    """A hardware file that cannot be read or lacks what a lookup needs; the message names the fix."""


def bus_factor(op: str, group_size: int) -> float:
    """nccl-tests' ratio busbw / algbw for a collective over ``group_size`` ranks."""
    n = group_size
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    raise HardwareProfileError(f"unknown collective {op!r}; known: {COLLECTIVES}")


@dataclass(frozen=True)
class CollectiveFit:
    """``latency_s + nbytes / algbw`` for one collective, group size and placement.

    ``ranks`` says how the group was laid out when measured: ``consecutive`` ranks (a TP group) or
    ``strided`` ranks (a DP group of a TP x DP mesh).
    """

    op: str
    group_size: int
    placement: Placement
    latency_s: float
    busbw_GBps: float
    ranks: Literal["consecutive", "strided"] = "consecutive"

    def time_s(self, nbytes: float, group_size: int | None = None) -> float:
        n = group_size or self.group_size
        if n <= 1 or nbytes <= 0:
            return 0.0
        algbw = self.busbw_GBps * 1e9 / bus_factor(self.op, n)
        return self.latency_s + nbytes / algbw


@dataclass(frozen=True)
class P2PFit:
    """Point-to-point send/recv between pipeline neighbours."""

    placement: Placement
    latency_s: float
    bandwidth_GBps: float

    def time_s(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return self.latency_s + nbytes / (self.bandwidth_GBps * 1e9)


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator.

    ``matmul_tflops`` is the rate large matmuls really reach (what time predictions use);
    ``peak_tflops`` the datasheet dense rate (what MFU divides by).
    """

    name: str
    memory_gb: float
    matmul_tflops: dict[str, float]  # dtype ("bf16", "fp16", "fp32") -> achieved TFLOP/s
    peak_tflops: dict[str, float]
    memory_bandwidth_GBps: float = 0.0
    reserved_memory_gb: float = 0.0  # CUDA context, NCCL buffers, allocator slack: not usable by tensors
    # CPU offload prices (0: not known, and offload is then not priced): pinned host <-> device copies, one
    # direction, and the share of host RAM bandwidth one device's process gets (the host optimizer step)
    host_device_GBps: float = 0.0
    host_memory_bandwidth_GBps: float = 0.0


@dataclass(frozen=True)
class NetworkSpec:
    """The links between nodes: what prices a collective by where its group lies (docs/cost_model.md, "Topology").

    ``nics_per_node`` NICs of ``nic_Gbps`` line rate each (one per GPU on rail-optimised H100 / A100 nodes:
    GPU ``i`` of every node sits on rail ``i``); a group with ``g`` ranks per node drives ``min(g, nics)`` of
    them. Latencies follow NCCL's ring model (``src/graph/tuning.cc``): a collective pays
    ``ring_base_latency_s`` once, ``nvlink_hop_latency_s`` per ring step inside a node and
    ``net_hop_latency_s`` per step that crosses nodes. ``fabric`` says in words what the network is.
    """

    nics_per_node: int
    nic_Gbps: float
    ring_base_latency_s: float
    nvlink_hop_latency_s: float
    net_hop_latency_s: float
    fabric: str = ""

    @property
    def nic_GBps(self) -> float:
        """One NIC's line rate in GB/s (1e9 bytes), one direction."""
        return self.nic_Gbps / 8.0


@dataclass(frozen=True)
class OverlapSpec:
    """Slowdown factors when communication runs alongside computation (both > 1 on real GPUs)."""

    compute_slowdown: float = 1.0
    comm_slowdown: float = 1.0


@dataclass(frozen=True)
class HardwareProfile(VersionedJson):
    """Read and written as versioned JSON (``galvatron_hf.jsonfile.VersionedJson``: unknown keys refused)."""

    JSON_KIND: ClassVar[str] = "hardware"
    JSON_SCHEMA: ClassVar[str | None] = HARDWARE_SCHEMA
    JSON_VERSION: ClassVar[int] = HARDWARE_VERSION
    JSON_ERROR: ClassVar[type[ValueError]] = HardwareProfileError
    JSON_WRITE_HINT: ClassVar[str] = "`galvatron-hf profile hardware --output {path}`"
    JSON_OLDER_VERSIONS: ClassVar[tuple[int, ...]] = (1,)

    name: str
    num_nodes: int
    gpus_per_node: int
    device: DeviceSpec
    collectives: list[CollectiveFit]
    p2p: list[P2PFit]
    overlap: OverlapSpec = field(default_factory=OverlapSpec)
    network: NetworkSpec | None = None  # inter-node links; without it inter-node groups use the fits alone
    backend: str = "nccl"
    sources: dict[str, str] = field(default_factory=dict)  # figure -> where the number comes from
    created: str = ""
    library_versions: dict[str, str] = field(default_factory=dict)
    schema: str = HARDWARE_SCHEMA
    version: int = HARDWARE_VERSION

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node

    # ----- lookups ---------------------------------------------------------------------------------------
    def placement_of(self, group_size: int, stride: int = 1) -> Placement:
        """A group of ``group_size`` ranks spaced ``stride`` apart stays in one node iff its span fits."""
        span = (group_size - 1) * stride + 1
        return "intra_node" if span <= self.gpus_per_node else "inter_node"

    def collective(
        self, op: str, group_size: int, placement: Placement, ranks: str = "consecutive"
    ) -> CollectiveFit:
        """The fit for this collective: exact group size if measured, else the nearest measured one."""
        candidates = [c for c in self.collectives if c.op == op and c.placement == placement]
        if not candidates:
            raise HardwareProfileError(
                f"hardware profile {self.name!r} has no {placement} {op} measurement; profile a cluster "
                f"with that placement (`galvatron-hf profile hardware`) or use a built-in hardware name"
            )
        same_layout = [c for c in candidates if c.ranks == ranks] or candidates
        return min(same_layout, key=lambda c: (abs(c.group_size - group_size), -c.group_size))

    def collective_time(
        self, op: str, nbytes: float, group_size: int, placement: Placement | None = None, stride: int = 1
    ) -> float:
        """Seconds for one collective of ``nbytes`` (see the module docstring) over ``group_size`` ranks."""
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        placement = placement or self.placement_of(group_size, stride)
        ranks = "consecutive" if stride == 1 else "strided"
        return self.collective(op, group_size, placement, ranks).time_s(nbytes, group_size)

    def p2p_time(self, nbytes: float, placement: Placement = "intra_node") -> float:
        fits = [p for p in self.p2p if p.placement == placement] or list(self.p2p)
        if not fits:
            raise HardwareProfileError(f"hardware profile {self.name!r} has no point-to-point measurement")
        return fits[0].time_s(nbytes)

    def matmul_flops_per_s(self, dtype: str) -> float:
        try:
            return self.device.matmul_tflops[dtype] * 1e12
        except KeyError:
            raise HardwareProfileError(
                f"hardware profile {self.name!r} has no matmul rate for {dtype}; it has "
                f"{sorted(self.device.matmul_tflops)}"
            ) from None

    # ----- (de)serialisation: VersionedJson, plus a check of the numbers -----------------------------------
    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A version-1 file is a version-2 profile without ``network`` and without the host-offload figures
        (read as unknown, 0: offload is then not priced); it may not hold those version-2 keys."""
        device = data.get("device")
        added = ["network"] if "network" in data else []
        if isinstance(device, dict):
            added += [f"device.{key}" for key in ("host_device_GBps", "host_memory_bandwidth_GBps") if key in device]
        if added:
            keys = ", ".join(repr(key) for key in added)
            raise HardwareProfileError(
                f"hardware file has version 1 but holds {keys}, version-2 keys: set \"version\": 2"
            )
        return {**data, "version": HARDWARE_VERSION}

    @classmethod
    def from_dict(cls, data: Any) -> HardwareProfile:
        profile = super().from_dict(data)
        profile.check()
        return profile

    def check(self) -> None:
        """Reject numbers no real machine has (non-positive bandwidths, unknown ops)."""
        problems = []
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            problems.append("num_nodes and gpus_per_node must be >= 1")
        if self.device.memory_gb <= 0:
            problems.append("device.memory_gb must be > 0")
        for c in self.collectives:
            if c.op not in COLLECTIVES or c.placement not in PLACEMENTS:
                problems.append(f"unknown collective entry {c.op}/{c.placement}")
            if c.busbw_GBps <= 0 or c.latency_s < 0 or c.group_size < 2:
                problems.append(f"{c.op} n={c.group_size} {c.placement}: needs busbw > 0, latency >= 0, n >= 2")
        for p in self.p2p:
            if p.bandwidth_GBps <= 0 or p.latency_s < 0:
                problems.append(f"p2p {p.placement}: needs bandwidth > 0 and latency >= 0")
        net = self.network
        if net is not None and (net.nics_per_node < 1 or net.nic_Gbps <= 0):
            problems.append("network: needs nics_per_node >= 1 and nic_Gbps > 0")
        if net is not None and min(net.ring_base_latency_s, net.nvlink_hop_latency_s, net.net_hop_latency_s) < 0:
            problems.append("network: latencies must be >= 0")
        if problems:
            raise HardwareProfileError(f"hardware profile {self.name!r} is not valid: " + "; ".join(problems))
