"""Resume from a plain Hugging Face ``Trainer`` checkpoint into any layout.

A plain ``checkpoint-N/`` holds the full weights (``model.safetensors``), the optimizer as one
``torch.save(optimizer.state_dict())`` (``optimizer.pt``: state keyed by parameter *index* in the Trainer's
param groups), ``scheduler.pt``, ``rng_state[_<rank>].pth`` and ``trainer_state.json``. The weights load with
:func:`load_hf_pretrained` (each rank reads its slices). The optimizer's indices are turned into parameter
names with the groups the plain Trainer built (``param_groups``: the names of each group, in order), and
each rank then takes the slices its sharded optimizer state holds, through DCP's load planner as for a
galvatron checkpoint (the full state is read by every rank: host memory for one optimizer copy).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint import load as dcp_load

from galvatron_hf.checkpoint.collective import distributed, rank, single_process_dcp_is_intended
from galvatron_hf.checkpoint.hf_weights import (
    SafetensorsSliceReader,
    StoredTensor,
    load_hf_pretrained,
    safetensors_files,
    tied_weight_sources,
)
from galvatron_hf.checkpoint.load import stored_names_on_every_rank
from galvatron_hf.checkpoint.manifest import MANIFEST_NAME, CheckpointError
from galvatron_hf.checkpoint.sharded_state import OPTIM_KEY, load_into

OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.json"
STATE_PREFIX = "state."
GROUP_PREFIX = "param_groups."


def is_plain_trainer_checkpoint(path: str | os.PathLike) -> bool:
    """A ``checkpoint-N/`` the plain Trainer wrote: its state and HF weights, no galvatron manifest."""
    path = Path(path)
    if (path / MANIFEST_NAME).exists() or not (path / TRAINER_STATE_FILE).is_file():
        return False
    return (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()


def load_plain_trainer_checkpoint(
    path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, param_groups: list[list[str]]
) -> None:
    """Weights and (with ``optimizer``) optimizer state of a plain Trainer checkpoint into this layout.

    Collective. ``param_groups``: the parameter names of each param group the plain Trainer built, in
    order (what its ``optimizer.pt`` indices count through).
    """
    path = Path(path).absolute()
    safetensors_files(path)  # a clear error for a directory without safetensors weights
    load_hf_pretrained(model, path)
    if optimizer is None:
        return
    by_name, hyper = _named_optimizer_state(path, param_groups)
    load_into(model, optimizer, lambda state: _read_optimizer_state(path, model, state[OPTIM_KEY], by_name, hyper))


def _read_optimizer_state(
    path: Path, model: nn.Module, optim_state: dict[str, Any], by_name: dict[str, Any], hyper: dict[str, dict]
) -> None:
    """Fill this rank's sharded optimizer state from the plain Trainer's full one (keyed by name)."""
    tensors = {key: value for key, value in optim_state.items() if key.startswith(STATE_PREFIX)}
    names = stored_names_on_every_rank(
        tensors,
        lambda: set(by_name),
        model,
        lambda missing: f"{path / OPTIMIZER_FILE} has no state for {len(missing)} entries this optimizer needs, "
        f"e.g. {missing[:4]}; was it saved with another optimizer (--optim) or model?",
    )
    _read_into(tensors, {key: by_name[stored] for key, stored in names.items()})
    optim_state.update(tensors)
    _set_hyperparameters(optim_state, hyper, tied_weight_sources(model))


def _named_optimizer_state(path: Path, param_groups: list[list[str]]) -> tuple[dict[str, Any], dict[str, dict]]:
    """``optimizer.pt`` keyed by name: ({"state.<name>.<key>": value}, {name: its group's hyper-parameters})."""
    file = path / OPTIMIZER_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no {OPTIMIZER_FILE} (saved with save_only_model?); resume needs the optimizer, or start "
            "a new run from its weights with --model_name_or_path"
        )
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{file} cannot be read (corrupt or truncated?): {err}") from err
    sizes = [len(group["params"]) for group in saved["param_groups"]]
    if sizes != [len(names) for names in param_groups]:
        raise CheckpointError(
            f"{file} has param groups of {sizes} parameters; the plain Trainer builds {[len(n) for n in param_groups]} "
            "for this model (decay, no decay): was it saved from another model or a custom optimizer?"
        )
    by_name: dict[str, Any] = {}
    hyper: dict[str, dict] = {}
    for group, names in zip(saved["param_groups"], param_groups):
        settings = {key: value for key, value in group.items() if key != "params"}
        for index, name in zip(group["params"], names):
            hyper[name] = settings
            for key, value in saved["state"].get(index, {}).items():
                by_name[f"{STATE_PREFIX}{name}.{key}"] = value
    return by_name, hyper


class FullTensorReader(SafetensorsSliceReader):
    """Serve DCP read requests from full tensors in memory: each rank copies only the slices it holds."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__({name: StoredTensor("", name, tuple(t.shape), t.dtype) for name, t in tensors.items()})
        self.full = tensors

    def read_data(self, plan, planner):
        for item in plan.items:
            region = tuple(slice(start, start + length) for start, length in zip(item.storage_offsets, item.lengths))
            data = self.full[item.storage_index.fqn]
            target = planner.resolve_tensor(item).detach()
            target.copy_(data[region] if region else data)
            planner.commit_tensor(item, target)
        done: torch.futures.Future[None] = torch.futures.Future()
        done.set_result(None)
        return done


def _read_into(targets: dict[str, Any], sources: dict[str, Any]) -> None:
    """Fill each target (a sharded tensor, or a plain value) from its full source, in place."""
    tensor_keys = [key for key, value in targets.items() if isinstance(value, torch.Tensor)]
    for key in set(targets) - set(tensor_keys):
        targets[key] = sources[key]
    full = {key: torch.as_tensor(sources[key]).to(targets[key].dtype) for key in tensor_keys}
    with single_process_dcp_is_intended():
        dcp_load(
            {key: targets[key] for key in tensor_keys}, storage_reader=FullTensorReader(full), no_dist=not distributed()
        )


def _set_hyperparameters(optim_state: dict[str, Any], hyper: dict[str, dict], ties: dict[str, str]) -> None:
    """``param_groups.<name>.<key>`` from the saved group of that parameter (or of its tie source)."""
    for key in [key for key in optim_state if key.startswith(GROUP_PREFIX)]:
        name, setting = key[len(GROUP_PREFIX) :].rsplit(".", 1)
        saved = hyper.get(name) or hyper.get(ties.get(name, ""), {})
        if setting in saved:
            optim_state[key] = saved[setting]


def restore_plain_trainer_rng(path: str | os.PathLike) -> str:
    """Apply this rank's ``rng_state_<rank>.pth`` when present, else rank 0's / the one-process file; say whose."""
    path = Path(path)
    candidates = [path / f"rng_state_{rank()}.pth", path / "rng_state_0.pth", path / "rng_state.pth"]
    source = next((file for file in candidates if file.is_file()), None)
    if source is None:
        return "none (the checkpoint has no rng_state files)"
    states = torch.load(source, weights_only=False)  # the Trainer pickles python's and numpy's states
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    return source.name
