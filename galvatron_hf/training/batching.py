"""How TrainingArguments' batch sizes map onto a plan's global batch.

One optimizer step consumes the **global batch** (``plan.global_batch_size`` samples). It is split over the
``data_size`` data-parallel groups (``ParallelModel.data_size``: TP and PP peers share one part) and, inside
a group, over ``gradient_accumulation_steps`` loader batches:

    global_batch_size = per_rank_batch_size x data_size x gradient_accumulation_steps

``per_rank_batch_size`` is ``per_device_train_batch_size`` unless ``global_batch_size`` is given, in which
case it is derived. The trainer gathers the accumulation batches of one step and hands them to the runtime as
one batch; how the runtime cuts that batch into micro-batches is the plan's ``num_micro_batches``.

The last step of an epoch: accelerate's sharded loaders keep every data-parallel group at the same number of
full loader batches by filling the last ones with samples from the start of the dataset (``even_batches``).
The plain Trainer on one process trains its last step on the real samples only, so :class:`LoaderFillers`
says which rows of a loader batch are fillers and :func:`mask_filler_labels` takes them out of the loss
(labels -100: they add no loss and no gradient, and the step's mean is over the real samples' label items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from galvatron_hf.constants import IGNORE_INDEX

# value used to pad each key when loader batches of different lengths are joined into one step batch
PAD_VALUES = {
    "labels": -100,
    "attention_mask": 0,
    "decoder_attention_mask": 0,
    "token_type_ids": 0,
}
TOKEN_KEYS = ("input_ids", "decoder_input_ids")


class BatchSizeError(ValueError):
    """Batch sizes that cannot be split as asked; the message names the fix."""


@dataclass(frozen=True)
class BatchGeometry:
    """The global batch and how each data-parallel group loads it."""

    global_batch_size: int
    data_size: int
    gradient_accumulation_steps: int

    @property
    def per_rank_batch_size(self) -> int:
        """Samples in one loader batch of one data-parallel group."""
        return self.global_batch_size // (self.data_size * self.gradient_accumulation_steps)

    def summary(self) -> str:
        return (
            f"galvatron batch: global {self.global_batch_size} = {self.per_rank_batch_size} per loader batch x "
            f"{self.data_size} data-parallel group(s) x {self.gradient_accumulation_steps} accumulation step(s)"
        )

    @classmethod
    def from_arguments(
        cls,
        per_device_batch_size: int,
        gradient_accumulation_steps: int,
        data_size: int,
        global_batch_size: int | None,
    ) -> BatchGeometry:
        accumulation = max(1, gradient_accumulation_steps)
        if global_batch_size is None:
            return cls(
                per_device_batch_size * data_size * accumulation,
                data_size,
                accumulation,
            )
        if global_batch_size % (data_size * accumulation):
            raise BatchSizeError(
                f"global_batch_size={global_batch_size} does not split into {data_size} data-parallel groups x "
                f"{accumulation} accumulation steps; use a multiple of {data_size * accumulation}"
            )
        return cls(global_batch_size, data_size, accumulation)


def pad_token_id(model: torch.nn.Module) -> int:
    """The id that pads token keys when loader batches are joined: the model config's, else 0."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def merge_micro_batches(batches: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Join loader batches into one step batch (dim 0), right-padding sequence dims that differ."""
    if len(batches) == 1:
        return dict(batches[0])
    merged: dict[str, Any] = {}
    for key in batches[0]:
        values = [batch[key] for batch in batches]
        if not isinstance(values[0], torch.Tensor):
            merged[key] = values[0]
            continue
        pad = pad_token_id if key in TOKEN_KEYS else PAD_VALUES.get(key, 0)
        merged[key] = torch.cat(_pad_to_common_shape(values, pad), dim=0)
    return merged


