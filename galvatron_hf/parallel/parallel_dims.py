"""Device meshes for a plan: PP x DP x TP with TP innermost, one mesh per distinct layer layout.

A plan gives every block its own ``(dp, tp, dp_type)``; ranks of a pipeline stage are ``n = world / pp``
consecutive ranks, TP groups are consecutive ranks inside the stage and DP groups are strided by ``tp``.
Every layout therefore is ``arange(world).reshape(pp, dp_replicate, dp_shard, tp)``. Meshes are built
lazily and cached, and every rank asks for them in the same order (the plan's order), because creating a
mesh is a collective call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class Layout:
    """Where a layer's tensors live inside its stage: ``dp`` batch parts, ``tp`` tensor-parallel ranks."""

    dp: int
    tp: int
    dp_type: str = "ddp"
    dp_shard: int = 0  # "hsdp": ranks the state is sharded over; the dp / dp_shard groups replicate it

    @classmethod
    def of(cls, strategy: LayerStrategy | VocabStrategy) -> Layout:
        return cls(strategy.dp, strategy.tp, strategy.dp_type, strategy.dp_shard)

    @property
    def replicate_shard(self) -> tuple[int, int]:
        """(dp_replicate, dp_shard) of the FSDP2 mesh: ddp replicates over dp, zero2/zero3 shard over dp,
        hsdp shards over ``dp_shard`` consecutive DP ranks and replicates over the ``dp / dp_shard`` groups."""
        if self.dp_type == "ddp":
            return self.dp, 1
        if self.dp_type == "hsdp":
            return self.dp // self.dp_shard, self.dp_shard
        return 1, self.dp

    @property
    def batch_layout(self) -> tuple[int, int]:
        """Activations only depend on (dp, tp); the dp type only changes how parameters are kept."""
        return (self.dp, self.tp)


@dataclass
class ParallelDims:
    """The plan's process layout on this rank, with named meshes built on demand."""

    world_size: int
    pp: int
    rank: int
    device_type: str = "cpu"
    _meshes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.pp < 1 or self.world_size % self.pp:
            raise ValueError(f"pp={self.pp} must be >= 1 and divide world_size={self.world_size}")

    @classmethod
    def from_plan(cls, plan: Plan, device_type: str = "cpu") -> ParallelDims:
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(world_size=world, pp=plan.pp, rank=rank, device_type=device_type)

    def prepare(self, plan: Plan) -> None:
        """Create every mesh and group the plan can need, in plan order on every rank.

        Creating a group is a collective over the world; with pipeline stages holding different blocks,
        lazily created groups would be requested in different orders on different ranks and hang.
        """
        layouts = [Layout.of(s) for s in plan.layers] + [Layout.of(plan.vocab)]
        for layout in layouts:
            self.layout_mesh(layout)
            self.dp_group(layout)
        tps = sorted({layout.tp for layout in layouts})
        for a in tps:
            for b in tps:
                if a < b:
                    common = math.gcd(a, b)
                    for tp in (a, b):
                        if tp > common:
                            self.relayout_group(common, tp // common)
        self.stage_group()
        _ = self.pp_mesh

    # ----- positions ---------------------------------------------------------------------------------
    @property
    def stage_size(self) -> int:
        return self.world_size // self.pp

    @property
    def stage(self) -> int:
        return self.rank // self.stage_size

    @property
    def stage_rank(self) -> int:
        return self.rank % self.stage_size

    def dp_rank(self, layout: Layout) -> int:
        """Which batch part this rank holds under ``layout`` (TP peers hold the same part)."""
        return self.stage_rank // layout.tp

    def tp_rank(self, layout: Layout) -> int:
        return self.stage_rank % layout.tp

    # ----- meshes ------------------------------------------------------------------------------------
    def mesh(self, shape: tuple[int, ...], names: tuple[str, ...]) -> DeviceMesh:
        """A cached ``init_device_mesh`` over all ranks (ranks in order, last dim innermost)."""
        key = (shape, names)
        if key not in self._meshes:
            self._meshes[key] = init_device_mesh(self.device_type, shape, mesh_dim_names=names)
        return self._meshes[key]

    def layout_mesh(self, layout: Layout) -> DeviceMesh:
        """4-D mesh (pp, dp_replicate, dp_shard, tp) for one layer layout (``Layout.replicate_shard``)."""
        replicate, shard = layout.replicate_shard
        return self.mesh((self.pp, replicate, shard, layout.tp), MESH_DIMS)

    def tp_mesh(self, layout: Layout) -> DeviceMesh:
        return self.layout_mesh(layout)["tp"]

    def fsdp_mesh(self, layout: Layout) -> DeviceMesh:
        """The mesh ``fully_shard`` gets: 2-D (replicate, shard), which FSDP2 runs as HSDP (shard 1: DDP)."""
        return self.layout_mesh(layout)["dp_replicate", "dp_shard"]

    def dp_group(self, layout: Layout) -> dist.ProcessGroup:
        """Ranks holding different batch parts under ``layout`` (the same TP index)."""
        return self.mesh((self.pp, layout.dp, layout.tp), ("pp", "dp", "tp"))["dp"].get_group()

    def stage_group(self) -> dist.ProcessGroup:
        """All ranks of this rank's pipeline stage."""
        return self.mesh((self.pp, self.stage_size), ("pp", "stage"))["stage"].get_group()

    @property
    def pp_mesh(self) -> DeviceMesh:
        return self.mesh((self.pp, self.stage_size), ("pp", "stage"))["pp"]

    def relayout_group(self, small_tp: int, ratio: int) -> dist.ProcessGroup:
        """Ranks exchanging batch parts when TP changes between ``small_tp`` and ``small_tp * ratio``.

        Inside a big-TP group the ranks with the same index modulo ``small_tp`` hold different small-TP
        batch parts; they form the middle dim of (pp, n / (small_tp * ratio), ratio, small_tp).
        """
        outer = self.stage_size // (small_tp * ratio)
        mesh = self.mesh((self.pp, outer, ratio, small_tp), ("pp", "outer", "exchange", "inner"))
        return mesh["exchange"].get_group()
