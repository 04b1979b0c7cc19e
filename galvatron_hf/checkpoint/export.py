"""Export a training checkpoint to a Hugging Face directory that ``from_pretrained`` loads.

Offline, one process, CPU, no process group: DCP reassembles full tensors from the shards of whichever layout
saved the checkpoint into an empty model built from the checkpoint's config.json, and ``save_pretrained``
writes it. The export needs host memory for one full copy of the model; training never does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from galvatron_hf.checkpoint.atomic import describe_os_error, recover_interrupted_save
from galvatron_hf.checkpoint.collective import single_process_dcp_is_intended
from galvatron_hf.checkpoint.hf_weights import tied_weight_sources
from galvatron_hf.checkpoint.manifest import CONFIG_NAME, DCP_DIR, FROZEN_KEY, CheckpointError, read_manifest
from galvatron_hf.checkpoint.sharded_state import MODEL_KEY, stored_keys

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


def export_to_hf(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: Any = None,
    model_class: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir`` so that ``AutoModel*.from_pretrained(out_dir)`` gives the trained model.

    Offline, one process, CPU: DCP reassembles full tensors from the shards of any layout into a model built
    from the checkpoint's config.json (or ``config``, a config object or a directory holding one). A file at
    ``out_dir``, or a non-empty directory without ``overwrite``, is refused before anything is read.
    """
    path = Path(checkpoint_dir).absolute()
    out = Path(out_dir)
    check_export_target(out, overwrite)
    recover_interrupted_save(path)
    if FROZEN_KEY in read_manifest(path):
        raise CheckpointError(
            f"{path} holds the trainable parameters only (its frozen base came from the model it trained, "
            "checkpoint/frozen.py), so it cannot be exported alone: resume it into the model built from the same "
            "base and call trainer.save_model(dir) (a PEFT model writes its adapter, PeftModel.from_pretrained "
            "loads it onto the base)"
        )
    hf_config = _export_config(path, config)
    model = build_empty_model(hf_config, model_class)
    load_full_weights(path, model)
    if dtype is not None:
        model = model.to(dtype)
    try:
        model.save_pretrained(str(out), max_shard_size=max_shard_size)
        _copy_tokenizer_files(path, out)
    except OSError as err:
        raise CheckpointError(f"writing the exported model into {out} failed: {describe_os_error(err, out)}") from err
    return out


def check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse a file, and a non-empty directory unless ``overwrite`` (its model files would be replaced)."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file; give the export a directory (it writes config.json and weights)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{out} exists and is not empty; its config.json and weights would be replaced. Choose another "
            "directory, or pass --overwrite (overwrite=True) to replace them"
        )


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
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise CheckpointError(f"transformers has no model class {name!r}; pass --model_class with an existing one")
    expected = getattr(cls, "config_class", None)
    if expected is not None and not isinstance(config, expected):
        raise CheckpointError(
            f"{name} is built from a {expected.__name__}, and the checkpoint's config is a "
            f"{type(config).__name__} ({getattr(config, 'model_type', '?')}); pass a --model_class of that family "
            f"(the config's architectures: {config.architectures})"
        )
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
    try:
        with single_process_dcp_is_intended():
            dcp.load({MODEL_KEY: to_load}, storage_reader=dcp.FileSystemReader(str(dcp_dir)), no_dist=True)
    except (Exception, CheckpointException) as err:  # DCP wraps a reader's error in a BaseException
        raise CheckpointError(f"reading the weights from {dcp_dir} failed (corrupt or truncated?): {err}") from err
    model.load_state_dict(to_load, strict=False)
    _fill_tie_targets(model, stored, ties)


def _fill_tie_targets(model: nn.Module, stored: set[str], ties: dict[str, str]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for target, source in ties.items():
            if target not in stored and target in params and source in params:
                if params[target].data_ptr() != params[source].data_ptr():
                    params[target].copy_(params[source])


def _copy_tokenizer_files(path: Path, out: Path) -> None:
    """A trainer may store the tokenizer beside the checkpoint; the exported model then ships with it."""
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            shutil.copy2(path / name, out / name)
