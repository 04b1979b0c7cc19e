"""The sharded state a checkpoint holds, as DCP sees it: ``model.<hf name>`` and ``optim.<...>.<hf name>...``.

The state dicts are views of the live parameters (no copies, nothing gathered). The optimizer is flattened per
parameter name (``flatten_optimizer_state_dict``): pipeline stages hold different parameters, and a per-name
layout is what lets a different stage split find its entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from galvatron_hf.checkpoint.manifest import CheckpointError
from galvatron_hf.parallel.tensor_parallel import is_strided, to_contiguous

MODEL_KEY = "model"
OPTIM_KEY = "optim"

# the sharded (default) state-dict layout, with the optimizer keyed per parameter name so that pipeline
# stages, which hold different parameters, can save and load each other's state
STATE_DICT_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def state_for(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, without: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """The sharded state DCP saves and loads into: views of the live parameters, no copies; the model entries
    named in ``without`` (frozen parameters, ``checkpoint/frozen.py``) left out."""
    if optimizer is None:
        model_state = get_model_state_dict(model, options=STATE_DICT_OPTIONS)
        return {MODEL_KEY: {k: v for k, v in model_state.items() if k not in without}}
    model_state, optim_state = get_state_dict(model, optimizer, options=STATE_DICT_OPTIONS)
    return {MODEL_KEY: {k: v for k, v in model_state.items() if k not in without}, OPTIM_KEY: optim_state}


def relay_strided_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """Store strided TP shards (GPT-2's fused c_attn) contiguously, as the model's state-dict hook does for the
    parameter itself: DCP rejects a strided shard ("overlapping chunks"). Returns the originals (key -> DTensor)
    so a load can put the values back into the optimizer's own layout."""
    optim_state = state.get(OPTIM_KEY, {})
    originals = {key: value for key, value in optim_state.items() if is_strided(value)}
    for key, value in originals.items():
        optim_state[key] = to_contiguous(value)
    return originals


def restore_strided_optimizer_state(state: dict[str, Any], originals: dict[str, Any]) -> None:
    optim_state = state[OPTIM_KEY]
    for key, original in originals.items():
        optim_state[key] = optim_state[key].redistribute(original.device_mesh, original.placements)


def load_into(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    read: Callable[[dict[str, Any]], None],
    without: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Load a sharded state into the live model (and optimizer), whatever source ``read`` takes it from.

    ``read(state)`` fills the sharded state dicts in place (views of the live parameters, strided TP shards
    stored contiguously, as they are saved); the optimizer's strided shards then go back to its own layout, and
    the state is set into the model and the optimizer. The model entries named in ``without`` (frozen
    parameters a checkpoint left out) are neither read nor set.
    """
    state = state_for(model, optimizer, without)
    strided = relay_strided_optimizer_state(state)
    read(state)
    options = replace(STATE_DICT_OPTIONS, strict=False) if without else STATE_DICT_OPTIONS
    if optimizer is None:
        set_model_state_dict(model, state[MODEL_KEY], options=options)
        return
    restore_strided_optimizer_state(state, strided)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state[MODEL_KEY],
        optim_state_dict=state[OPTIM_KEY],
        options=options,
    )


def stored_keys(dcp_dir: Path) -> set[str]:
    """Names of everything in a DCP checkpoint (``model.<fqn>``, ``optim.state.<fqn>.<name>``, ...)."""
    try:
        metadata = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    except Exception as err:
        raise CheckpointError(f"cannot read {dcp_dir / '.metadata'} (missing or corrupt): {err}") from err
    return set(metadata.state_dict_metadata)
