"""``parallelize``: apply a Plan to an HF model in place, in one fixed order, as torchtitan's parallelize does.

1. Check the plan once, before any collective (``check_plan``).
2. Prepare the HF model: attention implementation, no KV cache, no HF gradient checkpointing, the device.
3. Build every mesh the plan needs (``ParallelDims.prepare``), in plan order on every rank.
4. On the (stage) module: TP -> activation checkpointing -> FSDP2 -> relayout hooks -> materialise a meta
   model. Each technique file is entered once and walks the blocks (and the vocabulary layers) itself.
5. With pp > 1, step 4 runs inside the pipeline's one entry (``build_pipeline``): the model is first cut to this
   rank's stage, then parallelised, then wrapped in the schedule.

The family-specific parts (pipeline stage forward, head tensors) are asked of ``families.family_for(spec)``.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.activation_checkpoint import apply_ac
from galvatron_hf.parallel.attention import attention_for, set_attn_implementation
from galvatron_hf.parallel.compile import CompileClock, CompileConfig, apply_compile
from galvatron_hf.parallel.data_parallel import apply_fsdp
from galvatron_hf.parallel.families import family_for
from galvatron_hf.parallel.kernels import KernelConfig, apply_kernels
from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.parallel.offload import materialize_device, move_buffers
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.parallel_model import ParallelModel
from galvatron_hf.parallel.pipeline_parallel import build_pipeline
from galvatron_hf.parallel.plan_check import check_plan
from galvatron_hf.parallel.relayout import HeadTensors, RelayoutTracker
from galvatron_hf.parallel.tensor_parallel import apply_tp
from galvatron_hf.planner.plan import Plan


def parallelize(
    model: nn.Module,
    plan: Plan,
    *,
    spec: ModelSpec | None = None,
    device: torch.device | str | None = None,
    mixed_precision: str | None = None,
    attn_implementation: str | None = None,
    loss_scaler: LossScaler | None = None,
    kernels: KernelConfig | None = None,
    compile_config: CompileConfig | None = None,
) -> ParallelModel:
    """Apply ``plan`` to the HF ``model`` in place (built on CPU, on ``device`` or on the meta device).

    ``spec`` defaults to ``describe_model(model)``; ``mixed_precision`` to ``plan.mixed_precision``
    (``"bf16"``, ``"fp16"`` with dynamic loss scaling, ``"fp32"``); ``attn_implementation`` to SDPA
    (flash_attention_2 on CUDA when installed). ``kernels`` patches the whole model with fused kernels before
    any pruning or sharding (``kernels.py``); ``compile_config`` compiles each block after TP, before
    checkpointing and FSDP2 (``compile.py``). A meta-device model is materialised shard by shard and
    initialised with HF's initialisation. Raises ``PlanError`` before any collective if the plan cannot run.
    """
    if not dist.is_initialized():
        raise RuntimeError("parallelize needs torch.distributed initialised (torchrun, or init_process_group)")
    if spec is None:
        from galvatron_hf.adapters import describe_model

        spec = describe_model(model)
    check_plan(plan, spec, dist.get_world_size())
    device = torch.device(device) if device is not None else _default_device()
    precision = mixed_precision or plan.mixed_precision
    on_meta = _on_meta(model)
    applied = apply_kernels(model, spec, plan, device, kernels)
    clock = CompileClock() if compile_config is not None else None
    _prepare(model, plan, device, attn_implementation, on_meta)
    dims = ParallelDims.from_plan(plan, device_type=device.type)
    dims.prepare(plan)
    tracker = RelayoutTracker(dims, Layout.of(plan.vocab).batch_layout)
    walk = functools.partial(
        _parallelize_module,
        spec=spec,
        plan=plan,
        dims=dims,
        tracker=tracker,
        heads=family_for(spec).head_tensors,
        precision=precision,
        compile_config=compile_config,
        materialize_on=device if on_meta else None,
    )
    pipeline = None
    if plan.pp == 1:
        walk(model, is_stage=False)
    else:
        pipeline = build_pipeline(model, spec, plan, dims, device, functools.partial(walk, is_stage=True))
    scaler = loss_scaler or (LossScaler() if precision == "fp16" else None)
    layout = pipeline.layout if pipeline is not None else None
    return ParallelModel(
        model, plan, spec, dims, device, precision, tracker, scaler, pipeline, layout, applied, clock
    )


def _parallelize_module(
    module: nn.Module,
    *,
    spec: ModelSpec,
    plan: Plan,
    dims: ParallelDims,
    tracker: RelayoutTracker,
    heads: HeadTensors | None,
    precision: str,
    compile_config: CompileConfig | None,
    materialize_on: torch.device | None,
    is_stage: bool,
) -> None:
    """TP -> compile -> activation checkpointing -> FSDP2 -> relayout hooks on ``module`` (a model or one
    pipeline stage), then, for a meta-device module, its shards allocated and initialised on ``materialize_on``.
    Compile comes before checkpointing so a checkpointed block recomputes its compiled forward (``compile.py``)."""
    apply_tp(module, spec, plan, dims)
    apply_compile(module, spec, compile_config)
    apply_ac(module, spec, plan)
    apply_fsdp(module, spec, plan, dims, precision)
    tracker.install(module, spec, plan, heads, is_stage)
    if materialize_on is not None:
        materialize(module, materialize_device(plan, materialize_on))
        move_buffers(module, materialize_on)


def _prepare(
    model: nn.Module, plan: Plan, device: torch.device, attn_implementation: str | None, on_meta: bool
) -> None:
    """What the HF model needs before any technique: its attention, no KV cache, no HF checkpointing, its device."""
    chosen = attention_for(plan, device, attn_implementation)
    set_attn_implementation(model, chosen, required=attn_implementation is not None)
    _disable_cache(model)
    if hf_checkpointing(model):
        model.gradient_checkpointing_disable()  # the plan checkpoints per block; HF's would nest inside ours
    if not on_meta:
        model.to(device)


def hf_checkpointing(model: nn.Module) -> bool:
    """Whether HF's own activation checkpointing is on (``is_activation_checkpointing`` in transformers 5;
    the older ``is_gradient_checkpointing`` warns there, so it is read only where the new name is missing)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@torch.no_grad()
def materialize(module: nn.Module, device: torch.device) -> None:
    """Allocate this rank's shards of a model built on the meta device and initialise them as HF does.

    Only local shards are allocated (parameters are already DTensors); HF's ``initialize_weights`` then fills
    parameters and recomputes buffers such as rotary ``inv_freq``. To load pretrained weights instead, use
    the checkpoint module's loaders on the result.
    """
    module.to_empty(device=device)
    for sub in module.modules():
        sub.__dict__.pop("_is_hf_initialized", None)
        for tensor in (*sub.parameters(recurse=False), *sub.buffers(recurse=False)):
            tensor.__dict__.pop("_is_hf_initialized", None)
    init = getattr(module, "initialize_weights", None) or getattr(module, "init_weights", None)
    if init is None:
        raise TypeError("a meta-device model needs HF's initialize_weights() to be materialised")
    init()


def _default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun / accelerate), made current for NCCL; else the CPU."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _disable_cache(model: nn.Module) -> None:
    """Training never uses the KV cache: a cache would also make checkpoint recomputation differ (T5's
    cross-attention reuses cached keys). Sub-models (T5's decoder stack) hold their own config copies."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            with contextlib.suppress(AttributeError):
                config.use_cache = False
