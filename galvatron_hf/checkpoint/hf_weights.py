"""Load a Hugging Face ``from_pretrained`` directory straight into a parallelised model.

Why not ``from_pretrained`` then ``parallelize``: that materialises the full model on every rank. Here each
rank reads only the tensors it holds and, for sharded parameters (DTensor from TP or FSDP2), only the slices
of them it holds: ``torch.distributed.checkpoint`` (DCP) computes, from each parameter's placements, which
part of which tensor a rank needs, and :class:`SafetensorsSliceReader` serves those parts with safetensors'
lazy ``get_slice``. The reader is ours (not ``HuggingFaceStorageReader``) because the torch releases we run
on differ there: some versions deserialise whole files on every rank, some need fsspec.

The model may be a pipeline stage (the same HF model object with the other stages' blocks removed and names
unchanged): only the keys present in the stage are read. Tied weights (``lm_head.weight`` tied to the input
embedding, T5's ``shared``) are read from the tensor the file stores, whichever copy the stage holds.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from galvatron_hf.checkpoint.collective import (
    distributed,
    raise_on_every_rank_if_any,
    single_process_dcp_is_intended,
)
from galvatron_hf.checkpoint.progress import LoadProgressPlanner

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class PretrainedWeightsError(ValueError):
    """The pretrained directory cannot fill the model; the message names the directory and the fix."""


@dataclass(frozen=True)
class StoredTensor:
    """Where one model key's weights live: a safetensors file and the key inside it."""

    file: str
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


# ----- the files of an HF directory ----------------------------------------------------------------------


def safetensors_files(pretrained_dir: str | os.PathLike) -> list[Path]:
    """The safetensors files of a ``save_pretrained`` directory, sharded (index JSON) or single-file."""
    directory = Path(pretrained_dir)
    if not directory.is_dir():
        raise PretrainedWeightsError(f"no pretrained directory at {directory}")
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise PretrainedWeightsError(f"{index} is not a valid safetensors index ({err})") from err
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise PretrainedWeightsError(f"{index} lists shard files that do not exist: {missing}")
        return files
    single = directory / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise PretrainedWeightsError(
        f"{directory} holds neither {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}; galvatron_hf reads "
        "safetensors only: re-save the model with `model.save_pretrained(dir)` (safetensors is the default)"
    )


def stored_tensors(files: Iterable[Path]) -> dict[str, StoredTensor]:
    """Read the headers (never the data) of the files: key -> file, shape, dtype."""
    from safetensors import safe_open

    stored: dict[str, StoredTensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                stored[key] = StoredTensor(
                    file=str(path),
                    key=key,
                    shape=tuple(tensor_slice.get_shape()),
                    dtype=_safetensors_dtype(tensor_slice.get_dtype()),
                )
    return stored


def _safetensors_dtype(name: str) -> torch.dtype:
    dtypes = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool,
    }  # fmt: skip
    if name not in dtypes:
        raise PretrainedWeightsError(f"safetensors dtype {name} is not supported")
    return dtypes[name]


# ----- model key -> stored key ------------------------------------------------------------------------------


def tied_weight_sources(model: nn.Module) -> dict[str, str]:
    """``{target: source}`` for the model's tied parameters (``lm_head.weight`` -> embedding weight).

    HF declares ties on the model (``all_tied_weights_keys`` in transformers 5, filled only when the config
    ties them); parameters that are one object in this model count as tied as well. A pipeline stage keeps
    the declaration even when it holds only one side of a tie, which is why we ask HF and not the tensors.
    """
    declared = getattr(model, "all_tied_weights_keys", None)
    if declared is None and hasattr(model, "get_expanded_tied_weights_keys"):
        declared = model.get_expanded_tied_weights_keys(all_submodels=True)
    ties = dict(declared or {})
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name and name != first_name[id(param)]:
            ties.setdefault(name, first_name[id(param)])
        first_name.setdefault(id(param), name)
    return ties


