"""Restoring a learning-rate scheduler saved by another layout.

Torch schedulers keep per-param-group lists (``base_lrs``, ``_last_lr``, ``lr_lambdas``), and the number of
param groups depends on the layout: the Trainer gives each DTensor mesh its own group, and a pipeline stage
may lack a whole group (e.g. no bias / norm weights). The step count is what a resume needs; per-group entries
are mapped across layouts when every saved group follows the same schedule (the Trainer's schedulers do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PER_GROUP_KEYS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "_last_lr_per_group")


class SchedulerStateError(ValueError):
    """A saved scheduler whose param groups cannot be mapped onto this layout's groups."""


def load_scheduler_state(scheduler: Any, path: Path) -> None:
    """Load ``path`` (a scheduler ``state_dict`` file) into ``scheduler``, adapting the per-group entries."""
    if not path.is_file():
        raise SchedulerStateError(
            f"{path.parent} is incomplete: the learning-rate scheduler state {path.name} is missing; resume from "
            "an earlier checkpoint (the schedule's position cannot be recovered without it)"
        )
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise SchedulerStateError(f"{path} cannot be read (corrupt or truncated?): {err}") from err
    scheduler.load_state_dict(adapt_to_groups(saved, scheduler.state_dict(), path))


def adapt_to_groups(saved: dict[str, Any], current: dict[str, Any], where: Path | str = "") -> dict[str, Any]:
    adapted = dict(saved)
    for key in PER_GROUP_KEYS:
        if key not in saved or key not in current or not isinstance(saved[key], list):
            continue
        groups = len(current[key])
        if len(saved[key]) == groups:
            continue
        if any(entry != saved[key][0] for entry in saved[key][1:]):
            raise SchedulerStateError(
                f"{where}: the scheduler was saved with {len(saved[key])} param groups with different {key} "
                f"({saved[key]}) and this layout has {groups} groups; resume in the saving layout, or use one "
                "learning rate for every group"
            )
        adapted[key] = [saved[key][0]] * groups
    return adapted
