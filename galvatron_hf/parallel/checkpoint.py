"""Training checkpoints that survive crashes and load into any layout and world size.

Model and optimizer go through ``torch.distributed.checkpoint`` (DCP) with sharded state dicts: each rank
writes only the shards it owns, nothing is gathered on one rank, and DCP's planner reshards on load, so a
checkpoint written from TP2 x ZeRO-3 loads into FSDP on 2 ranks or a 2-stage pipeline. The optimizer state
is flattened per parameter name (``flatten_optimizer_state_dict``): pipeline stages hold different
parameters, and a per-name layout is what lets a different stage split find its entries.

A save is atomic: everything is written into ``.<name>.tmp-<nonce>`` beside ``<dir>``; after all ranks
finished, rank 0 writes the manifest ``checkpoint.json`` last and renames the directory into place. A crash
at any point leaves the previous ``<dir>`` untouched (it is moved aside only after the new one is complete,
and deleted only after the new one is in place); ``load_checkpoint`` finishes a swap a crash interrupted.
See docs/checkpoints.md for the directory layout and what a resume in another layout restores.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from galvatron_hf.parallel.tensor_parallel import is_strided, to_contiguous
from galvatron_hf.parallel.hf_weights import (
    raise_on_every_rank_if_any,
    single_process_dcp_is_intended,
    tied_weight_sources,
)
from galvatron_hf.planner.plan import Plan

CHECKPOINT_FORMAT = "galvatron_hf.checkpoint"
CHECKPOINT_VERSION = 1
MANIFEST_NAME = "checkpoint.json"
DCP_DIR = "dcp"
PLAN_NAME = "plan.json"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SCHEDULER_NAME = "scheduler.pt"
RNG_DIR = "rng"
MODEL_KEY = "model"
OPTIM_KEY = "optim"
STAGING_MARK = ".tmp-"
ASIDE_MARK = ".old-"


# the sharded (default) state-dict layout, with the optimizer keyed per parameter name so that pipeline
# stages, which hold different parameters, can save and load each other's state
STATE_DICT_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the path and what is wrong."""


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
    rng: str = "none"
    scheduler_restored: bool = False


# ===== save ===============================================================================================


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any = None,
    plan: Plan | None,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of the (parallelised) model, optimizer, scheduler, RNG states, step and plan.

    Collective: every rank calls it with its own part of the model. ``extra`` (rank 0's copy is kept) is
    JSON data for the trainer, e.g. the data position. Returns the checkpoint directory. If any rank fails,
    every rank raises and ``directory`` keeps its previous content.
    """
    target = Path(directory).absolute()
    extra = dict(extra or {})
    _require_json(extra, "extra")
    staging = _agree_on_staging_directory(target)
    _dcp_save(staging, model, optimizer)
    _checked_on_all_ranks(lambda: _write_rank_rng(staging), f"writing RNG states into {staging}")
    _checked_on_all_ranks(
        lambda: _write_rank0_files(staging, model, lr_scheduler, plan), f"writing {staging}", only_rank0=True
    )
    manifest = _manifest(step, extra, optimizer is not None, lr_scheduler is not None, model)
    _checked_on_all_ranks(lambda: _publish(staging, target, manifest), f"publishing {target}", only_rank0=True)
    return target


def _dcp_save(staging: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    dcp_dir = staging / DCP_DIR
    try:
        with single_process_dcp_is_intended():
            writer = dcp.FileSystemWriter(str(dcp_dir))
            state = _state_for(model, optimizer)
            _relay_strided_optimizer_state(state)
            dcp.save(state, storage_writer=writer, no_dist=not _distributed())
    except (Exception, CheckpointException) as err:  # DCP's collective error is a BaseException
        raise CheckpointError(
            f"writing model/optimizer shards into {dcp_dir} failed ({err}); the previous checkpoint, if any, "
            "is untouched"
        ) from err


def _state_for(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """The sharded state DCP saves and loads into: views of the live parameters, no copies."""
    if optimizer is None:
        return {MODEL_KEY: get_model_state_dict(model, options=STATE_DICT_OPTIONS)}
    model_state, optim_state = get_state_dict(model, optimizer, options=STATE_DICT_OPTIONS)
    return {MODEL_KEY: model_state, OPTIM_KEY: optim_state}


def _agree_on_staging_directory(target: Path) -> Path:
    """Rank 0 picks ``.<name>.tmp-<nonce>``, checks the target can be replaced and creates the folders."""
    decision: list[Any] = [None]
    if _rank() == 0:
        try:
            _refuse_foreign_directory(target)
            staging = staging_name(target, STAGING_MARK, secrets.token_hex(6))
            (staging / DCP_DIR).mkdir(parents=True)
            (staging / RNG_DIR).mkdir()
            decision = [str(staging)]
        except Exception as err:  # every rank must learn of it, or the others would wait forever
            decision = [CheckpointError(f"cannot start a checkpoint at {target}: {err}")]
    if _distributed():
        dist.broadcast_object_list(decision, src=0)
    if isinstance(decision[0], Exception):
        raise decision[0]
    return Path(decision[0])


def _refuse_foreign_directory(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} exists and is a file; choose another checkpoint directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise CheckpointError(
            f"{target} exists, is not empty and is not a galvatron_hf checkpoint (no {MANIFEST_NAME}); it "
            "would be replaced, so choose another directory or remove it yourself"
        )


def _write_rank_rng(staging: Path) -> None:
    _atomic_torch_save(_capture_rng(), staging / RNG_DIR / _rng_file_name(_rank()))


def _rng_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def _write_rank0_files(staging: Path, model: nn.Module, lr_scheduler: Any, plan: Plan | None) -> None:
    if lr_scheduler is not None:
        _atomic_torch_save(lr_scheduler.state_dict(), staging / SCHEDULER_NAME)
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


def hf_class_name(model: nn.Module) -> str:
    """The HF class of a possibly wrapped model (FSDP2 turns ``LlamaForCausalLM`` into a subclass)."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers."):
            return cls.__name__
    return next(cls.__name__ for cls in type(model).__mro__ if not cls.__name__.startswith("FSDP"))