def _pad_to_common_shape(values: list[torch.Tensor], pad: int) -> list[torch.Tensor]:
    if values[0].dim() < 2 or all(v.shape[1:] == values[0].shape[1:] for v in values):
        return values
    target = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        widths: list[int] = []
        for dim in reversed(range(1, value.dim())):
            widths += [0, target[dim - 1] - value.shape[dim]]
        padded.append(torch.nn.functional.pad(value, widths, value=pad))
    return padded


@dataclass(frozen=True)
class LoaderFillers:
    """Which rows of one data-parallel group's training loader batches are real samples.

    Group ``data_rank`` reads loader batches ``data_rank, data_rank + data_size, ...`` of ``per_rank_batch_size``
    samples each (``training/data.py``); rows past the dataset's end are fillers, and they come last.
    ``dataset_size`` None (an unsized iterable) means every row counts as real.
    """

    dataset_size: int | None
    per_rank_batch_size: int
    data_rank: int
    data_size: int

    def real_rows(self, round_index: int, rows: int) -> int:
        """Real samples among the ``rows`` of this group's ``round_index``-th loader batch of the epoch."""
        if self.dataset_size is None:
            return rows
        start = (round_index * self.data_size + self.data_rank) * self.per_rank_batch_size
        return max(0, min(rows, self.dataset_size - start))


def round_in_epoch(global_step: int, pending: int, loader_batches: int, accumulation: int) -> int:
    """Index in the epoch of the loader batch a training step is collecting: the Trainer runs
    ``ceil(loader_batches / accumulation)`` optimizer steps per epoch, the last one with fewer batches."""
    steps_per_epoch = max(1, math.ceil(loader_batches / max(1, accumulation)))
    return (global_step % steps_per_epoch) * accumulation + pending


def mask_filler_labels(batch: dict[str, Any], real_rows: int) -> dict[str, Any]:
    """``batch`` with the labels of rows ``real_rows:`` set to -100 (left out of the loss)."""
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or real_rows >= labels.shape[0]:
        return batch
    if labels.is_floating_point():
        raise BatchSizeError(
            f"the last training batch holds {labels.shape[0] - real_rows} filler sample(s) (the dataset does not "
            "fill every data-parallel group's batch) and float labels (regression, multi-label) cannot leave them "
            "out of the loss; set dataloader_drop_last=True or use a dataset size that is a multiple of the "
            "global batch"
        )
    masked = labels.clone()
    masked[real_rows:] = IGNORE_INDEX
    return {**batch, "labels": masked}



def changes_batch_layout(plan: Any) -> bool:
    """Whether some block runs in another (dp, tp) layout than the data-loading one: activations then move
    between ranks that loaded different samples, so their sequences must have one length."""
    vocab = (plan.vocab.dp, plan.vocab.tp)
    return any((layer.dp, layer.tp) != vocab for layer in plan.layers)


def pad_to_lengths_over_ranks(batch: dict[str, Any], pad_token_id: int = 0, group: Any = None) -> dict[str, Any]:
    """``batch`` right-padded so every tensor has, in each dim after the first, the largest size any rank of
    ``group`` holds (one all-reduce). Padding follows ``merge_micro_batches``: pad tokens, mask 0, labels -100.
    Collators pad to the longest sample of their batch, so ranks loading different samples differ."""
    import torch.distributed as dist

    keys = [k for k in sorted(batch) if isinstance(batch[k], torch.Tensor) and batch[k].dim() >= 2]
    if not keys:
        return batch
    sizes = torch.tensor([size for k in keys for size in batch[k].shape[1:]], dtype=torch.int64)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    padded, offset = dict(batch), 0
    for key in keys:
        value = batch[key]
        target = sizes[offset : offset + value.dim() - 1].tolist()
        offset += value.dim() - 1
        if list(value.shape[1:]) != target:
            pad = pad_token_id if key in TOKEN_KEYS else PAD_VALUES.get(key, 0)
            widths: list[int] = []
            for dim in reversed(range(1, value.dim())):
                widths += [0, target[dim - 1] - value.shape[dim]]
            padded[key] = torch.nn.functional.pad(value, widths, value=pad)
    return padded
