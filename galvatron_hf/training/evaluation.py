"""Evaluation and prediction with logits (plans with pp = 1): gathered once per sample, in dataset order.

The Trainer's own ``accelerator.gather_for_metrics`` gathers over every process. Here the ranks of one
tensor-parallel group read the same samples and hold the same head output (the LM / classifier head gathers
its logits, and the layers after the blocks run in the data-loading layout, docs/runtime.md), so gathering
over all processes would repeat every sample ``tp`` times. Instead each rank all-gathers over its
**data-parallel group** (``ParallelModel.data_group``), in data-rank order: one step of the sharded loader
(``training/data.py``) is ``data_size`` consecutive loader batches, so the gathered rows are the step's
samples in dataset order, as one process with ``data_size`` times the batch would see them.

The last step: accelerate's shards keep every group running the same number of steps (``even_batches``, a
group that runs out idles in collectives otherwise) by filling the last step with samples from the start of
the dataset. Those fillers are the step's last rows; ``EvalProgress`` knows how many real samples remain
(from the dataset's length, or counted by ``CountingIterable`` for an unsized iterable) and the gather drops
the rest. Their labels are set to -100 before the forward where the model's loss ignores -100, so the
step's loss is over real samples only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset

from galvatron_hf.constants import IGNORE_INDEX
from galvatron_hf.parallel.pipeline_stages import label_items, split_rows
from galvatron_hf.constants import is_causal_lm as is_causal_lm  # the trainer reads it from here
PAD_INDEX = IGNORE_INDEX  # what the Trainer pads predictions and labels with (its padding_index)


class EvaluationError(ValueError):
    """An evaluation this layout cannot run as asked; the message names the fix."""


class CountingIterable(IterableDataset):
    """An unsized iterable dataset that counts what one pass yields.

    Every data-parallel group reads the whole stream (accelerate's ``IterableDatasetShard`` keeps its slice
    of each global batch), and the loader reads one batch ahead, so when it marks its last batch the count
    is the stream's length: what the last step needs to drop its fillers.
    """

    def __init__(self, dataset: IterableDataset) -> None:
        self.dataset = dataset
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        self.count = 0
        for sample in self.dataset:
            self.count += 1
            yield sample

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def has_length(dataset: Any) -> bool:
    try:
        len(dataset)
    except (TypeError, NotImplementedError):
        return False
    return True


def source_dataset(loader: Any) -> Any:
    """The dataset behind a sharded loader (through accelerate's ``IterableDatasetShard``)."""
    from accelerate.data_loader import IterableDatasetShard

    dataset = getattr(loader, "dataset", None)
    while isinstance(dataset, IterableDatasetShard):
        dataset = dataset.dataset
    return dataset


@dataclass
class EvalProgress:
    """Where one evaluation loop is: samples its steps covered so far, and how many of a step are real."""

    loader: Any
    data_rank: int
    data_size: int
    data_group: dist.ProcessGroup | None
    total: int | None  # samples in the dataset (None: counted by ``counter``, or unknown)
    counter: CountingIterable | None = None
    seen: int = 0
    real_rows: int = 0  # real samples of the current step (all data-parallel groups together)
    real_samples: int = 0  # real samples of all steps so far
    step_losses: list[tuple[float, int]] = field(default_factory=list)  # (loss, real samples) per step

    @classmethod
    def for_loader(cls, loader: Any, data_rank: int, data_size: int, data_group) -> EvalProgress:
        source = source_dataset(loader)
        counter = source if isinstance(source, CountingIterable) else None
        total = len(source) if counter is None and has_length(source) else None
        if data_size > 1 and dist.get_rank(data_group) != data_rank:
            raise RuntimeError(
                f"data-parallel group rank {dist.get_rank(data_group)} differs from data rank {data_rank}"
            )
        return cls(loader, data_rank, data_size, data_group if data_size > 1 else None, total, counter)

    def begin_step(self, local_rows: int) -> None:
        """A step of ``local_rows`` samples per data-parallel group starts: how many of its rows are real."""
        step_rows = local_rows * self.data_size
        total = self.total
        if total is None and self.counter is not None and getattr(self.loader, "end_of_dataloader", False):
            total = self.counter.count
        self.real_rows = step_rows if total is None else max(0, min(step_rows, total - self.seen))
        self.seen += step_rows
        self.real_samples += self.real_rows

    def local_real_rows(self, local_rows: int) -> int:
        """Real samples among this rank's ``local_rows`` (fillers come last in data-rank order)."""
        return max(0, min(local_rows, self.real_rows - self.data_rank * local_rows))

    def add_loss(self, loss: torch.Tensor) -> None:
        """The current step's loss (the mean over its real samples' label items)."""
        self.step_losses.append((float(loss), self.real_rows))

    def mean_loss(self, drop_non_finite: bool) -> float | None:
        """The Trainer's ``eval_loss``: the steps' losses weighted by their real samples.

        What the plain Trainer reports: it repeats each step's loss once per sample of its batch and
        ``gather_for_metrics`` cuts the last step's copies down to its real samples.
        """
        if not self.step_losses:
            return None
        losses = torch.tensor([loss for loss, _ in self.step_losses], dtype=torch.float64)
        weights = torch.tensor([rows for _, rows in self.step_losses], dtype=torch.float64)
        finite = torch.isfinite(losses)
        if drop_non_finite and bool(finite.any()):
            losses, weights = losses[finite], weights[finite]
        return float((losses * weights).sum() / weights.sum())

    def gather(self, value: Any) -> Any:
        """The Trainer's ``gather_function``: ``value`` over the data-parallel group, real rows only."""
        return map_tensors(value, self._gather_tensor)

    def _gather_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 0:
            raise EvaluationError("cannot gather a 0-d prediction by sample; return per-sample tensors")
        if self.data_group is not None:
            tensor = all_gather_rows(tensor, self.data_group, self.data_size)
        return tensor[: self.real_rows]


def map_tensors(value: Any, fn) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return type(value)({k: map_tensors(v, fn) for k, v in value.items()})
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    return value


def all_gather_rows(tensor: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
    """Concatenate every group rank's ``tensor`` along dim 0, in group-rank order (shapes may differ:
    padded with -100 for the exchange, as the Trainer pads, then each part cut back to its own rows)."""
    shape = torch.tensor(tensor.shape, dtype=torch.int64, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape, group=group)
    largest = torch.stack(shapes).amax(dim=0).tolist()
    is_bool = tensor.dtype == torch.bool
    local = tensor.to(torch.uint8) if is_bool else tensor
    if list(local.shape) != largest:
        widths: list[int] = []
        for dim in reversed(range(local.dim())):
            widths += [0, largest[dim] - local.shape[dim]]
        local = torch.nn.functional.pad(local, widths, value=0 if is_bool else PAD_INDEX)
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    rows = [int(s[0]) for s in shapes]
    joined = torch.cat([part[:n] for part, n in zip(parts, rows)])
    return joined.bool() if is_bool else joined


# ----- the forward of one evaluation step ---------------------------------------------------------------------


@dataclass
class StepOutputs:
    """What a forward of one evaluation batch gave this rank: the global mean loss and the model outputs."""

    loss: torch.Tensor | None
    outputs: dict[str, Any]


def ignores_label_rows(model: torch.nn.Module, labels: torch.Tensor) -> bool:
    """Whether the model's loss skips label -100 (then fillers can be masked out of the loss).

    Token labels (LM, token classification) always do; per-sample integer labels do when HF picks
    cross-entropy (``single_label_classification``: ``num_labels > 1``), not for regression or multi-label.
    """
    if labels.is_floating_point():
        return False
    if labels.dim() >= 2:
        return True
    config = getattr(model, "config", None)
    problem = getattr(config, "problem_type", None)
    if problem is not None:
        return problem == "single_label_classification"
    return int(getattr(config, "num_labels", 2)) > 1


def mask_rows(labels: torch.Tensor, keep_rows: int) -> torch.Tensor:
    if keep_rows >= labels.shape[0]:
        return labels
    masked = labels.clone()
    masked[keep_rows:] = IGNORE_INDEX
    return masked


@torch.no_grad()
def forward_eval_batch(parallel_model, batch: dict[str, Any], keep_rows: int, causal: bool) -> StepOutputs:
    """Forward this rank's batch (cut into the plan's micro-batches, as ``eval_step`` does).

    With labels, the returned loss follows the runtime's contract: the mean over the label items of the
    whole step (all data-parallel groups), fillers excluded where the loss allows it.
    """
    module = parallel_model.module
    module.eval()
    batch = {k: v.to(parallel_model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    labels = batch.get("labels")
    ignores_rows = labels is not None and ignores_label_rows(module, labels)
    if ignores_rows:
        batch["labels"] = mask_rows(labels, keep_rows)
    parts = split_rows(batch, parallel_model.plan.num_micro_batches)
    device = parallel_model.device
    weighted = torch.zeros(2, dtype=torch.float64, device=device)  # sum of item losses, items
    outputs: list[dict[str, Any]] = []
    for part in parts:
        output = dict(module(**part).items())
        loss = output.pop("loss", None)
        if labels is not None:
            if loss is None:
                raise EvaluationError("the model returned no loss for a batch with labels")
            items = label_items(part["labels"], causal, skips_ignored=ignores_rows).to(device, torch.float64)
            if float(items) > 0:
                weighted += torch.stack([loss.detach().double() * items, items])
        outputs.append(output)
    step_loss = None
    if labels is not None:
        if parallel_model.data_size > 1:
            dist.all_reduce(weighted, group=parallel_model.data_group)
        step_loss = (weighted[0] / weighted[1]).float()  # NaN without label items, as the HF mean
    return StepOutputs(step_loss, _concat_outputs(outputs))


@torch.no_grad()
def forward_pipeline_batch(parallel_model, batch: dict[str, Any], keep_rows: int, with_outputs: bool) -> StepOutputs:
    """Forward this rank's batch through the pipeline (``PipelineRunner.evaluate_with_outputs``): the step's
    loss as ``forward_eval_batch`` gives it and, with ``with_outputs``, the logits, sent from the last stage to
    every stage. A batch without labels (``predict`` on unlabelled data) runs with labels -100 and no loss."""
    labels = batch.get("labels")
    if labels is None:
        if not with_outputs:
            raise EvaluationError("evaluation with pp > 1 and prediction_loss_only needs 'labels' in the batch")
        batch = {**batch, "labels": parallel_model.pipeline.placeholder_labels(batch)}
        _, logits = parallel_model.pipeline.evaluate_with_outputs(batch, loss_denominator=1.0, return_outputs=True)
        return StepOutputs(None, {"logits": logits})
    if ignores_label_rows(parallel_model.module, labels):
        batch = {**batch, "labels": mask_rows(labels, keep_rows)}
    loss, logits = parallel_model.pipeline.evaluate_with_outputs(batch, return_outputs=with_outputs)
    return StepOutputs(loss, {} if logits is None else {"logits": logits})


def _concat_outputs(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    if len(outputs) == 1:
        return outputs[0]
    return {key: _concat([o[key] for o in outputs]) for key in outputs[0]}


def _concat(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(values)
    if isinstance(first, (tuple, list)):
        return type(first)(_concat(list(group)) for group in zip(*values))
    return first


def check_rows(outputs: Mapping[str, Any], rows: int) -> None:
    """Every prediction must be in the data-loading layout (dim 0 = this rank's samples) to be gathered."""
    def check(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and (value.dim() == 0 or value.shape[0] != rows):
            raise EvaluationError(
                f"model output {name!r} has shape {tuple(value.shape)}, not {rows} rows like this rank's batch: it "
                f"is not laid out per sample (e.g. a hidden state of a layer in another TP layout); leave it out "
                f"with ignore_keys=[{name!r}]"
            )
        if isinstance(value, (tuple, list)):
            for item in value:
                check(name, item)

    for name, value in outputs.items():
        check(name, value)