def _manifest(step: int, extra: dict[str, Any], has_optimizer: bool, has_scheduler: bool, model: nn.Module) -> dict:
    import transformers

    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "world_size": _world_size(),
        "extra": extra,
        "has_optimizer": has_optimizer,
        "has_scheduler": has_scheduler,
        "model_class": hf_class_name(model),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def _publish(staging: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Seal the staged checkpoint with its manifest, then swap it into place; the old one goes last."""
    _atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    _fsync_directory(staging)
    nonce = staging.name.rsplit(STAGING_MARK, 1)[1]
    aside = staging_name(target, ASIDE_MARK, nonce)
    if target.is_dir() and any(target.iterdir()):
        os.rename(target, aside)  # from here until the next rename, load_checkpoint can finish the swap
    elif target.is_dir():
        target.rmdir()
    os.rename(staging, target)
    _fsync_directory(target.parent)
    _remove_leftovers(target)


def staging_name(target: Path, mark: str, nonce: str) -> Path:
    """``.<name>.tmp-<nonce>`` beside the target: hidden, so HF Trainer's ``checkpoint-*`` globs (rotation,
    last-checkpoint search) never take a half-written or replaced checkpoint for a real one."""
    return target.with_name(f".{target.name}{mark}{nonce}")


def _siblings(target: Path, mark: str) -> list[Path]:
    return list(target.parent.glob(f".{glob.escape(target.name)}{mark}*"))


def _remove_leftovers(target: Path) -> None:
    """Delete the replaced checkpoint and staging folders of saves that crashed, now that target is good."""
    for leftover in _siblings(target, ASIDE_MARK) + _siblings(target, STAGING_MARK):
        shutil.rmtree(leftover, ignore_errors=True)


# ===== load ===============================================================================================


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
    path = _prepare_for_load(Path(directory).absolute())
    manifest = read_manifest(path)
    if optimizer is not None and not manifest.get("has_optimizer", False):
        raise CheckpointError(f"{path} was saved without optimizer state; pass optimizer=None to load the model")
    _dcp_load(path, model, optimizer)
    scheduler_restored = _load_scheduler(path, lr_scheduler)
    saved_plan = Plan.load(path / PLAN_NAME) if (path / PLAN_NAME).is_file() else None
    rng = _restore_rng(path, manifest, saved_plan, plan) if restore_rng else "none"
    return CheckpointState(
        directory=path,
        step=int(manifest["step"]),
        extra=dict(manifest.get("extra", {})),
        plan=saved_plan,
        saved_world_size=int(manifest["world_size"]),
        rng=rng,
        scheduler_restored=scheduler_restored,
    )


def _prepare_for_load(path: Path) -> Path:
    """Rank 0 finishes a swap a crash interrupted; then every rank checks the checkpoint is complete."""
    outcome: list[Any] = [None]
    if _rank() == 0:
        try:
            recover_interrupted_save(path)
        except OSError as err:
            outcome = [CheckpointError(f"cannot finish the interrupted save of {path}: {err}")]
    if _distributed():
        dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return path


def recover_interrupted_save(path: Path) -> bool:
    """If ``path`` is missing because a crash hit between the two renames of a save, put it back.

    A sealed staging folder (it has the manifest) is the newer checkpoint, so it wins over the one that was
    moved aside. Returns True if something was renamed.
    """
    if (path / MANIFEST_NAME).is_file() or (path.exists() and any(path.iterdir())):
        return False
    candidates = [
        p
        for mark in (STAGING_MARK, ASIDE_MARK)
        for p in sorted(_siblings(path, mark), key=lambda p: p.stat().st_mtime, reverse=True)
        if (p / MANIFEST_NAME).is_file()
    ]
    if not candidates:
        return False
    if path.is_dir():
        path.rmdir()
    os.rename(candidates[0], path)
    _fsync_directory(path.parent)
    return True


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


def _relay_strided_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """Store strided TP shards (GPT-2's fused c_attn) contiguously, as the model's state-dict hook does for the
    parameter itself: DCP rejects a strided shard ("overlapping chunks"). Returns the originals (key -> DTensor)
    so a load can put the values back into the optimizer's own layout."""
    optim_state = state.get(OPTIM_KEY, {})
    originals = {key: value for key, value in optim_state.items() if is_strided(value)}
    for key, value in originals.items():
        optim_state[key] = to_contiguous(value)
    return originals


def _restore_strided_optimizer_state(state: dict[str, Any], originals: dict[str, Any]) -> None:
    optim_state = state[OPTIM_KEY]
    for key, original in originals.items():
        optim_state[key] = optim_state[key].redistribute(original.device_mesh, original.placements)


def _dcp_load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    dcp_dir = path / DCP_DIR
    state = _state_for(model, optimizer)
    strided = _relay_strided_optimizer_state(state)
    wanted = {f"{group}.{key}": (group, key) for group, entries in state.items() for key in entries}
    names: dict[str, str | None] = {}
    problem: CheckpointError | None = None
    try:
        names = resolve_stored_names(wanted, stored_keys(dcp_dir), tied_weight_sources(model))
        missing = [name for name, stored in names.items() if stored is None]
        if missing:
            problem = CheckpointError(
                f"{dcp_dir} lacks {len(missing)} entries this model/optimizer needs, e.g. {missing[:6]}; was "
                "it saved from another model or optimizer?"
            )
    except CheckpointError as err:
        problem = err
    raise_on_every_rank_if_any(problem, CheckpointError)  # a stage may lack what others have: none may hang
    try:
        _load_by_stored_names(dcp_dir, state, wanted, names)
    except (Exception, CheckpointException) as err:
        raise CheckpointError(
            f"reading model/optimizer shards from {dcp_dir} failed (corrupt or truncated?): {err}"
        ) from err
    if optimizer is None:
        set_model_state_dict(model, state[MODEL_KEY], options=STATE_DICT_OPTIONS)
    else:
        _restore_strided_optimizer_state(state, strided)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state[MODEL_KEY],
            optim_state_dict=state[OPTIM_KEY],
            options=STATE_DICT_OPTIONS,
        )


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
    for index in range(_max_over_ranks(len(passes))):
        mapping = passes[index] if index < len(passes) else {}
        batch = {stored: state[wanted[name][0]][wanted[name][1]] for stored, name in mapping.items()}
        with single_process_dcp_is_intended():
            dcp.load(batch, storage_reader=dcp.FileSystemReader(str(dcp_dir)), no_dist=not _distributed())
        for stored, name in mapping.items():  # non-tensor entries are replaced, not filled in place
            group, key = wanted[name]
            state[group][key] = batch[stored]


