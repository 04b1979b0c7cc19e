"""Moving activations between layers whose (dp, tp) layouts differ, with a correct backward.

Inside a layer with layout ``(dp, tp)`` a batch tensor holds ``1/dp`` of the stage's micro-batch and is
identical on the ``tp`` ranks of a TP group; its gradient is identical there too (DTensor TP all-reduces
input gradients). Changing layout therefore only moves batch parts:

- growing TP (shrinking DP): all-gather the parts within the new, larger TP group; backward keeps the local
  slice of the (replicated) gradient;
- shrinking TP (growing DP): keep the local slice; backward all-gathers the gradient slices, so every rank
  of the old TP group again holds the whole replicated gradient.

Only the ``ratio`` ranks that hold different parts exchange them (``ParallelDims.relayout_group``).

A batch whose rows do not split over every layout's ``dp`` (the last, partial batch of an epoch, a small
evaluation batch) is padded, on entering the first layout that splits it differently from the data loading,
with copies of its last row up to a multiple of all the stage's ``dp``; the copies are dropped when the batch
comes back to the data-loading split. The loss never sees them, and their gradient is zero (the rows it
reaches are dropped), so every layout gives the unpadded batch's loss and gradients.

The HF blocks keep their own forward: a forward pre-hook (``with_kwargs=True``) re-lays every batch tensor
a block receives (hidden states, masks, position embeddings, encoder states), and a forward hook records
the layout of what the block returns. A tensor nobody recorded was made outside the blocks from the model
inputs and so is in the data-loading (vocabulary) layout.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.adapters.spec import ModelSpec, module_path
from galvatron_hf.parallel.model_parts import find_module, present_blocks
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.planner.plan import Plan

BatchLayout = tuple[int, int]  # (dp, tp)


@dataclass(frozen=True)
class HeadTensors:
    """Block inputs/outputs with a dimension of attention heads, shared between blocks (T5's position biases).

    Between blocks they travel with all heads; a block with TP gets its own heads (forward slice, backward
    all-gather) and its outputs are gathered back to all heads (forward all-gather, backward slice). A family
    whose blocks share such tensors names them (``parallel/families/<family>.py``, ``Family.head_tensors``).
    """

    inputs: tuple[str, ...]  # forward() argument names
    outputs: tuple[int, ...]  # indices in the block's output tuple
    dim: int = 1



class _GatherParts(torch.autograd.Function):
    """Forward: concatenate the parts of ``group`` along ``dim``; backward: keep this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return _all_gather(tensor, group, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size, index = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(size, dim=ctx.dim)[index].contiguous(), None, None


class _SliceParts(torch.autograd.Function):
    """Forward: keep this rank's slice along ``dim``; backward: all-gather the gradient slices."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        size, index = dist.get_world_size(group), dist.get_rank(group)
        return tensor.chunk(size, dim=dim)[index].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_gather(grad.contiguous(), ctx.group, ctx.dim), None, None


class _StageSumGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over ``group`` and multiplies it by ``scale``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup, scale: float) -> torch.Tensor:
        ctx.group, ctx.scale = group, scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total * ctx.scale, None, None


def _all_gather(tensor: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    size = dist.get_world_size(group)
    moved = tensor.movedim(dim, 0).contiguous()
    out = moved.new_empty((size * moved.shape[0], *moved.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch 2.13 renamed it
    gather(out, moved, group=group)
    return out.movedim(0, dim)


def gather_parts(tensor: torch.Tensor, group: dist.ProcessGroup, dim: int = 0) -> torch.Tensor:
    if tensor.requires_grad:
        return _GatherParts.apply(tensor, group, dim)
    return _all_gather(tensor, group, dim)


def slice_parts(tensor: torch.Tensor, group: dist.ProcessGroup, dim: int = 0) -> torch.Tensor:
    if tensor.requires_grad:
        return _SliceParts.apply(tensor, group, dim)
    size, index = dist.get_world_size(group), dist.get_rank(group)
    return tensor.chunk(size, dim=dim)[index]


def relayout(
    tensor: torch.Tensor,
    dims: ParallelDims,
    src: BatchLayout,
    dst: BatchLayout,
    dim: int = 0,
):
    """Re-lay a batch tensor from layout ``src`` to ``dst`` (both ``(dp, tp)`` of the same stage).

    When neither TP degree divides the other we go through their gcd: slice, then gather.
    """
    src_tp, dst_tp = src[1], dst[1]
    if src_tp == dst_tp:
        return tensor
    common = math.gcd(src_tp, dst_tp)
    if common < src_tp:  # shrink TP: slice among ranks that share the same part now
        tensor = slice_parts(tensor, dims.relayout_group(common, src_tp // common), dim)
    if common < dst_tp:  # grow TP: gather the parts the new TP group spreads over
        tensor = gather_parts(tensor, dims.relayout_group(common, dst_tp // common), dim)
    return tensor


class RelayoutTracker:
    """Knows which layout every activation of the current forward is in, and re-lays block inputs.

    ``begin`` is called at the start of each model forward (a pre-hook on the model root does it) with
    the stage's micro-batch size; a tensor counts as a batch tensor when it has 2+ dims and its dim 0 is the
    local batch size of the layout it is in (of the padded batch, for a layout split unlike the data loading).

    It refers to activations weakly and drops its conversions when the forward ends: holding them kept the
    last forward's block outputs (and, through their autograd graph, the whole parallelised model) alive
    after the step, about 6 GB per discarded model on an H100 (benchmarks/results/h100-memory-phases). A
    weak reference also tells a reused ``id`` from the tensor that had it.
    """

    def __init__(self, dims: ParallelDims, input_layout: BatchLayout):
        self.dims = dims
        self.input_layout = input_layout
        self.stage_batch: int | None = None
        self.row_multiple = input_layout[0]  # lcm of the dp of every layout this stage's forward meets
        self._padded_batch: int | None = None
        self._layouts: dict[int, tuple[weakref.ref, BatchLayout]] = {}
        self._converted: dict[tuple[int, BatchLayout], tuple[weakref.ref, torch.Tensor]] = {}

    def begin(self, stage_batch: int) -> None:
        self.stage_batch = stage_batch
        self._padded_batch = -(-stage_batch // self.row_multiple) * self.row_multiple
        self._layouts.clear()
        self._converted.clear()

    def end(self) -> None:
        """The forward is over: release the conversions (they hold activations and their graph)."""
        self._converted.clear()

    def layout_of(self, tensor: torch.Tensor) -> BatchLayout:
        entry = self._layouts.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else self.input_layout

    def record(self, value: Any, layout: BatchLayout) -> None:
        for tensor in _tensors(value):
            self._layouts[id(tensor)] = (weakref.ref(tensor), layout)

    def to_layout(self, value: Any, dst: BatchLayout) -> Any:
        return _map_tensors(value, lambda t: self._convert(t, dst))

    def _convert(self, tensor: torch.Tensor, dst: BatchLayout) -> torch.Tensor:
        if self.stage_batch is None or tensor.dim() < 2:
            return tensor
        src = self.layout_of(tensor)
        if src[1] == dst[1] or tensor.shape[0] != self._rows(src):
            return tensor
        key = (id(tensor), dst)
        cached = self._converted.get(key)
        if cached is not None and cached[0]() is tensor:  # masks / position embeddings reach every block
            return cached[1]
        moved = relayout(pad_rows_with_last(tensor, self._padded_batch // src[0]), self.dims, src, dst)
        if moved.shape[0] > self._rows(dst):  # back in the data loading's split: the padding rows go
            moved = moved[: self._rows(dst)]
        self._converted[key] = (weakref.ref(tensor), moved)
        self.record(moved, dst)
        return moved

    def _rows(self, layout: BatchLayout) -> int:
        """This rank's rows of a batch tensor in ``layout``: the data loading's split is never padded, every
        other split holds its share of the padded batch."""
        batch = self.stage_batch if layout[1] == self.input_layout[1] else self._padded_batch
        return batch // layout[0]

    # ----- hooks -------------------------------------------------------------------------------------
    def install(
        self,
        module: nn.Module,
        spec: ModelSpec,
        plan: Plan,
        heads: HeadTensors | None = None,
        is_stage: bool = False,
    ) -> None:
        """Hooks on ``module`` (a model or a pipeline stage): each block re-lays its inputs to its strategy's
        layout, every layer after the first block runs in the data-loading layout, the root starts tracking.

        ``heads``: the family's block tensors with a heads dimension; ``is_stage``: a pipeline stage, which hands
        the next stage its outputs in the data-loading layout.
        """
        for index, _layer, block in present_blocks(module, spec):
            layout = Layout.of(plan.layers[index])
            tp_group = self.dims.tp_mesh(layout).get_group() if heads else None
            self.install_block(block, layout.batch_layout, heads, tp_group)
        for layer in spec.layers:
            if layer.is_block or layer in spec.pre_layers:
                continue
            for path in layer.modules:
                target = find_module(module, module_path(layer.root, path))
                if target is not None:
                    self.install_input_layout(target)
        self.install_root(module, plan.vocab.dp, convert_outputs=is_stage)

    def install_root(self, root: nn.Module, data_parts: int, convert_outputs: bool = False) -> None:
        """Start tracking at each model forward; the stage batch is the local batch times the data parts.

        ``convert_outputs`` (a pipeline stage): hand the next stage activations in the data-loading layout.
        """

        def begin_forward(module, args, kwargs):
            local = _first_batch_size(args, kwargs)
            if local is not None:
                self.begin(local * data_parts)

        def to_input_layout(module, args, output):
            return self.to_layout(output, self.input_layout)

        def end_forward(module, args, output):
            self.end()

        root.register_forward_pre_hook(begin_forward, with_kwargs=True, prepend=True)
        if convert_outputs:
            root.register_forward_hook(to_input_layout)
        root.register_forward_hook(end_forward)

    def install_block(
        self,
        block: nn.Module,
        layout: BatchLayout,
        heads: HeadTensors | None = None,
        tp_group: dist.ProcessGroup | None = None,
    ) -> None:
        """Re-lay the block's batch inputs to ``layout``; with ``heads`` also split/gather head tensors."""
        self.row_multiple = math.lcm(self.row_multiple, layout[0])
        names = list(inspect.signature(block.forward).parameters)
        split_heads = heads is not None and tp_group is not None and dist.get_world_size(tp_group) > 1

        def convert(name: str | None, value: Any) -> Any:
            if heads is not None and name in heads.inputs and isinstance(value, torch.Tensor):
                value = self._shared_from(value, layout)
                if split_heads:
                    value = slice_parts(value, tp_group, heads.dim)  # full heads -> this rank's heads
                return value
            return self.to_layout(value, layout)

        def to_block_layout(module, args, kwargs):
            args = tuple(convert(names[i] if i < len(names) else None, a) for i, a in enumerate(args))
            return args, {k: convert(k, v) for k, v in kwargs.items()}

        def record_output(module, args, kwargs, output):
            if split_heads and isinstance(output, tuple):
                output = tuple(
                    gather_parts(v, tp_group, heads.dim) if i in heads.outputs and isinstance(v, torch.Tensor) else v
                    for i, v in enumerate(output)
                )
            self.record(output, layout)
            return output

        block.register_forward_pre_hook(to_block_layout, with_kwargs=True, prepend=True)
        block.register_forward_hook(record_output, with_kwargs=True)

    def _shared_from(self, tensor: torch.Tensor, dst: BatchLayout) -> torch.Tensor:
        """A batch-independent tensor (T5's position bias) made in one layout and used in another.

        Its gradient from ``dst`` is a sum over ``dst``'s batch parts, replicated on ``dst``'s TP groups; the
        producer's DP reduction sums one rank per TP index. Backward therefore sums the gradient over the
        stage and rescales it to the producer's layout: ``src_tp / (stage_size * dst_tp)``.
        """
        src = self.layout_of(tensor)
        if src[1] == dst[1] or not tensor.requires_grad:
            return tensor
        scale = src[1] / (self.dims.stage_size * dst[1])
        return _StageSumGrad.apply(tensor, self.dims.stage_group(), scale)

    def install_input_layout(self, module: nn.Module) -> None:
        """Layers after the blocks (final norm, pooler, head) run in the data-loading layout."""

        def to_input_layout(mod, args, kwargs):
            return self.to_layout(args, self.input_layout), self.to_layout(kwargs, self.input_layout)

        module.register_forward_pre_hook(to_input_layout, with_kwargs=True, prepend=True)


def pad_rows_with_last(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` grown to ``rows`` rows with copies of its last one: real values, so a padded row computes
    what a real one does (zeros could make an all-masked attention row, and NaN in its gradient terms)."""
    extra = rows - tensor.shape[0]
    if extra <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(extra, *tensor.shape[1:])])


def _first_batch_size(args: tuple, kwargs: dict) -> int | None:
    for tensor in _tensors((args, kwargs)):
        if tensor.dim() >= 2:
            return tensor.shape[0]
    return None


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value
