"""``parallelize``: apply a Plan to an HF model in place, and the ``ParallelModel`` that trains it.

Order per block, as in torchtitan: TP -> activation checkpointing -> FSDP2 -> relayout hooks; then the
vocabulary layers (embedding, final norm, head) get TP by ``plan.vocab`` and the root ``fully_shard``.
With ``pp > 1`` the model is first pruned to this rank's stage (``pipeline_parallel.prune_to_stage``) and
a ``PipelineRunner`` runs the schedule; the same functions parallelise the pruned stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
from galvatron_hf.parallel.activation_checkpoint import apply_activation_checkpointing
from galvatron_hf.parallel.data_parallel import (
    apply_data_parallel,
    mixed_precision_policy,
)
from galvatron_hf.parallel.grad_norm import clip_grad_norm_
from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.relayout import HEAD_TENSORS, RelayoutTracker
from galvatron_hf.parallel.tensor_parallel import (
    apply_tensor_parallel,
    tie_output_embeddings,
)
from galvatron_hf.planner.plan import Plan, PlanError

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------
# Parallelising blocks and vocabulary layers (also used on a pruned pipeline stage)
# ----------------------------------------------------------------------------------------------------------


def present_blocks(module: nn.Module, spec: ModelSpec) -> list[tuple[int, LayerSpec, nn.Module]]:
    """(index, spec, module) of the blocks ``module`` holds (all of them, or one pipeline stage's)."""
    found = []
    for index, layer in enumerate(spec.blocks):
        block = _find(module, layer.root)
        if block is not None:
            found.append((index, layer, block))
    return found


def _find(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None


def parallelize_blocks(
    module: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    dims: ParallelDims,
    tracker: RelayoutTracker,
    mixed_precision: str = "fp32",
) -> None:
    """TP -> activation checkpointing -> ``fully_shard`` -> relayout hooks, block by block as the plan says."""
    policy = mixed_precision_policy(mixed_precision)
    for index, layer, block in present_blocks(module, spec):
        strategy = plan.layers[index]
        layout = Layout.of(strategy)
        apply_tensor_parallel(
            block,
            layer.tp_rules,
            layer.tp_attributes,
            dims.tp_mesh(layout),
            where=f"block {index} ({layer.root})",
        )
        if strategy.checkpoint:
            apply_activation_checkpointing(block)
        apply_data_parallel(block, dims.fsdp_mesh(layout), strategy.dp_type, policy)
        heads = HEAD_TENSORS.get(spec.family)
        tracker.install_block(
            block,
            layout.batch_layout,
            heads,
            dims.tp_mesh(layout).get_group() if heads else None,
        )


def parallelize_vocab(
    module: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    dims: ParallelDims,
    tracker: RelayoutTracker,
    mixed_precision: str = "fp32",
    is_stage: bool = False,
) -> None:
    """Split the embedding / head by ``plan.vocab``, shard everything no block owns with the root FSDP."""
    layout = Layout.of(plan.vocab)
    tp_mesh = dims.tp_mesh(layout)
    tied = _tied_embeddings(module)
    aliases = _alias_groups(module)
    others = [layer for layer in spec.layers if not layer.is_block]
    for layer in others:
        root = _find(module, layer.root)
        if root is None:
            continue
        rules = [rule for rule in layer.tp_rules if _find(root, rule.module) is not None]
        rules += _sharing_siblings(root, rules)
        attributes = [a for a in layer.tp_attributes if _find(root, a.module) is not None]
        apply_tensor_parallel(root, rules, attributes, tp_mesh, vocab=True, where=f"{layer.name} (vocab)")
    tie_output_embeddings(module, tied)
    _restore_aliases(module, aliases)
    for layer in others:  # everything after a block (final norms, pooler, head) runs in the vocab layout
        if layer in spec.pre_layers:
            continue
        for path in layer.modules:
            target = _find(module, _join(layer.root, path))
            if target is not None:
                tracker.install_input_layout(target)
    apply_data_parallel(
        module,
        dims.fsdp_mesh(layout),
        plan.vocab.dp_type,
        mixed_precision_policy(mixed_precision),
    )
    tracker.install_root(module, plan.vocab.dp, convert_outputs=is_stage)


def _sharing_siblings(root: nn.Module, rules: list) -> list:
    """Rules for modules of the same type that share a split module's weight (T5's ``encoder.embed_tokens``
    and ``decoder.embed_tokens`` share ``shared.weight``): they must be split the same way to run."""
    from dataclasses import replace

    extra = []
    named = [rule.module for rule in rules]
    for rule in rules:
        module = root.get_submodule(rule.module)
        weight = getattr(module, "weight", None)
        for path, other in root.named_modules():
            if path not in named and type(other) is type(module) and getattr(other, "weight", None) is weight:
                extra.append(replace(rule, module=path))
                named.append(path)
    return extra


def _alias_groups(module: nn.Module) -> list[list[str]]:
    """Names sharing one parameter (BERT's ``cls.predictions.bias`` is ``decoder.bias``)."""
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _restore_aliases(module: nn.Module, groups: list[list[str]]) -> None:
    """TP replaced one name of a shared parameter with a DTensor: point the other names at it too."""
    params = dict(module.named_parameters(remove_duplicate=False))
    for names in groups:
        distinct = {id(params[n]): params[n] for n in names}
        if len(distinct) == 1:
            continue
        split = [p for p in distinct.values() if hasattr(p, "to_local")]
        if not split or any(p.placements != split[0].placements for p in split):
            raise ValueError(f"parameters {names} are one tensor in the model but TP split them differently")
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, split[0])


def _join(root: str, path: str) -> str:
    return f"{root}.{path}" if root and path else root or path


def _tied_embeddings(module: nn.Module) -> bool:
    get_in, get_out = (
        getattr(module, "get_input_embeddings", None),
        getattr(module, "get_output_embeddings", None),
    )
    if get_in is None or get_out is None:
        return False
    try:
        inputs, outputs = get_in(), get_out()
    except (AttributeError, NotImplementedError):
        return False
    return inputs is not None and outputs is not None and outputs.weight is inputs.weight


# ----------------------------------------------------------------------------------------------------------
# Checks, attention implementation, meta-device materialisation
# ----------------------------------------------------------------------------------------------------------


def check_plan(plan: Plan, spec: ModelSpec, world_size: int) -> None:
    """Everything that can be wrong with a plan, raised before any collective runs."""
    plan.validate(world_size=world_size, spec=spec)
    for index, (strategy, layer) in enumerate(zip(plan.layers, spec.blocks)):
        for attribute in ("num_heads", "num_kv_heads"):
            count = getattr(layer, attribute)
            if strategy.tp > 1 and count and count % strategy.tp:
                raise PlanError(f"layer {index}: tp={strategy.tp} does not divide {attribute}={count}; lower tp")
    if plan.pp > 1:
        from galvatron_hf.parallel.pipeline_parallel import check_pipeline_plan

        check_pipeline_plan(spec, plan)


FULL_MASK_SDPA = "galvatron_sdpa_full_mask"


def default_attn_implementation(device: torch.device) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, SDPA otherwise."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def has_layout_changes(plan: Plan) -> bool:
    """Whether activations change layout somewhere (some layer's TP degree differs from another's)."""
    return len({s.tp for s in plan.layers} | {plan.vocab.tp}) > 1


def attention_for(plan: Plan, device: torch.device, requested: str | None) -> str:
    """The attention implementation to run.

    HF drops the mask when a rank's batch part has no padding (SDPA's ``is_causal`` fast path, flash
    attention's unpadded path) and builds one when it has padding: with layout changes the ranks exchanging
    batch parts would then disagree on what to exchange and hang. Plans with layout changes therefore use
    SDPA with the mask always built (HF's own ``sdpa_mask`` without the skip, registered under
    ``FULL_MASK_SDPA``); eager attention always builds its mask and is kept.
    """
    chosen = requested or default_attn_implementation(device)
    if not has_layout_changes(plan) or chosen == "eager":
        return chosen
    _register_full_mask_sdpa()
    return FULL_MASK_SDPA


def _register_full_mask_sdpa() -> None:
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]

    def full_sdpa_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False
        if "allow_is_bidirectional_skip" in kwargs:
            kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionMaskInterface.register(FULL_MASK_SDPA, full_sdpa_mask)
    AttentionInterface.register(FULL_MASK_SDPA, ALL_ATTENTION_FUNCTIONS["sdpa"])