def _max_over_ranks(value: int) -> int:
    if not _distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    count = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())


def stored_keys(dcp_dir: Path) -> set[str]:
    """Names of everything in a DCP checkpoint (``model.<fqn>``, ``optim.state.<fqn>.<name>``, ...)."""
    try:
        metadata = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    except Exception as err:
        raise CheckpointError(f"cannot read {dcp_dir / '.metadata'} (missing or corrupt): {err}") from err
    return set(metadata.state_dict_metadata)


def _load_scheduler(path: Path, lr_scheduler: Any) -> bool:
    if lr_scheduler is None:
        return False
    scheduler_file = path / SCHEDULER_NAME
    if not scheduler_file.is_file():
        raise CheckpointError(f"{path} has no scheduler state ({SCHEDULER_NAME}); pass lr_scheduler=None")
    lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
    return True


# ===== RNG ================================================================================================


def _capture_rng() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray: store it as a tensor so the file loads with weights_only=True
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device
    return state


def _apply_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _restore_rng(path: Path, manifest: dict[str, Any], saved_plan: Plan | None, plan: Plan | None) -> str:
    same_layout = manifest["world_size"] == _world_size() and (
        saved_plan is None or plan is None or _layout(saved_plan) == _layout(plan)
    )
    source_rank = _rank() if same_layout else 0
    rng_file = path / RNG_DIR / _rng_file_name(source_rank)
    if not rng_file.is_file():
        raise CheckpointError(f"{path} is incomplete: {rng_file} is missing (pass restore_rng=False to skip RNG)")
    _apply_rng(torch.load(rng_file, weights_only=True))
    return "per-rank" if same_layout else "rank0"


