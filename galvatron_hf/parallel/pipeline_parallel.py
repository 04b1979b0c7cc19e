"""Pipeline parallelism: cut an HF model into stages and run them with ``torch.distributed.pipelining``.

:func:`build_pipeline` is the one entry of the runtime (``parallelize``), in three steps (docs/pipeline.md):

1. Cut: the HF model object becomes, in place, this rank's stage: every module the plan puts on another stage is
   dropped and the family's stage forward is bound (``parallel/families/<family>.py``). Parameter names stay
   the HF names (a ``ModuleList`` of blocks becomes a ``ModuleDict`` keyed by the original index), so
   ``torch.distributed.checkpoint`` reshards a checkpoint between any two layouts by name.
   :func:`prune_to_stage` does this alone, after checking the plan.
2. ``parallelize_stage`` (the runtime's TP -> activation checkpointing -> FSDP2 walk) runs on the stage module.
3. :class:`PipelineRunner` wraps the stage in ``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B`` and runs
   training steps (loss on every rank of the pipeline) and forward-only evaluation.

The plan is checked before any collective (``plan_check.check_plan``), so a bad plan fails with a message
instead of a hang. Nothing here knows a family: what differs per family is asked of ``family_for(spec)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from galvatron_hf.adapters.spec import ModelSpec, module_path
from galvatron_hf.constants import IGNORE_INDEX
from galvatron_hf.parallel.families import Family, family_for
from galvatron_hf.parallel.grad_norm import local_tensor
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.pipeline_stages import StageLayout, Task, TiedParameter, pad_rows
from galvatron_hf.parallel.plan_check import check_plan
from galvatron_hf.planner.plan import Plan, PlanError

# --------------------------------------------------------------------------------------------------------
# The stage of every layer and parameter
# --------------------------------------------------------------------------------------------------------


def layer_stages(spec: ModelSpec, plan: Plan) -> list[int]:
    """The pipeline stage of every entry of ``spec.layers``.

    Blocks take the stage the plan gives them. Any other layer (embedding, norms, pooler, head) goes with the
    nearest block before it, or stage 0 when it comes first: the embedding lands on the first stage, the final
    norm / pooler / head on the last, and T5's encoder final norm with the last encoder block.
    """
    stages: list[int] = []
    block_index = 0
    current = 0
    for layer in spec.layers:
        if layer.is_block:
            current = plan.layers[block_index].stage
            block_index += 1
        stages.append(current)
    return stages


def owned_module_paths(spec: ModelSpec) -> list[tuple[str, ...]]:
    """Module paths (from the model root) each layer of ``spec.layers`` owns: ``root`` + each of ``modules``."""
    paths = []
    for layer in spec.layers:
        if layer.modules:
            paths.append(tuple(module_path(layer.root, m) for m in layer.modules))
        else:
            paths.append((layer.root,))
    return paths


def _owner_by_prefix(fqn: str, prefixes: list[tuple[str, int]]) -> int | None:
    """Layer index of the longest owned path that is ``fqn`` or a parent module of it."""
    best, best_len = None, -1
    for prefix, layer_index in prefixes:
        if (prefix == "" or fqn == prefix or fqn.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = layer_index, len(prefix)
    return best


def parameter_owners(model: nn.Module, spec: ModelSpec, extra_paths: Mapping[str, int]) -> dict[str, int]:
    """Map every parameter name (tied aliases included) to the index in ``spec.layers`` of its owning layer.

    A name under no owned path takes the owner of another name of the same tensor (``decoder.embed_tokens``
    is T5's ``shared``). ``extra_paths`` lets a family claim modules the spec does not list (T5's encoder final
    norm). A parameter nobody owns is an adapter gap: it would be duplicated on every stage, so it is an error.
    """
    prefixes = [(path, i) for i, paths in enumerate(owned_module_paths(spec)) for path in paths]
    prefixes += [(path, i) for path, i in extra_paths.items()]
    owners: dict[str, int] = {}
    by_tensor: dict[int, int] = {}
    unowned: list[tuple[str, nn.Parameter]] = []
    for fqn, param in model.named_parameters(remove_duplicate=False):
        owner = _owner_by_prefix(fqn, prefixes)
        if owner is None:
            unowned.append((fqn, param))
            continue
        owners[fqn] = owner
        by_tensor.setdefault(id(param), owner)
    missing = []
    for fqn, param in unowned:
        if id(param) in by_tensor:
            owners[fqn] = by_tensor[id(param)]
        else:
            missing.append(fqn)
    if missing:
        raise PlanError(
            f"parameters {missing[:6]}{' ...' if len(missing) > 6 else ''} belong to no layer of the "
            f"{spec.family} ModelSpec, so no pipeline stage would own them; add their modules to a layer in "
            "galvatron_hf/adapters"
        )
    return owners


# --------------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------------


def _tied_across_stages(
    model: nn.Module, owners: dict[str, int], stages: list[int], last_stage: int
) -> tuple[TiedParameter, ...]:
    """Weights with one name owned by a first-stage layer and another by a last-stage layer."""
    names_by_tensor: dict[int, list[str]] = {}
    for fqn, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(param), []).append(fqn)
    tied = []
    for names in names_by_tensor.values():
        first = [n for n in names if stages[owners[n]] == 0]
        last = [n for n in names if stages[owners[n]] == last_stage]
        if first and last:
            tied.append(TiedParameter(first_stage_name=first[0], last_stage_name=last[0]))
        elif len({stages[owners[n]] for n in names}) > 1:
            raise PlanError(
                f"weight {names} is shared between middle pipeline stages; only sharing between the first and "
                "last stage (tied embeddings) is supported"
            )
    return tuple(tied)


def _drop_foreign_modules(module: nn.Module, prefix: str, keep: dict[str, bool]) -> None:
    """Remove, below ``module``, every child whose parameters all belong to other stages.

    ``keep`` maps each parameter name to whether this stage owns it. A ``ModuleList`` that loses children
    becomes a ``ModuleDict`` keyed by the original indices, so the names of the children it keeps are unchanged.
    Children without parameters (rotary embeddings, dropouts) stay: every stage may need them.
    """
    for name, child in list(module.named_children()):
        if child is None:
            continue
        path = module_path(prefix, name)
        names = [module_path(path, n) for n, _ in child.named_parameters(remove_duplicate=False)]
        if names and not any(keep[n] for n in names):
            _remove_child(module, name)
        elif names:
            _drop_foreign_modules(child, path, keep)


def _remove_child(parent: nn.Module, name: str) -> None:
    if isinstance(parent, nn.ModuleList):
        # a hole for now: _lists_to_dicts turns the list into a ModuleDict of the survivors
        parent._modules[name] = None  # type: ignore[assignment]
    else:
        setattr(parent, name, None)


def _lists_to_dicts(module: nn.Module) -> None:
    """Turn every ModuleList with removed children into a ModuleDict of the survivors, same keys."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if isinstance(child, nn.ModuleList) and any(c is None for c in child._modules.values()):
            kept = nn.ModuleDict({k: c for k, c in child._modules.items() if c is not None})
            setattr(module, name, kept)
            child = kept
        _lists_to_dicts(child)