def set_attn_implementation(model: nn.Module, implementation: str, required: bool = False) -> None:
    """Switch HF attention; a default choice the model does not support leaves its own in place."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(implementation)
        except (ValueError, ImportError):
            if required:
                raise
    elif hasattr(model, "config"):
        model.config._attn_implementation = implementation


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


# ----------------------------------------------------------------------------------------------------------
# The trainable result
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ParallelModel:
    """An HF model parallelised by a plan; trains under the batch/loss contract of ``docs/runtime.md``."""

    module: nn.Module
    plan: Plan
    spec: ModelSpec
    dims: ParallelDims
    device: torch.device
    mixed_precision: str
    tracker: RelayoutTracker
    scaler: LossScaler | None = None
    pipeline: Any = None  # PipelineRunner when pp > 1
    stage_layout: Any = None  # pipeline_parallel.StageLayout when pp > 1

    @property
    def data_size(self) -> int:
        """How many parts the global batch is split into (the vocabulary DP degree)."""
        return self.plan.vocab.dp

    @property
    def data_rank(self) -> int:
        """Which part this rank loads; vocab-TP peers and all stages of one pipeline load the same part."""
        return self.dims.dp_rank(Layout.of(self.plan.vocab))

    @property
    def data_group(self) -> dist.ProcessGroup:
        return self.dims.dp_group(Layout.of(self.plan.vocab))

    def parameters(self):
        return self.module.parameters()

    # ----- steps -------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Forward + backward of this rank's part; returns the global mean loss; gradients accumulate."""
        self.module.train()
        batch = self._to_device(batch)
        global_items = self._global_items(batch)
        if self.scaler is not None:
            self.scaler.rescale_existing(self.module.parameters())
        if self.pipeline is not None:  # the last stage scales each micro-batch loss, as _accumulate does
            loss_scale = self.scaler.scale if self.scaler is not None else 1.0
            loss = self.pipeline.step(batch, loss_denominator=global_items, loss_scale=loss_scale)
        else:
            loss = self._sum_over_data(self._accumulate(batch, global_items))
        if self.scaler is not None:
            self.scaler.unscale_(self.module.parameters())
        return loss

    @torch.no_grad()
    def eval_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Forward only, same loss contract as ``train_step``."""
        self.module.eval()
        batch = self._to_device(batch)
        global_items = self._global_items(batch)
        if self.pipeline is not None:
            return self.pipeline.evaluate(batch, loss_denominator=global_items)
        total = sum(self._weighted_loss(part, global_items) for part in self._micro_batches(batch))
        return self._sum_over_data(total)

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip all gradients to a global norm of ``max_norm``; returns the norm before clipping."""
        return clip_grad_norm_(
            self.module.parameters(),
            max_norm,
            self.dims,
            norm_type,
            self._tied_copies(),
        )

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()``, skipped (with a smaller loss scale) after an fp16 overflow."""
        if self.scaler is None:
            optimizer.step()
            return True
        return self.scaler.step(optimizer)

    # ----- helpers -----------------------------------------------------------------------------------
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _micro_batches(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """With pp = 1, ``plan.num_micro_batches`` > 1 means gradient accumulation inside the step."""
        count = self.plan.num_micro_batches
        rows = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
        if count == 1:
            return [batch]
        if rows % count:
            raise ValueError(
                f"this rank's {rows} samples do not split into {count} micro-batches (plan.num_micro_batches)"
            )
        return [
            {k: v.chunk(count)[i] if isinstance(v, torch.Tensor) else v for k, v in batch.items()} for i in range(count)
        ]

    def _accumulate(self, batch: dict[str, Any], global_items: torch.Tensor) -> torch.Tensor:
        """Forward + backward micro-batch by micro-batch; DP gradient reduction only on the last one."""
        parts = self._micro_batches(batch)
        total = torch.zeros((), device=self.device)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if len(parts) > 1:
                self.module.set_requires_gradient_sync(last)
            local = self._weighted_loss(part, global_items)
            (self.scaler.scale_loss(local) if self.scaler else local).backward()
            total = total + local.detach()
        return total

    def _items(self, batch: dict[str, Any]) -> torch.Tensor:
        return count_label_items(batch["labels"], causal=_is_causal_lm(self.spec)).to(self.device, torch.float32)

    def _weighted_loss(self, batch: dict[str, Any], global_items: torch.Tensor) -> torch.Tensor:
        """The HF mean loss of this micro-batch times its share of the global label items.

        A micro-batch without label items (all padding) still runs forward and backward, with a zero loss
        built from the logits: the other ranks' collectives in backward need this rank too.
        """
        output = self.module(**batch)
        loss = output.get("loss") if isinstance(output, dict) else output[0]
        if loss is None:
            raise ValueError("the model returned no loss: the batch needs 'labels'")
        items = self._items(batch)
        if float(items) == 0:
            return output["logits"].float().sum() * 0.0
        return loss.float() * (items / global_items)

    def _global_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """Label items of the whole global batch (one all-reduce over the data-loading ranks)."""
        if batch.get("labels") is None:
            raise ValueError("train_step/eval_step need 'labels' in the batch (the loss is computed by the model)")
        total = self._sum_over_data(self._items(batch))
        if float(total) <= 0:
            raise ValueError("the global batch has no label items (all labels are -100); the loss is undefined")
        return total

    def _sum_over_data(self, value: torch.Tensor) -> torch.Tensor:
        if self.data_size > 1:
            dist.all_reduce(value, group=self.data_group)
        return value

    def _tied_copies(self) -> dict[int, int] | None:
        if self.stage_layout is None or not self.stage_layout.tied:
            return None
        params = dict(self.module.named_parameters(remove_duplicate=False))
        names = [
            t.first_stage_name if self.stage_layout.is_first else t.last_stage_name for t in self.stage_layout.tied
        ]
        return {id(params[name]): 2 for name in names if name in params}


def _is_causal_lm(spec: ModelSpec) -> bool:
    return spec.architecture.endswith(("ForCausalLM", "LMHeadModel"))


def count_label_items(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Items the HF loss averages over: label tokens != -100 (shifted by one for causal LMs), else samples."""
    if labels.is_floating_point() or labels.dim() == 1:
        return torch.tensor(labels.shape[0])
    if causal:
        return (labels[..., 1:] != IGNORE_INDEX).sum()
    return (labels != IGNORE_INDEX).sum()