def _layout(plan: Plan) -> tuple:
    return (plan.world_size, plan.pp, tuple(plan.layers), plan.vocab)


# ===== export to a Hugging Face directory ====================================================================


def export_to_hf(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: Any = None,
    model_class: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
) -> Path:
    """Write ``out_dir`` so that ``AutoModel*.from_pretrained(out_dir)`` gives the trained model.

    Offline, one process, CPU: DCP reassembles full tensors from the shards of any layout into a model built
    from the checkpoint's config.json (or ``config``, a config object or a directory holding one).
    """
    path = Path(checkpoint_dir).absolute()
    recover_interrupted_save(path)
    read_manifest(path)
    hf_config = _export_config(path, config)
    model = build_empty_model(hf_config, model_class)
    load_full_weights(path, model)
    if dtype is not None:
        model = model.to(dtype)
    out = Path(out_dir)
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    _copy_tokenizer_files(path, out)
    return out


def _export_config(path: Path, config: Any) -> Any:
    from transformers import AutoConfig

    if config is None:
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{path} has no {CONFIG_NAME} (the model had no HF config when saved); pass the architecture "
                "with --config / --model_name_or_path"
            )
        return AutoConfig.from_pretrained(str(path))
    if isinstance(config, (str, os.PathLike)):
        return AutoConfig.from_pretrained(str(config))
    return config


def build_empty_model(config: Any, model_class: str | None = None) -> nn.Module:
    """The HF model for ``config`` on CPU, without spending time on random initialisation.

    Built in ``config.dtype`` like ``from_pretrained`` would (``export_to_hf(dtype=...)`` casts afterwards).
    """
    import transformers

    name = model_class or (config.architectures or [None])[0]
    if not name:
        raise CheckpointError("the config names no architecture; pass --model_class (e.g. LlamaForCausalLM)")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise CheckpointError(f"transformers has no class {name!r}; pass --model_class with an existing one")
    with torch.device("meta"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
    model = model.to_empty(device="cpu")
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty gives each tied name its own tensor; tie them again
    return model.eval()


def load_full_weights(path: Path, model: nn.Module) -> None:
    """Read every weight of a checkpoint into a plain (unsharded) model, without a process group."""
    dcp_dir = path / DCP_DIR
    stored = {key[len(MODEL_KEY) + 1 :] for key in stored_keys(dcp_dir) if key.startswith(MODEL_KEY + ".")}
    state = model.state_dict()
    ties = tied_weight_sources(model)
    missing = [key for key in state if key not in stored and key not in ties]
    if missing:
        raise CheckpointError(
            f"{dcp_dir} lacks weights for {len(missing)} keys of {type(model).__name__}, e.g. {missing[:6]}; "
            "is the config the one the model was trained with?"
        )
    to_load = {key: value for key, value in state.items() if key in stored}
    with single_process_dcp_is_intended():
        dcp.load({MODEL_KEY: to_load}, storage_reader=dcp.FileSystemReader(str(dcp_dir)), no_dist=True)
    model.load_state_dict(to_load, strict=False)
    _fill_tie_targets(model, stored, ties)


def _fill_tie_targets(model: nn.Module, stored: set[str], ties: dict[str, str]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for target, source in ties.items():
            if target not in stored and target in params and source in params:
                if params[target].data_ptr() != params[source].data_ptr():
                    params[target].copy_(params[source])


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


def _copy_tokenizer_files(path: Path, out: Path) -> None:
    """A trainer may store the tokenizer beside the checkpoint; the exported model then ships with it."""
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            shutil.copy2(path / name, out / name)


# ===== small helpers ==========================================================================================


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _checked_on_all_ranks(action: Callable[[], None], what: str, *, only_rank0: bool = False) -> None:
    """Run ``action`` (on each rank, or on rank 0 only); if it fails anywhere, raise on every rank.

    The agreement is a collective, so it also orders the save's phases: no rank goes on before all are done.
    """
    error: BaseException | None = None
    if not only_rank0 or _rank() == 0:
        try:
            action()
        except Exception as err:
            error = err
    if _any_rank_failed(error is not None):
        raise CheckpointError(f"{what} failed: {error or 'see the failing rank'}") from error


def _any_rank_failed(failed: bool) -> bool:
    return _max_over_ranks(1 if failed else 0) > 0  # a collective: doubles as the barrier between phases


def _require_json(value: Any, name: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{name} must be JSON data (numbers, strings, lists, dicts): {err}") from err


def _atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
