"""A progress bar over a DCP load: model and optimizer shards, or HF weights read slice by slice.

A load of a large model reads thousands of tensors and can take minutes; like the HF libraries, we show a
tqdm bar (on rank 0 only, on stderr). The bar counts the entries this rank reads, as DCP hands each one to
the planner (``commit_tensor`` for tensors, ``load_bytes`` for other values); everything else is
``DefaultLoadPlanner``'s.
"""

from __future__ import annotations

import sys
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint import DefaultLoadPlanner
from tqdm.auto import tqdm


class LoadProgressPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that advances a progress bar per entry read."""

    def __init__(self, description: str, **planner_options: Any) -> None:
        super().__init__(**planner_options)
        self.description = description
        self.bar: tqdm | None = None

    def create_local_plan(self):
        plan = super().create_local_plan()
        shown = not dist.is_initialized() or dist.get_rank() == 0
        self.bar = tqdm(total=len(plan.items), desc=self.description, unit="tensor", file=sys.stderr, disable=not shown)
        return plan

    def load_bytes(self, read_item, value) -> None:
        super().load_bytes(read_item, value)
        self._advance()

    def commit_tensor(self, read_item, tensor) -> None:
        super().commit_tensor(read_item, tensor)
        self._advance()

    def _advance(self) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.bar.n >= (self.bar.total or 0):
            self.bar.close()