# ----------------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------------


def parallelize(
    model: nn.Module,
    plan: Plan,
    *,
    spec: ModelSpec | None = None,
    device: torch.device | str | None = None,
    mixed_precision: str | None = None,
    attn_implementation: str | None = None,
    loss_scaler: LossScaler | None = None,
) -> ParallelModel:
    """Apply ``plan`` to the HF ``model`` in place (built on CPU, on ``device`` or on the meta device).

    ``spec`` defaults to ``describe_model(model)``; ``mixed_precision`` to ``plan.mixed_precision``
    (``"bf16"``, ``"fp16"`` with dynamic loss scaling, ``"fp32"``); ``attn_implementation`` to SDPA
    (flash_attention_2 on CUDA when installed). A meta-device model is materialised shard by shard and
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
    set_attn_implementation(
        model,
        attention_for(plan, device, attn_implementation),
        required=attn_implementation is not None,
    )
    _disable_cache(model)
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # the plan checkpoints per block; HF's would nest inside ours
    if not on_meta:
        model.to(device)
    dims = ParallelDims.from_plan(plan, device_type=device.type)
    dims.prepare(plan)
    pipeline, layout = None, None
    if plan.pp > 1:
        from galvatron_hf.parallel import pipeline_parallel

        layout = pipeline_parallel.prune_to_stage(model, spec, plan, dims.stage)
    tracker = RelayoutTracker(dims, Layout.of(plan.vocab).batch_layout)
    parallelize_blocks(model, spec, plan, dims, tracker, precision)
    parallelize_vocab(model, spec, plan, dims, tracker, precision, is_stage=plan.pp > 1)
    if on_meta:
        materialize(model, device)
    if plan.pp > 1:
        from galvatron_hf.parallel.pipeline_parallel import PipelineRunner

        pipeline = PipelineRunner(
            model,
            spec,
            layout,
            plan,
            dims.pp_mesh.get_group(),
            device,
            dp_group=dims.dp_group(Layout.of(plan.vocab)),
        )
    scaler = loss_scaler or (LossScaler() if precision == "fp16" else None)
    return ParallelModel(model, plan, spec, dims, device, precision, tracker, scaler, pipeline, layout)


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
