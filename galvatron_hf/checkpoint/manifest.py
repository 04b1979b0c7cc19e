"""What a checkpoint directory holds, and its manifest ``checkpoint.json``: the seal a save writes last.

A directory without a readable manifest of this format and version is not a checkpoint: every reader goes
through :func:`read_manifest`, whose errors name the path and what is missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "galvatron_hf.checkpoint"
CHECKPOINT_VERSION = 1
MANIFEST_NAME = "checkpoint.json"
DCP_DIR = "dcp"
PLAN_NAME = "plan.json"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SCHEDULER_NAME = "scheduler.pt"
RNG_DIR = "rng"
FROZEN_KEY = "frozen_parameters"  # {name: [sum, sum of squares]} of the frozen parameters a save left out


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the path and what is wrong."""


def build_manifest(
    *,
    step: int,
    world_size: int,
    extra: dict[str, Any],
    has_optimizer: bool,
    has_scheduler: bool,
    model: nn.Module,
    frozen_fingerprint: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The manifest of a save: what a resume needs (step, world size, ``extra``) and what wrote it;
    ``frozen_fingerprint`` when the frozen parameters were left out (``checkpoint/frozen.py``)."""
    import transformers

    frozen = {} if frozen_fingerprint is None else {FROZEN_KEY: frozen_fingerprint}
    return {
        **frozen,
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "world_size": world_size,
        "extra": extra,
        "has_optimizer": has_optimizer,
        "has_scheduler": has_scheduler,
        "model_class": hf_class_name(model),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The checkpoint's ``checkpoint.json``, with errors that say what is missing and why."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    manifest_file = path / MANIFEST_NAME
    if not manifest_file.is_file():
        raise CheckpointError(
            f"{path} is not a complete galvatron_hf checkpoint: {MANIFEST_NAME} is missing (the save was "
            "interrupted, or this is another kind of directory); load an earlier checkpoint"
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_file} is corrupt ({err})") from err
    if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{manifest_file} is format {manifest.get('format')!r} version {manifest.get('version')!r}; this "
            f"galvatron_hf reads {CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}"
        )
    if not (path / DCP_DIR / ".metadata").is_file():
        index = path / DCP_DIR / ".metadata"
        raise CheckpointError(f"{path} is incomplete: the model/optimizer index {index} is missing")
    return manifest


def hf_class_name(model: nn.Module) -> str:
    """The HF class of a possibly wrapped model (FSDP2 turns ``LlamaForCausalLM`` into a subclass)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers."):
            return cls.__name__
    return next(cls.__name__ for cls in type(model).__mro__ if not cls.__name__.startswith("FSDP"))


def require_json(value: Any, name: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{name} must be JSON data (numbers, strings, lists, dicts): {err}") from err