def prune_to_stage(model: nn.Module, spec: ModelSpec, plan: Plan, stage: int) -> StageLayout:
    """Turn ``model`` (an HF model built from ``spec``'s config) into pipeline stage ``stage``, in place.

    Keeps the blocks ``plan`` puts on this stage, the embedding on the first stage and the final norm / pooler
    / head on the last; parameter names keep their HF spelling. Binds the family's stage forward, so
    ``model(*activations, **batch_kwargs)`` runs just this stage. Returns the :class:`StageLayout` (also kept
    on the module: ``stage_layout(model)``). The plan is checked first (``check_plan``).
    """
    check_plan(plan, spec)
    return _cut(model, spec, plan, stage, family_for(spec))


def _cut(model: nn.Module, spec: ModelSpec, plan: Plan, stage: int, family: Family) -> StageLayout:
    """``prune_to_stage`` for a checked plan."""
    if not 0 <= stage < plan.pp:
        raise PlanError(f"stage {stage} is outside 0..{plan.pp - 1} (pp={plan.pp})")
    if getattr(model, _LAYOUT_ATTRIBUTE, None) is not None:
        raise PlanError("this model is already a pruned pipeline stage; build a fresh model for another stage")
    stages = layer_stages(spec, plan)
    owners = parameter_owners(model, spec, family.pipeline.extra_owned_paths(spec))
    tied = _tied_across_stages(model, owners, stages, plan.pp - 1) if plan.pp > 1 else ()
    keep = {fqn: stages[owner] == stage for fqn, owner in owners.items()}
    _drop_foreign_modules(model, "", keep)
    _lists_to_dicts(model)
    layout = _layout(spec, plan, stage, family.name, stages, tied)
    model.forward = functools.partial(family.pipeline.forward, model, layout)
    model.__dict__[_LAYOUT_ATTRIBUTE] = layout
    model.__dict__[_SPEC_ATTRIBUTE] = spec
    return layout


