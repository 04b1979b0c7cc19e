"""`galvatron-hf profile hardware`: measure collectives, point-to-point, matmul rate and overlap.

Every rank calls :func:`profile_hardware` inside an initialised process group (torchrun, accelerate launch,
or ``run_distributed`` in tests); every rank gets the same :class:`HardwareProfile` back and rank 0 writes it.
With no process group (or a world of one) only the device itself is measured: matmul rates, memory and
memory bandwidth, with empty collective and point-to-point lists, which is all a 1-device plan needs
(``collective_time`` returns 0 for groups of one before it looks anything up).

What is measured, and how it maps onto the schema (nccl-tests conventions, see ``hardware_schema``):

* for each collective and each power-of-two group size ``n`` up to the world size, two layouts: consecutive
  ranks (TP groups) and ranks strided by ``world / n`` (DP groups of a TP x DP mesh). All groups of a layout
  run at once, as they do in training, so shared links are measured shared. Each size of a sweep is timed
  (warm-up, median of repeats, slowest rank), then ``latency + nbytes / algbw`` is fitted and busbw stored;
* point-to-point ping-pong between ranks ``d`` apart (``d = 1`` inside a node, ``d = gpus_per_node`` across
  nodes): pipeline neighbours;
* matmul rate per dtype (the slowest rank's), memory, and the slowdown of a matmul loop and an all-reduce
  loop run together (CUDA streams on GPU, threads on CPU) against each alone.
"""

from __future__ import annotations

import os
import platform
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch
import torch.distributed as dist

from galvatron_hf.constants import GB, torch_dtype
from galvatron_hf.profiler.fitting import fit_latency_bandwidth
from galvatron_hf.profiler.hardware_schema import (
    COLLECTIVES,
    CollectiveFit,
    DeviceSpec,
    HardwareProfile,
    OverlapSpec,
    P2PFit,
    bus_factor,
)
from galvatron_hf.profiler.timing import DeviceTimer, Progress, Repeats, median_time, synchronize, time_region

KiB, MiB = 1024, 1024**2

# Datasheet dense rates (TFLOP/s, no sparsity) by a substring of torch's device name; MFU divides by these.
DATASHEET_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


@dataclass(frozen=True)
class HardwareOptions:
    """What to measure. ``quick`` shrinks everything so a 4-rank CPU run takes seconds (tests, smoke runs)."""

    name: str = ""
    quick: bool = False
    message_sizes: tuple[int, ...] = ()  # bytes (full tensor); empty: a default sweep for the device
    repeats: Repeats | None = None
    matmul_dtypes: tuple[str, ...] = ()  # empty: bf16/fp16/fp32 on GPU, fp32/bf16 on CPU
    matmul_size: int = 0  # square matmul side; 0: a default for the device
    measure_overlap: bool = True
    progress: bool = True

    def sizes_for(self, device: torch.device) -> tuple[int, ...]:
        if self.message_sizes:
            return tuple(sorted(self.message_sizes))
        if self.quick:
            return (16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB)
        if device.type == "cuda":
            return tuple(4**i * 64 * KiB for i in range(7))  # 64 KiB .. 256 MiB
        return tuple(4**i * 16 * KiB for i in range(6))  # 16 KiB .. 16 MiB

    def repeats_for(self) -> Repeats:
        if self.repeats is not None:
            return self.repeats
        return Repeats(warmup=1, repeats=3) if self.quick else Repeats(warmup=3, repeats=10)

    def matmul_side(self, device: torch.device) -> int:
        if self.matmul_size:
            return self.matmul_size
        if device.type == "cuda":
            return 4096 if self.quick else 8192
        return 128 if self.quick else 1024

    def dtypes_for(self, device: torch.device) -> tuple[str, ...]:
        if self.matmul_dtypes:
            return self.matmul_dtypes
        return ("bf16", "fp16", "fp32") if device.type == "cuda" else ("fp32", "bf16")


