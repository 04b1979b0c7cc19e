"""The Trainer's loader hooks: every loader is sharded by data-parallel group (``training/data.py``).

The plain Trainer shards its loaders over every process; here the ranks of one TP / PP group read the same
samples, so the training, evaluation and test loaders are built by ``sharded_loader`` with the plan's
``data_rank`` / ``data_size``. Columns are pruned as the Trainer's own loaders prune them (through its
``_remove_unused_columns`` / ``_get_collator_with_removed_columns``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import find_batch_size
from transformers.trainer_utils import seed_worker
from transformers.utils import is_datasets_available

from galvatron_hf.training.batching import LoaderFillers, mask_filler_labels, round_in_epoch
from galvatron_hf.training.data import sharded_loader
from galvatron_hf.training.evaluation import CountingIterable, has_length

logger = logging.getLogger(__name__)

SAMPLING_STRATEGIES = ("random", "sequential")


class DataParallelLoaders:
    """``get_train_dataloader`` / ``get_eval_dataloader`` / ``get_test_dataloader`` for a ``GalvatronTrainer``
    (reads ``parallel_model``, ``batch_geometry`` and the Trainer's ``args``, datasets and collator).

    All three are public Trainer hooks that build the whole loader: the Trainer's versions end in
    ``accelerator.prepare``, which would shard over every process, so none can call ``super()``.
    """

    def get_train_dataloader(self) -> DataLoader:
        """This group's part of each global batch, ``per_rank_batch_size`` samples per loader batch."""
        if self.train_dataset is None:
            raise ValueError("GalvatronTrainer: training requires a train_dataset.")
        dataset, collator = self._dataset_and_collator(self.train_dataset, "training")
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy not in SAMPLING_STRATEGIES:
            logger.warning("train_sampling_strategy=%r is not supported by GalvatronTrainer; using 'random'", strategy)
        seeding = partial(seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index)
        loader = self._group_loader(
            dataset,
            collator,
            self.batch_geometry.per_rank_batch_size,
            shuffle=strategy != "sequential",
            data_seed=self.args.data_seed,
            worker_init_fn=seeding,
        )
        geometry = self.batch_geometry
        self._train_fillers = LoaderFillers(
            len(dataset) if has_length(dataset) else None,
            geometry.per_rank_batch_size,
            self.parallel_model.data_rank,
            self.parallel_model.data_size,
        )
        self._train_loader_batches = len(loader) if has_length(loader) else None
        return loader

    def without_train_fillers(self, inputs: dict[str, Any], pending: int) -> dict[str, Any]:
        """``inputs`` (the ``pending``-th loader batch of the current step) with its filler rows' labels -100:
        the last step of an epoch trains on the real samples only, as the plain Trainer on one process does."""
        fillers = getattr(self, "_train_fillers", None)
        batches = getattr(self, "_train_loader_batches", None)
        if fillers is None or batches is None or fillers.data_size == 1:
            return inputs
        index = round_in_epoch(self.state.global_step, pending, batches, self.args.gradient_accumulation_steps)
        rows = find_batch_size(inputs)
        return mask_filler_labels(inputs, fillers.real_rows(index, rows)) if rows else inputs

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("GalvatronTrainer: evaluation requires an eval_dataset.")
        return self._evaluation_loader(eval_dataset, "evaluation")

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        return self._evaluation_loader(test_dataset, "test")

    def _evaluation_loader(self, dataset: Any, description: str) -> DataLoader:
        """In order, sharded by data-parallel group (``training/evaluation.py`` gathers the groups back)."""
        dataset, collator = self._dataset_and_collator(dataset, description)
        if isinstance(dataset, torch.utils.data.IterableDataset) and not has_length(dataset):
            if self.args.dataloader_num_workers == 0:
                dataset = CountingIterable(dataset)  # its length, for the last step's fillers
            else:
                logger.warning(
                    "GalvatronTrainer: an unsized iterable %s dataset read by workers: the last step's filler "
                    "samples (repeated from the start) stay in the predictions; use dataloader_num_workers=0 or "
                    "give the dataset a __len__",
                    description,
                )
        return self._group_loader(dataset, collator, self.args.per_device_eval_batch_size, shuffle=False)

    def _group_loader(
        self,
        dataset: Any,
        collator: Callable,
        batch_size: int,
        *,
        shuffle: bool,
        data_seed: int | None = None,
        worker_init_fn: Callable | None = None,
    ) -> DataLoader:
        """This data-parallel group's loader, with the Trainer's drop-last, worker and pinning settings."""
        return sharded_loader(
            dataset,
            batch_size=batch_size,
            collate_fn=collator,
            data_rank=self.parallel_model.data_rank,
            data_size=self.parallel_model.data_size,
            shuffle=shuffle,
            data_seed=data_seed,
            drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.args.device.type != "cpu",
            worker_init_fn=worker_init_fn,
        )

    def _dataset_and_collator(self, dataset: Any, description: str) -> tuple[Any, Callable]:
        """Drop the columns the model's forward does not take, as the Trainer's own loaders do (``datasets``
        is optional there too: without it every dataset is a torch one)."""
        if _is_hf_dataset(dataset):
            return self._remove_unused_columns(dataset, description=description), self.data_collator
        return dataset, self._get_collator_with_removed_columns(self.data_collator, description=description)


def _is_hf_dataset(dataset: Any) -> bool:
    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)