def build_pipeline(
    model: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    dims: ParallelDims,
    device: torch.device,
    parallelize_stage: Callable[[nn.Module], None],
) -> PipelineRunner:
    """Cut ``model`` to this rank's stage, parallelise the stage with ``parallelize_stage`` (TP -> activation
    checkpointing -> FSDP2), and run it with a :class:`PipelineRunner` (plan already checked)."""
    layout = _cut(model, spec, plan, dims.stage, family_for(spec))
    parallelize_stage(model)
    data_group = dims.dp_group(Layout.of(plan.vocab))
    return PipelineRunner(model, spec, layout, plan, dims.pp_mesh.get_group(), device, dp_group=data_group)


_LAYOUT_ATTRIBUTE = "_galvatron_stage_layout"
MAX_SCHEDULES = 8  # schedules kept per mode, one per micro-batch shape (PipelineRunner._schedule_for)
MAX_OUTPUT_DIMS = 6  # dimensions of a last-stage output sent to the other stages
_SPEC_ATTRIBUTE = "_galvatron_stage_spec"


def stage_layout(module: nn.Module) -> StageLayout:
    """The :class:`StageLayout` :func:`prune_to_stage` recorded on ``module``."""
    layout = module.__dict__.get(_LAYOUT_ATTRIBUTE)
    if layout is None:
        raise ValueError("this module is not a pipeline stage: call prune_to_stage(model, spec, plan, stage) first")
    return layout


def _layout(
    spec: ModelSpec, plan: Plan, stage: int, family: str, stages: list[int], tied: tuple[TiedParameter, ...]
) -> StageLayout:
    blocks = spec.blocks
    indices = tuple(plan.stage_layers(stage))
    return StageLayout(
        stage=stage,
        num_stages=plan.pp,
        family=family,
        block_indices=indices,
        block_roots=tuple(blocks[i].root for i in indices),
        block_kinds=tuple(blocks[i].kind for i in indices),
        layer_names=tuple(layer.name for layer, s in zip(spec.layers, stages) if s == stage),
        tied=tied,
        model_block_kinds=tuple(block.kind for block in blocks),
    )