def match_model_keys(
    model_keys: Iterable[str], stored: dict[str, StoredTensor], model: nn.Module
) -> tuple[dict[str, StoredTensor], list[str]]:
    """Map each model key to its stored tensor; return the map and the keys that have none.

    Tries, in order: the same name; the name with or without the base-model prefix (a ``LlamaModel`` file
    loaded into ``LlamaForCausalLM`` and back, as ``from_pretrained`` allows); the tie source's name.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    ties = tied_weight_sources(model)

    def lookup(key: str, seen: frozenset[str] = frozenset()) -> StoredTensor | None:
        for candidate in _prefix_variants(key, prefix):
            if candidate in stored:
                return stored[candidate]
        source = ties.get(key)
        if source is not None and source not in seen:
            return lookup(source, seen | {key})
        return None

    found, missing = {}, []
    for key in model_keys:
        hit = lookup(key)
        if hit is None:
            missing.append(key)
        else:
            found[key] = hit
    return found, missing


def _prefix_variants(key: str, prefix: str) -> list[str]:
    variants = [key]
    if prefix:
        if key.startswith(prefix + "."):
            variants.append(key[len(prefix) + 1 :])
        else:
            variants.append(f"{prefix}.{key}")
    return variants


# ----- a DCP storage reader over safetensors files -------------------------------------------------------


class SafetensorsSliceReader(StorageReader):
    """Serve DCP read requests from plain HF safetensors files, reading only the requested slices.

    ``tensors`` maps the names DCP sees (the model's keys) to the stored tensors, so renamed and tied keys
    need no copy. Metadata comes from that map, not from disk: every rank builds the same one.
    """

    def __init__(self, tensors: dict[str, StoredTensor]) -> None:
        super().__init__()
        self.tensors = tensors

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        state_dict_metadata: dict[str, Any] = {}
        storage_data: dict[MetadataIndex, StoredTensor] = {}
        for name, tensor in self.tensors.items():
            zeros = torch.Size([0] * len(tensor.shape))
            state_dict_metadata[name] = TensorStorageMetadata(
                properties=TensorProperties(dtype=tensor.dtype),
                size=torch.Size(tensor.shape),
                chunks=[ChunkStorageMetadata(offsets=zeros, sizes=torch.Size(tensor.shape))],
            )
            storage_data[MetadataIndex(fqn=name, offset=zeros)] = tensor
        metadata = Metadata(state_dict_metadata=state_dict_metadata, storage_data=storage_data)
        metadata.storage_meta = StorageMeta()
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        from safetensors import safe_open

        by_file: dict[str, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_file[self.tensors[item.storage_index.fqn].file].append(item)
        for file, items in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for item in items:
                    self._read_one(handle, item, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_one(self, handle: Any, item: ReadItem, planner: LoadPlanner) -> None:
        stored = self.tensors[item.storage_index.fqn]
        region = tuple(slice(start, start + length) for start, length in zip(item.storage_offsets, item.lengths))
        data = handle.get_slice(stored.key)[region] if region else handle.get_tensor(stored.key)
        target = planner.resolve_tensor(item).detach()
        if target.shape != data.shape:
            raise PretrainedWeightsError(
                f"{stored.file}: slice of {stored.key} has shape {tuple(data.shape)}, the model expects "
                f"{tuple(target.shape)}"
            )
        target.copy_(data)
        planner.commit_tensor(item, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return False  # never chosen implicitly; always passed as storage_reader


# ----- the public entry point --------------------------------------------------------------------------


def load_hf_pretrained(model: nn.Module, pretrained_dir: str | os.PathLike, *, strict: bool = True) -> list[str]:
    """Fill ``model`` (plain, TP/FSDP2-sharded or a pipeline stage) from an HF ``save_pretrained`` directory.

    Collective when a process group is initialised: every rank calls it with its own (part of the) model.
    Each rank reads only the safetensors slices its parameters and persistent buffers hold; nothing is
    gathered. The model must be materialised (``to_empty`` after a meta-device build is fine: every stored
    tensor is overwritten). Non-persistent buffers (rotary ``inv_freq``) are not in HF files and are left
    as they are.

    Returns the model keys the directory did not provide (empty unless ``strict=False``); with ``strict``
    a missing key raises :class:`PretrainedWeightsError` naming the directory and the keys.
    """
    state_dict = get_model_state_dict(model)
    try:
        _refuse_meta_tensors(state_dict)
        stored = stored_tensors(safetensors_files(pretrained_dir))
        found, missing = match_model_keys(state_dict.keys(), stored, model)
        if missing and strict:
            raise PretrainedWeightsError(
                f"{pretrained_dir} has no weights for {len(missing)} model keys, e.g. {missing[:8]}; is it the "
                f"same architecture? Its keys look like {sorted(stored)[:4]}. Pass strict=False to keep those "
                "at their current values."
            )
        _check_shapes(pretrained_dir, found, state_dict)
        problem = None
    except (PretrainedWeightsError, OSError) as err:
        problem = err
    raise_on_every_rank_if_any(problem, PretrainedWeightsError)
    to_load = {key: state_dict[key] for key in found}
    with single_process_dcp_is_intended():
        dcp_load(
            to_load,
            storage_reader=SafetensorsSliceReader(found),
            planner=LoadProgressPlanner(f"loading weights from {Path(pretrained_dir).name}"),
            no_dist=not distributed(),
        )
    # DCP wrote into the tensors get_model_state_dict returned; set them too in case a wrapper returned copies
    set_model_state_dict(model, to_load, options=_partial_options())
    return missing


def _partial_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(strict=False)


def _refuse_meta_tensors(state_dict: dict[str, Any]) -> None:
    on_meta = [name for name, tensor in state_dict.items() if _is_meta(tensor)]
    if on_meta:
        raise PretrainedWeightsError(
            f"{len(on_meta)} tensors are still on the meta device (e.g. {on_meta[:3]}); materialise the "
            "(parallelised) model first with `model.to_empty(device=...)`, then load"
        )


def _is_meta(tensor: Any) -> bool:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return isinstance(local, torch.Tensor) and local.is_meta


def _check_shapes(pretrained_dir: Any, found: dict[str, StoredTensor], state_dict: dict[str, Any]) -> None:
    wrong = [
        f"{key}: file {stored.shape} vs model {tuple(state_dict[key].shape)}"
        for key, stored in found.items()
        if tuple(state_dict[key].shape) != stored.shape
    ]
    if wrong:
        raise PretrainedWeightsError(
            f"{pretrained_dir} does not match the model's config ({len(wrong)} shapes differ): {wrong[:5]}"
        )