@dataclass(frozen=True)
class WorldLayout:
    """Where this process sits: global rank, world size and node shape (from torchrun's environment)."""

    rank: int
    world_size: int
    gpus_per_node: int

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.gpus_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def placement(self, ranks: list[int]) -> str:
        return "intra_node" if len({self.node_of(r) for r in ranks}) == 1 else "inter_node"


@dataclass
class _Measured:
    """What the run found, filled step by step, turned into a HardwareProfile at the end."""

    collectives: list[CollectiveFit] = field(default_factory=list)
    p2p: list[P2PFit] = field(default_factory=list)
    overlap: OverlapSpec = field(default_factory=OverlapSpec)
    sources: dict[str, str] = field(default_factory=dict)


# ----- entry point -------------------------------------------------------------------------------------------
def profile_hardware(options: HardwareOptions | None = None, device: torch.device | None = None) -> HardwareProfile:
    """Measure this cluster; call on every rank (or alone). Returns the same profile on every rank."""
    options = options or HardwareOptions()
    device = device or default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL barriers and collectives use the current device
    layout = world_layout()
    repeats = options.repeats_for()
    progress = Progress("profile hardware", _step_count(options, layout, device), options.progress and layout.rank == 0)
    measured = _Measured()
    if layout.world_size > 1:
        measured.collectives = measure_collectives(layout, device, options.sizes_for(device), repeats, progress)
        measured.p2p = measure_p2p(layout, device, options.sizes_for(device), repeats, progress)
        sizes = options.sizes_for(device)
        measured.sources["collectives"] = f"measured: {len(sizes)} sizes {sizes[0]}..{sizes[-1]} B, fitted"
        measured.sources["p2p"] = "measured: ping-pong between pipeline neighbours, fitted"
        if options.measure_overlap:
            measured.overlap = measure_overlap(layout, device, options, progress)
            measured.sources["overlap"] = "measured: matmul loop and all-reduce loop together vs alone"
    else:
        measured.sources["collectives"] = "not measured: world size 1 (a 1-device plan communicates nothing)"
        measured.sources["overlap"] = "not measured: world size 1 (nothing to overlap with)"
    device_spec = measure_device(device, options, repeats, progress, measured.sources)
    return HardwareProfile(
        name=options.name or f"{device_spec.name} x{layout.world_size}",
        num_nodes=layout.num_nodes,
        gpus_per_node=layout.gpus_per_node,
        device=device_spec,
        collectives=measured.collectives,
        p2p=measured.p2p,
        overlap=measured.overlap,
        backend=dist.get_backend() if dist.is_initialized() else "none",
        sources=measured.sources,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        library_versions=library_versions(),
    )


def default_device() -> torch.device:
    """The GPU of this local rank when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def world_layout() -> WorldLayout:
    """Read rank, world size and ranks per node; check that every node has the same number of ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return WorldLayout(rank=0, world_size=1, gpus_per_node=1)
    world = dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if local < 1 or world % local:
        raise RuntimeError(
            f"LOCAL_WORLD_SIZE={local} does not divide WORLD_SIZE={world}: launch the same number of processes "
            "on every node (torchrun --nproc_per_node N on each)"
        )
    return WorldLayout(rank=dist.get_rank(), world_size=world, gpus_per_node=local)