def stage_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters a (pruned) stage holds, tied aliases included, in registration order."""
    return [name for name, _ in model.named_parameters(remove_duplicate=False)]


# --------------------------------------------------------------------------------------------------------
# Running the schedule
# --------------------------------------------------------------------------------------------------------


class PipelineRunner:
    """Runs one pipeline stage with ``torch.distributed.pipelining``: training steps and evaluation.

    Built from the pruned (and already TP / checkpoint / FSDP2-parallelised) stage module. Follows the batch and
    loss contract of docs/runtime.md: every rank of a pipeline gets the same part of the global batch (a dict
    of HF inputs) and takes what its stage needs from it (the first stage the token ids or pixels, every stage
    the padding masks, the last stage the labels). The last stage computes each micro-batch's loss as
    ``sum of its item losses / label items of the whole global batch``, so the micro-batch losses of all
    data-loading ranks add up to what the HF model returns for the global batch; the schedule does not rescale
    gradients (``scale_grads=False``) and data-parallel reductions sum.

    ``dp_group`` is the data-loading group of the stage (the vocabulary layout's DP group, ``ParallelModel.
    data_group``; None without DP): the label items and the returned loss are summed over it. ``loss_fn`` is a
    :class:`pipeline_stages.Task` (``loss_sum(output, labels)`` and ``count(labels)``); by default the loss of
    the family's head (``PipelineStages.loss_task``).

    fp16: ``step(..., loss_scale=scaler.scale)`` multiplies each micro-batch loss by the loss scale before its
    backward (on the last stage, the only one with a loss; the other stages receive scaled activation gradients
    through the schedule). Unscaling, the world-wide overflow check and the skipped step stay with the caller
    (``ParallelModel.train_step`` / ``step`` and ``LossScaler``), as without pipelining; the loss :meth:`step`
    returns is divided by the scale again (exact for the power-of-two scales ``LossScaler`` uses).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: ModelSpec,
        layout: StageLayout,
        plan: Plan,
        pp_group: DeviceMesh | dist.ProcessGroup,
        device: torch.device | str = "cpu",
        dp_group: dist.ProcessGroup | None = None,
        loss_fn: Task | None = None,
    ) -> None:
        self.pp_group = pp_group.get_group() if isinstance(pp_group, DeviceMesh) else pp_group
        _check_group(self.pp_group, plan, layout)
        self.module = module
        self.spec = spec
        self.layout = layout
        self.plan = plan
        self.dp_group = dp_group
        self.device = torch.device(device)
        self.stages = family_for(spec).pipeline
        self.task = loss_fn or self.stages.loss_task(module)
        self._items = torch.ones((), device=self.device)
        self._loss_scale = 1.0  # fp16: set for one training step
        # one schedule per shape of micro-batch: a stage sizes its send / receive buffers on first use
        self._schedules: dict[tuple, Any] = {}
        self._eval_schedules: dict[tuple, Any] = {}
        holds_tied = layout.tied and (layout.is_first or layout.is_last)
        self._tied = _TiedWeights(module, layout, self.pp_group) if holds_tied else None
        if self._tied:
            self._tied.copy_first_to_last()

    def _build_schedule(self, kind: str):
        """A fresh ``PipelineStage`` over the stage module, driven by a GPipe or 1F1B schedule."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        stage = PipelineStage(self.module, self.layout.stage, self.plan.pp, self.device, group=self.pp_group)
        cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[kind]
        # our micro-batch losses already sum to the batch loss: the schedule must not divide gradients by the
        # number of micro-batches (older torch releases never did and have no ``scale_grads``)
        extras = {"scale_grads": False} if "scale_grads" in inspect.signature(cls.__init__).parameters else {}
        return cls(stage, self.plan.num_micro_batches, loss_fn=self._loss, **extras)

    def _schedule_for(self, shapes: tuple, training: bool):
        """The schedule for micro-batches of these ``shapes``: built on first use, kept for the next batches.

        A ``PipelineStage`` sizes its send / receive buffers from the first micro-batch it runs, so a batch of
        another shape (a shorter last batch, dynamic padding) gets a stage of its own; every stage of the
        pipeline sees the same batch, so all build it together. Evaluation runs GPipe without backward on
        stages of its own: in the torch releases we run on, a stage first used without backward never gets its
        gradient buffers (``_has_backward = False`` is what ``schedule.eval`` sets; not every release has it).
        At most ``MAX_SCHEDULES`` are kept per mode, the oldest dropped first.
        """
        cache = self._schedules if training else self._eval_schedules
        if shapes not in cache:
            if len(cache) >= MAX_SCHEDULES:
                cache.pop(next(iter(cache)))
            schedule = self._build_schedule(self.plan.schedule if training else "gpipe")
            if not training:
                schedule._has_backward = False
            cache[shapes] = schedule
        return cache[shapes]

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Micro-batch loss: sum of its item losses over the label items of the whole global batch, times the
        fp16 loss scale during a training step (the schedule back-propagates what this returns).

        The schedule may also call this on placeholder tensors while it infers shapes (torch 2.13 does, on the
        first step): its own ``losses`` list, not a record kept here, holds exactly one loss per micro-batch.
        """
        return self.task.loss_sum(output, target) / self._items * self._loss_scale

    def _data_parallel(self) -> bool:
        return self.dp_group is not None and dist.get_world_size(self.dp_group) > 1

    def _set_items(self, labels: torch.Tensor, loss_denominator: float | torch.Tensor | None) -> None:
        """Label items of the global batch: given by the caller, or counted here and summed over DP."""
        if loss_denominator is None:
            count = self.task.count(labels).to(device=self.device, dtype=torch.float32)
            if self._data_parallel():
                dist.all_reduce(count, group=self.dp_group)
        else:
            count = torch.as_tensor(loss_denominator, dtype=torch.float32, device=self.device)
        if float(count) <= 0:
            raise ValueError("the global batch has no label items (all labels are -100); the loss is undefined")
        self._items = count

    def _schedule_inputs(
        self, batch: Mapping[str, torch.Tensor], loss_denominator: float | torch.Tensor | None
    ) -> tuple[tuple, dict, torch.Tensor | None, tuple, int]:
        """(first-stage inputs, stage kwargs, labels on the last stage, the batch's shapes, its real rows).

        A batch whose rows do not split into the plan's micro-batches (the last one of an epoch) is padded with
        rows whose labels are -100 (``pad_rows``): they add neither loss nor gradient."""
        if "labels" not in batch:
            raise ValueError("the pipeline computes the loss on the last stage: the batch needs 'labels'")
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        batch, real_rows = pad_rows(batch, self.plan.num_micro_batches)
        shapes = tuple((k, tuple(v.shape)) for k, v in batch.items() if isinstance(v, torch.Tensor))
        args, kwargs = self.stages.inputs(self.layout, self.module, batch)
        target = None
        if self.layout.is_last:  # only the last stage computes the loss, so only it needs the item count
            target = batch["labels"]
            self._set_items(target, loss_denominator)
        return args, kwargs, target, shapes, real_rows

    def step(
        self,
        batch: Mapping[str, torch.Tensor],
        loss_denominator: float | torch.Tensor | None = None,
        loss_scale: float = 1.0,
    ) -> torch.Tensor:
        """Forward + backward over all micro-batches; gradients accumulate into the stage's parameters.

        Returns the global mean loss (a detached fp32 scalar, never scaled) on every rank of the pipeline.
        ``loss_denominator`` is the number of label items of the global batch when the caller has counted them
        already (else the last stage counts them over ``dp_group``). ``loss_scale`` (fp16: ``LossScaler.scale``,
        the same on every rank) multiplies each micro-batch loss before its backward, so every stage's gradients
        come out scaled; the caller unscales them.
        """
        args, kwargs, target, shapes, _ = self._schedule_inputs(batch, loss_denominator)
        before = self._tied.snapshot() if self._tied else None
        losses: list[torch.Tensor] = []
        self._loss_scale = float(loss_scale)
        schedule = self._schedule_for(shapes, training=True)
        try:
            schedule.step(*args, target=target, losses=losses, **_step_extras(schedule), **kwargs)
        finally:
            self._loss_scale = 1.0
        if self._tied:
            self._tied.add_peer_gradients(before)
        return self._share_loss(losses, loss_scale)

    @torch.no_grad()
    def evaluate(
        self, batch: Mapping[str, torch.Tensor], loss_denominator: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward only over all micro-batches; returns the global mean loss on every rank of the pipeline."""
        return self.evaluate_with_outputs(batch, loss_denominator)[0]

    @torch.no_grad()
    def evaluate_with_outputs(
        self,
        batch: Mapping[str, torch.Tensor],
        loss_denominator: float | torch.Tensor | None = None,
        return_outputs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward only; (the global mean loss, the last stage's output for this rank's samples or None).

        With ``return_outputs`` the last stage's output (the logits) is sent to every stage of the pipeline, so
        every rank returns the predictions of its batch, as without pipelining (fp32, padding rows cut off)."""
        args, kwargs, target, shapes, real_rows = self._schedule_inputs(batch, loss_denominator)
        losses: list[torch.Tensor] = []
        schedule = self._schedule_for(shapes, training=False)
        extras = {"return_outputs": True} if return_outputs else _step_extras(schedule)
        output = schedule.step(*args, target=target, losses=losses, **extras, **kwargs)
        loss = self._share_loss(losses)
        if not return_outputs:
            return loss, None
        return loss, self._share_output(output)[:real_rows]

    def placeholder_labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Labels -100 shaped as this head's labels (token tasks: like the token ids; else one per sample), for
        a batch without labels that still runs the schedule (its loss is left out)."""
        rows = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
        tokens = batch.get("decoder_input_ids", batch.get("input_ids"))
        shape = tuple(tokens.shape) if self.task.kind in ("causal_lm", "token_lm") and tokens is not None else (rows,)
        device = next(v.device for v in batch.values() if isinstance(v, torch.Tensor))
        return torch.full(shape, IGNORE_INDEX, dtype=torch.long, device=device)

    def _share_output(self, output: Any) -> torch.Tensor:
        """The last stage's output tensor, broadcast over the pipeline group (shape first, then values)."""
        source = dist.get_global_rank(self.pp_group, self.plan.pp - 1)
        header = torch.zeros(MAX_OUTPUT_DIMS + 1, dtype=torch.int64, device=self.device)
        if self.layout.is_last:
            if not isinstance(output, torch.Tensor) or output.dim() > MAX_OUTPUT_DIMS:
                raise ValueError(f"the last stage returned {type(output).__name__}, not a tensor of logits")
            header[0] = output.dim()
            header[1 : output.dim() + 1] = torch.tensor(output.shape)
        dist.broadcast(header, src=source, group=self.pp_group)
        shape = header[1 : int(header[0]) + 1].tolist()
        values = output.float().contiguous() if self.layout.is_last else torch.empty(shape, device=self.device)
        dist.broadcast(values, src=source, group=self.pp_group)
        return values

    train_step = step  # the names docs/runtime.md uses
    eval_step = evaluate

    def _share_loss(self, losses: list[torch.Tensor], loss_scale: float = 1.0) -> torch.Tensor:
        """Unscale and sum the micro-batch losses (last stage), over the data-loading ranks, then send to every
        stage."""
        if self.layout.is_last:
            loss = torch.stack([loss.detach().float() / loss_scale for loss in losses]).sum()
            if self._data_parallel():
                dist.all_reduce(loss, group=self.dp_group)
        else:
            loss = torch.zeros((), dtype=torch.float32, device=self.device)
        dist.broadcast(loss, src=dist.get_global_rank(self.pp_group, self.plan.pp - 1), group=self.pp_group)
        return loss


def _check_group(pp_group: dist.ProcessGroup, plan: Plan, layout: StageLayout) -> None:
    size, rank = dist.get_world_size(pp_group), dist.get_rank(pp_group)
    if size != plan.pp:
        raise PlanError(f"the pipeline process group has {size} ranks but the plan has pp={plan.pp}")
    if rank != layout.stage:
        raise PlanError(
            f"global rank {dist.get_rank()} is stage {rank} of its pipeline group but holds the module pruned for "
            f"stage {layout.stage}; prune with stage = this rank's index in the pp group"
        )


def _step_extras(schedule) -> dict:
    """``return_outputs=False`` where the schedule supports it: the last stage then keeps no merged logits."""
    if "return_outputs" in inspect.signature(schedule.step).parameters:
        return {"return_outputs": False}
    return {}


class _TiedWeights:
    """Keeps a weight held by both the first and the last stage (tied embeddings) one weight.

    At start the last stage takes the first stage's values: each stage may have initialised its copy on its
    own (a meta-device model materialised per stage draws different random numbers). After each step the
    first and the last rank of each pipeline group exchange the gradient each computed during the step (the
    part added since :meth:`snapshot`, so gradient accumulation over several steps stays right) and both add
    the two. Both stages hold the same layout of the weight (same TP / FSDP sharding), so local shards
    correspond.
    """

    def __init__(self, module: nn.Module, layout: StageLayout, pp_group: dist.ProcessGroup) -> None:
        self.layout = layout
        self.pp_group = pp_group
        params = dict(module.named_parameters(remove_duplicate=False))
        names = [t.first_stage_name if layout.is_first else t.last_stage_name for t in layout.tied]
        self.params = [params[name] for name in names]
        peer_stage = layout.num_stages - 1 if layout.is_first else 0
        self.peer = dist.get_global_rank(pp_group, peer_stage)

    @torch.no_grad()
    def copy_first_to_last(self) -> None:
        locals_ = [local_tensor(param) for param in self.params]
        buffers = [t.contiguous() if self.layout.is_first else torch.empty_like(t).contiguous() for t in locals_]
        op = dist.isend if self.layout.is_first else dist.irecv
        for work in dist.batch_isend_irecv([dist.P2POp(op, b, self.peer, self.pp_group) for b in buffers]):
            work.wait()
        if self.layout.is_last:
            for local, received in zip(locals_, buffers):
                local.copy_(received)

    def snapshot(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else local_tensor(p.grad).clone() for p in self.params]

    def add_peer_gradients(self, before: list[torch.Tensor | None]) -> None:
        deltas = []
        for param, old in zip(self.params, before):
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grad = local_tensor(param.grad)
            deltas.append(grad - old if old is not None else grad.clone())
        received = [torch.empty_like(d) for d in deltas]
        ops = [dist.P2POp(dist.isend, d, self.peer, self.pp_group) for d in deltas]
        ops += [dist.P2POp(dist.irecv, r, self.peer, self.pp_group) for r in received]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        for param, old, mine, theirs in zip(self.params, before, deltas, received):
            # first + last in the same order on both ranks, so the two copies stay bitwise equal
            total = mine + theirs if self.layout.is_first else theirs + mine
            local_tensor(param.grad).copy_(total if old is None else old + total)
