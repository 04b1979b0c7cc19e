"""Data loaders that shard by data-parallel group, so TP and PP peers read the same samples.

The plain Trainer shards over every process. Here the loader is sharded over ``data_size`` groups with
accelerate's own ``prepare_data_loader`` (the same sampler, seed handling and ``skip_first_batches`` support
the Trainer relies on), with ``num_processes=data_size`` and ``process_index=data_rank``. Group ``k`` takes
loader batches ``k, k + data_size, ...`` of one seeded permutation, so one step's global batch is the same
contiguous run of samples a single process with ``data_size`` times the batch would read.

An ``IterableDataset`` (no sampler, no shuffling) goes through accelerate's ``IterableDatasetShard``: every
group reads the whole stream and keeps its slice of each run of ``data_size`` loader batches, so a step
reads the same samples as one process would. The stream must yield the same samples in the same order in
every process (seed any randomness in it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)


def sharded_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    collate_fn: Callable,
    data_rank: int,
    data_size: int,
    shuffle: bool,
    data_seed: int | None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    worker_init_fn: Callable | None = None,
) -> DataLoader:
    """This data-parallel group's loader; with ``shuffle`` every group draws the same seeded permutation."""
    params = {
        "batch_size": batch_size,
        "collate_fn": collate_fn,
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "drop_last": drop_last,  # an iterable's shards read it too (IterableDatasetShard)
    }
    if not isinstance(dataset, IterableDataset):
        params["sampler"] = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        if worker_init_fn is not None:
            params["worker_init_fn"] = worker_init_fn
    loader = DataLoader(dataset, **params)
    return prepare_data_loader(
        loader,
        device=None,
        num_processes=data_size,
        process_index=data_rank,
        split_batches=False,
        put_on_device=False,
        rng_types=None,
        dispatch_batches=False,  # every group reads its own part; dispatching would broadcast over all ranks
        even_batches=True,
        use_seedable_sampler=shuffle,
        data_seed=data_seed if data_seed is not None else torch.initial_seed(),
    )
