"""Write a training checkpoint: every rank its own shards, nothing gathered, atomic as a whole.

Model and optimizer go through ``torch.distributed.checkpoint`` (DCP) with sharded state dicts
(:mod:`galvatron_hf.checkpoint.sharded_state`); each rank adds its RNG state, rank 0 the scheduler, the plan
and the HF config; rank 0 seals and publishes the directory last (:mod:`galvatron_hf.checkpoint.atomic`).
After each phase all ranks agree, so a failure anywhere raises everywhere and the previous ``<dir>`` stays.
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from galvatron_hf.checkpoint.atomic import STAGING_MARK, atomic_torch_save, describe_os_error, publish, staging_name
from galvatron_hf.checkpoint.collective import (
    checked_on_all_ranks,
    decided_by_rank0,
    distributed,
    rank,
    single_process_dcp_is_intended,
    world_size,
)
from galvatron_hf.checkpoint.frozen import frozen_fingerprint, frozen_names
from galvatron_hf.checkpoint.manifest import (
    CONFIG_NAME,
    DCP_DIR,
    GENERATION_CONFIG_NAME,
    MANIFEST_NAME,
    PLAN_NAME,
    RNG_DIR,
    SCHEDULER_NAME,
    CheckpointError,
    build_manifest,
    hf_class_name,
    require_json,
)
from galvatron_hf.checkpoint.rng import write_rank_rng
from galvatron_hf.checkpoint.sharded_state import relay_strided_optimizer_state, state_for
from galvatron_hf.planner.plan import Plan


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any = None,
    plan: Plan | None,
    step: int,
    extra: dict[str, Any] | None = None,
    keep_frozen: bool = True,
) -> Path:
    """Write a checkpoint of the (parallelised) model, optimizer, scheduler, RNG states, step and plan.

    Collective: every rank calls it with its own part of the model. ``extra`` (rank 0's copy is kept) is
    JSON data for the trainer, e.g. the data position. ``keep_frozen=False`` leaves the frozen parameters out
    (a fine-tune's base: a resume takes them from the model it loads into, ``checkpoint/frozen.py``). Returns
    the checkpoint directory. If any rank fails, every rank raises and ``directory`` keeps its previous content.
    """
    target = Path(directory).absolute()
    extra = dict(extra or {})
    require_json(extra, "extra")
    left_out = set() if keep_frozen else frozen_names(model)
    fingerprint = frozen_fingerprint(model) if left_out else None
    staging = decided_by_rank0(
        lambda: _start_staging(target), CheckpointError, f"cannot start a checkpoint at {target}"
    )
    try:
        _write_and_publish(
            staging, target, model, optimizer, lr_scheduler, plan, step, extra, left_out, fingerprint
        )
    except CheckpointError as err:  # raised on every rank (each phase is agreed on)
        note = describe_os_error(err, staging)
        if rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(
            f"{note}; the unfinished save folder {staging.name} was removed and the previous checkpoint at {target}, "
            "if any, is kept"
        ) from err
    return target


def _write_and_publish(
    staging: Path,
    target: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any,
    plan: Plan | None,
    step: int,
    extra: dict[str, Any],
    left_out: set[str],
    fingerprint: dict[str, list[float]] | None,
) -> None:
    """The phases of a save after its staging folder exists; each raises ``CheckpointError`` on every rank."""
    _dcp_save(staging, model, optimizer, left_out)
    checked_on_all_ranks(lambda: write_rank_rng(staging), f"writing RNG states into {staging}", CheckpointError)
    checked_on_all_ranks(
        lambda: _write_rank0_files(staging, model, lr_scheduler, plan),
        f"writing {staging}",
        CheckpointError,
        only_rank0=True,
    )
    manifest = build_manifest(
        step=step,
        world_size=world_size(),
        extra=extra,
        has_optimizer=optimizer is not None,
        has_scheduler=lr_scheduler is not None,
        model=model,
        frozen_fingerprint=fingerprint,
    )
    checked_on_all_ranks(
        lambda: publish(staging, target, manifest), f"publishing {target}", CheckpointError, only_rank0=True
    )


def _start_staging(target: Path) -> Path:
    """Rank 0 picks ``.<name>.tmp-<nonce>``, checks the target can be replaced and creates the folders."""
    _refuse_foreign_directory(target)
    staging = staging_name(target, STAGING_MARK, secrets.token_hex(6))
    (staging / DCP_DIR).mkdir(parents=True)
    (staging / RNG_DIR).mkdir()
    return staging


def _refuse_foreign_directory(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} exists and is a file; choose another checkpoint directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise CheckpointError(
            f"{target} exists, is not empty and is not a galvatron_hf checkpoint (no {MANIFEST_NAME}); it "
            "would be replaced, so choose another directory or remove it yourself"
        )


def _dcp_save(staging: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, left_out: set[str]) -> None:
    dcp_dir = staging / DCP_DIR
    try:
        with single_process_dcp_is_intended():
            writer = dcp.FileSystemWriter(str(dcp_dir))
            state = state_for(model, optimizer, without=left_out)
            relay_strided_optimizer_state(state)
            dcp.save(state, storage_writer=writer, no_dist=not distributed())
    except (Exception, CheckpointException) as err:  # DCP's collective error is a BaseException
        raise CheckpointError(
            f"writing model/optimizer shards into {dcp_dir} failed ({err}); the previous checkpoint, if any, "
            "is untouched"
        ) from err


def _write_rank0_files(staging: Path, model: nn.Module, lr_scheduler: Any, plan: Plan | None) -> None:
    if lr_scheduler is not None:
        atomic_torch_save(lr_scheduler.state_dict(), staging / SCHEDULER_NAME)
    if plan is not None:
        plan.save(staging / PLAN_NAME)
    _write_model_config(staging, model)


def _write_model_config(staging: Path, model: nn.Module) -> None:
    """Store config.json (with the architecture) so that export needs no extra flag."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_file"):
        return
    config = copy.deepcopy(config)
    config.architectures = [hf_class_name(model)]
    if getattr(config, "use_cache", None) is False:
        config.use_cache = True  # parallelize turns the KV cache off for training; the exported model generates
    config.to_json_file(str(staging / CONFIG_NAME))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and hasattr(generation_config, "to_json_file"):
        generation_config.to_json_file(str(staging / GENERATION_CONFIG_NAME))