def library_versions() -> dict[str, str]:
    import galvatron_hf

    versions = {
        "torch": torch.__version__,
        "galvatron_hf": galvatron_hf.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        try:
            versions["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except (RuntimeError, AttributeError):
            pass
    return versions


def _step_count(options: HardwareOptions, layout: WorldLayout, device: torch.device) -> int:
    steps = 1 + len(options.dtypes_for(device))  # matmul per dtype, then memory
    if layout.world_size > 1:
        group_layouts = sum(len(_layouts(layout.world_size, n)) for n in group_sizes(layout.world_size))
        steps += group_layouts * len(COLLECTIVES) + len(_p2p_distances(layout)) + int(options.measure_overlap)
    return steps


# ----- collectives -------------------------------------------------------------------------------------------
def group_sizes(world_size: int) -> list[int]:
    """Powers of two from 2 up to the world size (plus the world size itself when it is not one)."""
    sizes, n = [], 2
    while n <= world_size:
        sizes.append(n)
        n *= 2
    if world_size > 1 and world_size not in sizes:
        sizes.append(world_size)
    return sizes


def _layouts(world_size: int, n: int) -> list[tuple[str, list[list[int]]]]:
    """Rank groups of size ``n`` that cover the world: consecutive ranks, and ranks strided by world / n."""
    if world_size % n:
        return []
    consecutive = [list(range(start, start + n)) for start in range(0, world_size, n)]
    layouts = [("consecutive", consecutive)]
    stride = world_size // n
    if stride > 1:
        layouts.append(("strided", [list(range(offset, world_size, stride)) for offset in range(stride)]))
    return layouts


def measure_collectives(
    layout: WorldLayout, device: torch.device, sizes: tuple[int, ...], repeats: Repeats, progress: Progress
) -> list[CollectiveFit]:
    fits: list[CollectiveFit] = []
    for n in group_sizes(layout.world_size):
        for ranks_kind, groups in _layouts(layout.world_size, n):
            my_group, my_ranks = _new_groups(groups, layout.rank)
            for op in COLLECTIVES:
                times = [_collective_time(op, nbytes, n, my_group, device, repeats) for nbytes in sizes]
                fit = fit_latency_bandwidth(sizes, times)
                entry = CollectiveFit(
                    op=op,
                    group_size=n,
                    placement=layout.placement(my_ranks),  # type: ignore[arg-type]
                    latency_s=fit.latency_s,
                    busbw_GBps=fit.bandwidth_Bps * bus_factor(op, n) / 1e9,
                    ranks=ranks_kind,  # type: ignore[arg-type]
                )
                fits.extend(_unique_placements(entry, groups, layout))
                progress.step(
                    f"{op} n={n} {ranks_kind}: latency {fit.latency_s * 1e6:.1f} us, busbw {entry.busbw_GBps:.2f} GB/s"
                )
            _destroy(my_group)
    return fits


def _unique_placements(entry: CollectiveFit, groups: list[list[int]], layout: WorldLayout) -> list[CollectiveFit]:
    """Every group of a layout has the same placement (same span), so one entry stands for all of them."""
    placements = {layout.placement(g) for g in groups}
    if len(placements) > 1:  # uneven nodes: keep the slowest case, it bounds the step time
        return [CollectiveFit(**{**entry.__dict__, "placement": "inter_node"})]
    return [entry]


def _new_groups(groups: list[list[int]], rank: int) -> tuple[dist.ProcessGroup, list[int]]:
    """Create every group (all ranks must call new_group for each, in the same order); return ours."""
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = (group, ranks)
    assert mine is not None, f"rank {rank} is in none of {groups}"
    return mine


def _destroy(group: dist.ProcessGroup) -> None:
    try:
        dist.destroy_process_group(group)
    except (RuntimeError, ValueError):
        pass  # older torch versions cannot destroy sub-groups; they are freed at exit


def _collective_time(
    op: str, nbytes: int, n: int, group: dist.ProcessGroup, device: torch.device, repeats: Repeats
) -> float:
    """Median seconds of one collective of ``nbytes`` (full tensor), taken on the slowest rank."""
    numel = max(nbytes // 4 // n, 1) * n  # float32 elements, divisible by the group size
    full = torch.ones(numel, dtype=torch.float32, device=device)
    part = torch.ones(numel // n, dtype=torch.float32, device=device)
    out = torch.empty_like(full)
    calls = {
        "all_reduce": lambda: dist.all_reduce(full, group=group),
        "all_gather": lambda: dist.all_gather_into_tensor(full, part, group=group),
        "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, full, group=group),
        "all_to_all": lambda: dist.all_to_all_single(out, full, group=group),
    }
    call = calls[op]
    iterations = _iterations(nbytes, repeats)

    def run_once() -> float:
        synchronize(device)
        dist.barrier(group=group)
        timer = DeviceTimer(device)
        timer.start()
        for _ in range(iterations):
            call()
        return timer.stop() / iterations

    with warnings.catch_warnings():  # torch >= 2.12 deprecates the *_tensor names that torch 2.11 needs
        warnings.simplefilter("ignore", FutureWarning)
        seconds = median_time(run_once, repeats)
    return _slowest(seconds, device)


def _iterations(nbytes: int, repeats: Repeats) -> int:
    """Back-to-back ops per timed run: small messages repeat so the barrier's skew between ranks is amortised.

    Quick runs (few repeats) keep one op per run: they check the machinery, not the last microsecond.
    """
    if repeats.repeats <= 3:
        return 1
    return max(1, min(16, (1 * MiB) // max(nbytes, 1)))


def _slowest(seconds: float, device: torch.device) -> float:
    """The largest value over all ranks: a collective is done when its slowest member is."""
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def _fastest(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return float(tensor.item())


# ----- point-to-point ----------------------------------------------------------------------------------------
def _p2p_distances(layout: WorldLayout) -> dict[str, int]:
    """Rank distances that give each placement: 1 inside a node, one node's width across nodes."""
    distances = {}
    if layout.gpus_per_node > 1:
        distances["intra_node"] = 1
    if layout.num_nodes > 1:
        distances["inter_node"] = layout.gpus_per_node
    return distances


def _partner(rank: int, distance: int, world_size: int) -> tuple[int | None, bool]:
    """The rank ``distance`` away to pair with, and whether this rank leads (sends first)."""
    if (rank // distance) % 2 == 0:
        return (rank + distance, True) if rank + distance < world_size else (None, True)
    return rank - distance, False


def measure_p2p(
    layout: WorldLayout, device: torch.device, sizes: tuple[int, ...], repeats: Repeats, progress: Progress
) -> list[P2PFit]:
    fits = []
    for placement, distance in _p2p_distances(layout).items():
        partner, leader = _partner(layout.rank, distance, layout.world_size)
        times = [_ping_pong_time(nbytes, partner, leader, device, repeats) for nbytes in sizes]
        fit = fit_latency_bandwidth(sizes, times)
        fits.append(P2PFit(placement=placement, latency_s=fit.latency_s, bandwidth_GBps=fit.bandwidth_Bps / 1e9))  # type: ignore[arg-type]
        progress.step(f"p2p {placement}: latency {fit.latency_s * 1e6:.1f} us, {fit.bandwidth_Bps / 1e9:.2f} GB/s")
    return fits


def _ping_pong_time(nbytes: int, partner: int | None, leader: bool, device: torch.device, repeats: Repeats) -> float:
    """One-way seconds for ``nbytes``: half a round trip measured by the leader, slowest pair wins."""
    buffer = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    iterations = _iterations(nbytes, repeats)

    def run_once() -> float:
        synchronize(device)
        dist.barrier()
        if partner is None:
            return 0.0
        timer = DeviceTimer(device)
        timer.start()
        for _ in range(iterations):
            if leader:
                dist.send(buffer, partner)
                dist.recv(buffer, partner)
            else:
                dist.recv(buffer, partner)
                dist.send(buffer, partner)
        return timer.stop() / 2 / iterations

    seconds = median_time(run_once, repeats)
    return _slowest(seconds if leader else 0.0, device)


# ----- the device ----------------------------------------------------------------------------------------------
def measure_device(
    device: torch.device, options: HardwareOptions, repeats: Repeats, progress: Progress, sources: dict[str, str]
) -> DeviceSpec:
    name = device_name(device)
    side = options.matmul_side(device)
    rates = {}
    for dtype in options.dtypes_for(device):
        rates[dtype] = matmul_tflops(device, torch_dtype(dtype), side, repeats)
        if dist.is_initialized() and dist.get_world_size() > 1:
            rates[dtype] = _fastest(rates[dtype], device)  # the slowest device sets the pace
        progress.step(f"matmul {dtype} {side}x{side}: {rates[dtype]:.2f} TFLOP/s")
    sources["device.matmul_tflops"] = f"measured: {side}^3 matmul, median, slowest rank"
    peak = _datasheet(name)
    if peak:
        sources["device.peak_tflops"] = "datasheet dense rate for " + name
    else:
        peak = dict(rates)
        sources["device.peak_tflops"] = f"no datasheet figure known for {name!r}: the measured matmul rate"
    memory_gb, reserved_gb = device_memory_gb(device)
    bandwidth = memory_bandwidth_GBps(device, options.quick, repeats)
    sources["device.memory_gb"] = (
        "torch.cuda.get_device_properties" if device.type == "cuda" else "host RAM / local ranks"
    )
    sources["device.memory_bandwidth_GBps"] = "measured: device-to-device copy"
    host_device, host_memory = host_bandwidths_GBps(device, options.quick, repeats)
    if host_device:
        sources["device.host_device_GBps"] = "measured: pinned host-to-device and device-to-host copies, the slower"
    sources["device.host_memory_bandwidth_GBps"] = "measured: host RAM copy, divided by the ranks on this host"
    progress.step(
        f"memory {memory_gb:.1f} GB ({reserved_gb:.2f} outside the allocator), copy bandwidth {bandwidth:.1f} GB/s"
    )
    return DeviceSpec(
        name=name,
        memory_gb=memory_gb,
        matmul_tflops=rates,
        peak_tflops=peak,
        memory_bandwidth_GBps=bandwidth,
        reserved_memory_gb=reserved_gb,
        host_device_GBps=host_device,
        host_memory_bandwidth_GBps=host_memory,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _datasheet(name: str) -> dict[str, float]:
    for key, rates in DATASHEET_TFLOPS.items():
        if key in name:
            return dict(rates)
    return {}


def matmul_tflops(device: torch.device, dtype: torch.dtype, side: int, repeats: Repeats) -> float:
    """Achieved TFLOP/s of a square matmul (2 side^3 FLOPs)."""
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    out = torch.empty(side, side, device=device, dtype=dtype)
    seconds = time_region(device, lambda: torch.matmul(a, b, out=out), repeats)
    return 2.0 * side**3 / seconds / 1e12


def device_memory_gb(device: torch.device) -> tuple[float, float]:
    """(total GB, GB held outside PyTorch's allocator: CUDA context, NCCL buffers). CPU: RAM per local rank.

    GB is 1e9 bytes, the planner's unit (``planner/cost_model/``).
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        outside_allocator = max(total - free - torch.cuda.memory_reserved(device), 0)
        return total / GB, outside_allocator / GB
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / GB / max(ranks_here, 1), 0.0


def memory_bandwidth_GBps(device: torch.device, quick: bool, repeats: Repeats) -> float:
    """Bytes read plus written per second by a large copy: the rate memory-bound kernels approach."""
    nbytes = (16 * MiB if quick else 256 * MiB) if device.type == "cuda" else (4 * MiB if quick else 64 * MiB)
    source = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = time_region(device, lambda: target.copy_(source), repeats)
    return 2 * nbytes / seconds / 1e9


def host_bandwidths_GBps(device: torch.device, quick: bool, repeats: Repeats) -> tuple[float, float]:
    """(pinned host <-> device copy rate, the slower direction; host RAM copy rate per rank on this host).

    What CPU offload moves through: FSDP2's CPUOffloadPolicy copies each fp32 shard to the device before its
    all-gather and each reduced gradient shard back, and runs the optimizer step in host memory. Every rank of a
    host copies at once (as offloaded training does), so both are what one rank gets. 0 for the first on a CPU.
    """
    host_device = 0.0
    if device.type == "cuda":
        nbytes = 16 * MiB if quick else 256 * MiB
        host = torch.ones(nbytes // 4, dtype=torch.float32).pin_memory()
        on_device = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        to_device = time_region(device, lambda: on_device.copy_(host, non_blocking=True), repeats)
        to_host = time_region(device, lambda: host.copy_(on_device, non_blocking=True), repeats)
        host_device = nbytes / max(to_device, to_host) / 1e9
        if dist.is_initialized() and dist.get_world_size() > 1:
            host_device = _fastest(host_device, device)  # the slowest rank's rate (a MIN all-reduce)
    nbytes = 4 * MiB if quick else 64 * MiB
    source = torch.ones(nbytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    seconds = time_region(torch.device("cpu"), lambda: target.copy_(source), repeats)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return host_device, 2 * nbytes / seconds / 1e9 / max(ranks_here, 1)


# ----- overlap -------------------------------------------------------------------------------------------------
def measure_overlap(
    layout: WorldLayout, device: torch.device, options: HardwareOptions, progress: Progress
) -> OverlapSpec:
    """Run a matmul loop and an all-reduce loop alone, then together; the ratios are the slowdowns."""
    side = options.matmul_side(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    message = torch.ones((64 * MiB if device.type == "cuda" and not options.quick else 1 * MiB) // 4, device=device)
    one_matmul = _median_of(lambda: _run_alone(device, lambda: torch.mm(a, b)), 3)
    one_reduce = _median_of(lambda: _run_alone(device, lambda: dist.all_reduce(message)), 3)
    # balance the two loops so each runs alongside the other for its whole duration
    target = 8 * max(one_matmul, one_reduce)
    matmuls = _slowest_count(target / one_matmul, device)
    reduces = _slowest_count(target / one_reduce, device)

    def compute() -> None:
        for _ in range(matmuls):
            torch.mm(a, b)

    def communicate() -> None:
        for _ in range(reduces):
            dist.all_reduce(message)

    compute_alone = _median_of(lambda: _run_alone(device, compute), 3)
    comm_alone = _median_of(lambda: _run_alone(device, communicate), 3)
    together = [_run_together(device, compute, communicate) for _ in range(3)]
    compute_together = sorted(t[0] for t in together)[1]
    comm_together = sorted(t[1] for t in together)[1]
    compute_slowdown = _slowest(max(compute_together / compute_alone, 1.0), device)
    comm_slowdown = _slowest(max(comm_together / comm_alone, 1.0), device)
    progress.step(f"overlap: compute x{compute_slowdown:.2f}, communication x{comm_slowdown:.2f}")
    return OverlapSpec(compute_slowdown=compute_slowdown, comm_slowdown=comm_slowdown)


def _slowest_count(count: float, device: torch.device) -> int:
    """Ranks must agree on the number of collectives they issue: take the largest count of any rank."""
    return max(1, min(int(round(_slowest(count, device))), 256))


def _median_of(measure, count: int) -> float:
    values = sorted(measure() for _ in range(count))
    return values[len(values) // 2]


def _run_alone(device: torch.device, work) -> float:
    synchronize(device)
    dist.barrier()
    timer = DeviceTimer(device)
    timer.start()
    work()
    return timer.stop()


def _run_together(device: torch.device, compute, communicate) -> tuple[float, float]:
    """(compute seconds, communication seconds) while both run: CUDA streams on GPU, threads on CPU."""
    synchronize(device)
    dist.barrier()
    if device.type == "cuda":
        compute_stream, comm_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)
        compute_timer, comm_timer = DeviceTimer(device, compute_stream), DeviceTimer(device, comm_stream)
        with torch.cuda.stream(compute_stream):
            compute_timer.start()
            compute()
        with torch.cuda.stream(comm_stream):
            comm_timer.start()
            communicate()
        return compute_timer.stop(), comm_timer.stop()
    result: dict[str, float] = {}

    def timed_compute() -> None:
        timer = DeviceTimer(device)
        timer.start()
        compute()
        result["compute"] = timer.stop()

    thread = threading.Thread(target=timed_compute)
    comm_timer = DeviceTimer(device)
    thread.start()
    comm_timer.start()
    communicate()
    comm_seconds = comm_timer.stop()
    thread.join()
    return result["compute"], comm_seconds
