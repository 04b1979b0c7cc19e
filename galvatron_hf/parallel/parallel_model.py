"""``ParallelModel``: an HF model parallelised by a plan, and its training and evaluation steps.

``parallelize`` (apply_plan.py) builds it. Its steps follow the batch and loss contract of docs/runtime.md:
each data-loading rank passes its part of the global batch, the returned loss is the global mean, gradient
reductions sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.constants import is_causal_lm
from galvatron_hf.parallel.compile import CompileClock
from galvatron_hf.parallel.grad_norm import clip_grad_norm_
from galvatron_hf.parallel.kernels import AppliedKernels
from galvatron_hf.parallel.loss_scaling import LossScaler
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.pipeline_parallel import PipelineRunner
from galvatron_hf.parallel.pipeline_stages import StageLayout, label_items, split_rows
from galvatron_hf.parallel.relayout import RelayoutTracker
from galvatron_hf.planner.plan import Plan


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
    pipeline: PipelineRunner | None = None  # when pp > 1
    stage_layout: StageLayout | None = None  # when pp > 1
    kernels: AppliedKernels = AppliedKernels()  # fused kernels in place (and those left out, with why)
    compile_clock: CompileClock | None = None  # time spent compiling the blocks (torch.compile on)

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
        """With pp = 1, ``plan.num_micro_batches`` > 1 means gradient accumulation inside the step; a partial
        last batch is cut into near-equal parts (fewer when it has fewer samples than micro-batches)."""
        return split_rows(batch, self.plan.num_micro_batches)

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
        return label_items(batch["labels"], causal=is_causal_lm(self.spec)).to(self.device, torch.float32)

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
        if float(items) == 0:  # a fused head returns no logits: its loss is then 0 with zero gradients
            logits = output.get("logits") if isinstance(output, dict) else None
            return (logits if logits is not None else loss).float().sum() * 0.0
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
