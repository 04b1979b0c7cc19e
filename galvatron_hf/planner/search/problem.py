"""One search's inputs in one object: every part of the search (bounds, exact solves, the uniform and plain
data-parallel comparisons, the smallest-budget search) reads the model, hardware, cost model, GPU count,
budget and step configs from here instead of taking them as five or six loose arguments; ``SearchOptions``
holds what the caller may set besides (``search_plan``'s keyword arguments)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from galvatron_hf.constants import MIXED_PRECISIONS
from galvatron_hf.planner.cost_model import GB, CostModel, CostReport, LayerCostSource, estimate_plan
from galvatron_hf.planner.search.space import StepConfig, step_configs

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.planner.plan import Plan
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


@dataclass(frozen=True)
class SearchOptions:
    """What a search prices and visits besides the model, the hardware, the GPUs and the budget: the keyword
    arguments of ``search_plan`` (its docstring says what each does), declared once."""

    global_batch_size: int | None = None
    mixed_precision: str = "bf16"
    attn_impl: str = "sdpa"
    compute: LayerCostSource | None = None
    max_global_batch_size: int | None = None
    accumulate_without_pipeline: bool = True
    cp_degrees: tuple[int, ...] | None = None
    max_pp: int | None = None


@dataclass(frozen=True)
class SearchProblem:
    """A checked search request: the model, the hardware and its cost model, the GPUs, the budget per GPU
    (GB = 1e9 bytes) and the step configs to visit."""

    spec: ModelSpec
    hardware: HardwareProfile
    model: CostModel
    num_gpus: int
    memory_gb: float
    configs: tuple[StepConfig, ...]

    @classmethod
    def create(
        cls,
        spec: ModelSpec,
        hardware: HardwareProfile,
        num_gpus: int,
        memory_gb: float,
        options: SearchOptions = SearchOptions(),
        offload: bool = False,
    ) -> SearchProblem:
        """Check the inputs (errors name the fix), build the cost model and list the step configs (all with CPU
        offload when ``offload``)."""
        _check_inputs(spec, hardware, num_gpus, memory_gb, options.global_batch_size, options.mixed_precision)
        precision, attn_impl = options.mixed_precision, options.attn_impl
        model = CostModel(spec, hardware, mixed_precision=precision, attn_impl=attn_impl, compute=options.compute)
        configs = step_configs(
            spec,
            num_gpus,
            options.global_batch_size,
            options.max_global_batch_size,
            accumulate_without_pipeline=options.accumulate_without_pipeline,
            cp_degrees=options.cp_degrees,
            offload=offload,
            max_pp=options.max_pp,
        )
        return cls(spec, hardware, model, num_gpus, memory_gb, tuple(configs))

    @property
    def budget_bytes(self) -> float:
        return self.memory_gb * GB

    def estimate(self, plan: Plan) -> CostReport:
        """Price a plan with this problem's cost model and budget (the last word on every plan returned)."""
        return estimate_plan(plan, self.spec, self.hardware, memory_gb=self.memory_gb, cost_model=self.model)

    @property
    def offloads(self) -> bool:
        return any(config.offload for config in self.configs)

    def with_offload(self) -> SearchProblem:
        """The same search with CPU offload on every step config."""
        return replace(self, configs=tuple(replace(config, offload=True) for config in self.configs))

    def with_budget(self, memory_gb: float) -> SearchProblem:
        """The same search at another budget (the smallest-budget search tries many)."""
        return replace(self, memory_gb=memory_gb)


def _check_inputs(
    spec: ModelSpec,
    hardware: HardwareProfile,
    num_gpus: int,
    memory_gb: float,
    global_batch_size: int | None,
    mixed_precision: str,
) -> None:
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_gpus > hardware.world_size:
        raise ValueError(
            f"{num_gpus} GPUs do not fit in {hardware.num_nodes} node(s) of {hardware.gpus_per_node}: pass "
            f"--num_nodes {math.ceil(num_gpus / hardware.gpus_per_node)}"
        )
    if not memory_gb or memory_gb <= 0:
        raise ValueError(f"memory_gb must be > 0, got {memory_gb}")
    if global_batch_size is not None and global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if not spec.blocks:
        raise ValueError(f"{spec.name} has no transformer blocks to plan")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be bf16, fp16 or fp32, got {mixed_precision!r}")
    hardware.matmul_flops_per_s(mixed_precision)  # a clear error when the profile lacks this dtype
