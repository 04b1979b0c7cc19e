"""Load a training checkpoint into the (parallelised) model and optimizer, whatever layout wrote it.

DCP's planner maps the saved chunks onto the current placements, so a checkpoint written from TP2 x ZeRO-3
loads into FSDP on 2 ranks or a 2-stage pipeline. Entries are looked up by name; a tied weight's entry may
be filed under another name of its tie group (see :func:`resolve_stored_names`). Before any collective load
every rank learns whether any rank lacks something, so none waits forever (:func:`stored_names_on_every_rank`,
which the plain-Trainer resume uses too).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from galvatron_hf.checkpoint.atomic import recover_interrupted_save
from galvatron_hf.checkpoint.collective import (
    decided_by_rank0,
    distributed,
    max_over_ranks,
    raise_on_every_rank_if_any,
    single_process_dcp_is_intended,
)
from galvatron_hf.checkpoint.frozen import check_same_frozen_parameters, frozen_names
from galvatron_hf.checkpoint.hf_weights import tied_weight_sources
from galvatron_hf.checkpoint.manifest import (
    DCP_DIR,
    FROZEN_KEY,
    PLAN_NAME,
    SCHEDULER_NAME,
    CheckpointError,
    read_manifest,
)
from galvatron_hf.checkpoint.progress import LoadProgressPlanner
from galvatron_hf.checkpoint.rng import RngRestored, restore_rank_rng
from galvatron_hf.checkpoint.sharded_state import load_into, stored_keys
from galvatron_hf.planner.plan import Plan


@dataclass(frozen=True)
class CheckpointState:
    """What ``load_checkpoint`` restored besides model/optimizer/scheduler, for the trainer to resume from.

    ``rng``: "per-rank" (same world size and layout: every rank got its own generators back), "rank0"
    (another layout: every rank got rank 0's generators, so TP/PP peers stay in step) or "none".
    """

    directory: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    saved_world_size: int = 1
    rng: RngRestored = "none"
    scheduler_restored: bool = False


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any = None,
    plan: Plan | None = None,
    restore_rng: bool = True,
) -> CheckpointState:
    """Load a checkpoint into the (parallelised) model and optimizer, whatever layout saved it.

    Collective. ``plan`` is the current plan: with the saved world size and layout, each rank gets its own
    RNG states back; otherwise every rank gets rank 0's (see :class:`CheckpointState`). The returned state
    carries the step, ``extra`` and the saved plan.
    """
    path = Path(directory).absolute()
    decided_by_rank0(
        lambda: recover_interrupted_save(path), CheckpointError, f"cannot finish the interrupted save of {path}"
    )
    manifest = read_manifest(path)
    if optimizer is not None and not manifest.get("has_optimizer", False):
        raise CheckpointError(f"{path} was saved without optimizer state; pass optimizer=None to load the model")
    _dcp_load(path, model, optimizer, manifest.get(FROZEN_KEY))
    scheduler_restored = _load_scheduler(path, lr_scheduler)
    saved_plan = Plan.load(path / PLAN_NAME) if (path / PLAN_NAME).is_file() else None
    saved_world_size = int(manifest["world_size"])
    rng = restore_rank_rng(path, saved_world_size, saved_plan, plan) if restore_rng else "none"
    return CheckpointState(
        directory=path,
        step=int(manifest["step"]),
        extra=dict(manifest.get("extra", {})),
        plan=saved_plan,
        saved_world_size=saved_world_size,
        rng=rng,
        scheduler_restored=scheduler_restored,
    )


def _dcp_load(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, frozen: dict[str, list[float]] | None
) -> None:
    """Load model and optimizer shards; a checkpoint without the frozen parameters (``frozen``: their saved
    fingerprint) loads what trained into a model whose frozen parameters must be the ones it trained with."""
    dcp_dir = path / DCP_DIR
    left_out: set[str] = set()
    if frozen is not None:
        check_same_frozen_parameters(frozen, model, str(path))
        left_out = frozen_names(model)
    load_into(model, optimizer, lambda state: _read_shards(dcp_dir, model, state), without=left_out)


def _read_shards(dcp_dir: Path, model: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    wanted = {f"{group}.{key}": (group, key) for group, entries in state.items() for key in entries}
    names = stored_names_on_every_rank(
        wanted,
        lambda: stored_keys(dcp_dir),
        model,
        lambda missing: f"{dcp_dir} lacks {len(missing)} entries this model/optimizer needs, e.g. {missing[:6]}; "
        "was it saved from another model or optimizer?",
    )
    try:
        _load_by_stored_names(dcp_dir, state, wanted, names)
    except (Exception, CheckpointException) as err:
        raise CheckpointError(
            f"reading model/optimizer shards from {dcp_dir} failed (corrupt or truncated?): {err}"
        ) from err


def stored_names_on_every_rank(
    wanted: Any, stored: Callable[[], set[str]], model: nn.Module, lacking: Callable[[list[str]], str]
) -> dict[str, str | None]:
    """For each wanted entry name, the stored entry that holds it (see :func:`resolve_stored_names`).

    When any rank lacks an entry, or cannot list what is ``stored``, every rank raises a CheckpointError (the
    message ``lacking(missing names)`` where entries are missing): a pipeline stage may lack what the others
    have, and none may then wait forever in a collective load.
    """
    names: dict[str, str | None] = {}
    problem: CheckpointError | None = None
    try:
        names = resolve_stored_names(wanted, stored(), tied_weight_sources(model))
        missing = [name for name, found in names.items() if found is None]
        if missing:
            problem = CheckpointError(lacking(missing))
    except CheckpointError as err:
        problem = err
    raise_on_every_rank_if_any(problem, CheckpointError)
    return names


def resolve_stored_names(wanted: Any, stored: set[str], ties: dict[str, str]) -> dict[str, str | None]:
    """For each wanted entry name, the stored entry that holds it (None if none does).

    A tied parameter is one tensor with two names; which name the saved layout used depends on who held it
    (the full model files the optimizer state under the embedding's name, a last pipeline stage under
    ``lm_head.weight``), so a missing name is looked up under the other names of its tie group.
    """
    equivalents = _tie_groups(ties)
    names: dict[str, str | None] = {}
    for name in wanted:
        names[name] = name if name in stored else _tied_alternative(name, stored, equivalents)
    return names


def _tie_groups(ties: dict[str, str]) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for target, source in ties.items():
        group = groups.get(source, {source}) | groups.get(target, {target})
        for member in group:
            groups[member] = group
    return groups


def _tied_alternative(name: str, stored: set[str], equivalents: dict[str, set[str]]) -> str | None:
    padded = f"{name}."
    for fqn, group in equivalents.items():
        if f".{fqn}." not in padded:
            continue
        for other in sorted(group - {fqn}):
            candidate = padded.replace(f".{fqn}.", f".{other}.", 1)[:-1]
            if candidate in stored:
                return candidate
    return None


def _load_by_stored_names(
    dcp_dir: Path, state: dict[str, dict[str, Any]], wanted: dict[str, tuple[str, str]], names: dict[str, Any]
) -> None:
    """DCP-load every wanted entry from its stored name, in place, in as few collective passes as possible.

    Two wanted entries may come from one stored entry (tied weights split over separate tensors); a load
    names each stored entry once, so such entries take a second pass. Every rank runs the same number of
    passes, since each is collective.
    """
    passes: list[dict[str, str]] = []  # per pass: stored name -> wanted name
    for name, stored in names.items():
        target = next((p for p in passes if stored not in p), None)
        if target is None:
            target = {}
            passes.append(target)
        target[stored] = name
    for index in range(max_over_ranks(len(passes))):
        mapping = passes[index] if index < len(passes) else {}
        batch = {stored: state[wanted[name][0]][wanted[name][1]] for stored, name in mapping.items()}
        with single_process_dcp_is_intended():
            dcp.load(
                batch,
                storage_reader=dcp.FileSystemReader(str(dcp_dir)),
                planner=LoadProgressPlanner(f"loading {dcp_dir.parent.name}"),
                no_dist=not distributed(),
            )
        for stored, name in mapping.items():  # non-tensor entries are replaced, not filled in place
            group, key = wanted[name]
            state[group][key] = batch[stored]


def _load_scheduler(path: Path, lr_scheduler: Any) -> bool:
    if lr_scheduler is None:
        return False
    scheduler_file = path / SCHEDULER_NAME
    if not scheduler_file.is_file():
        raise CheckpointError(f"{path} has no scheduler state ({SCHEDULER_NAME}); pass lr_scheduler=None")
    lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
    return True
