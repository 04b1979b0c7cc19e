"""Offline config resolution: bundled configs (package data), local config.json files and directories.

Nothing here downloads: the bundled JSON files are copies of the public ``config.json`` of well-known
checkpoints, so a plan can be searched for them on a laptop without the hub.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UnknownModelError

CONFIG_PACKAGE = "galvatron_hf.adapters.configs"
INDEX_FILE = "index.json"


@lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    """Bundled model name -> JSON file name inside the configs package."""
    text = resources.files(CONFIG_PACKAGE).joinpath(INDEX_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def bundled_models() -> list[str]:
    """Names ``describe_model`` and ``load_config`` accept without any file on disk."""
    return sorted(_index())


def bundled_config_dict(name: str) -> dict[str, Any]:
    file_name = _index()[name]
    return json.loads(resources.files(CONFIG_PACKAGE).joinpath(file_name).read_text(encoding="utf-8"))


def config_from_dict(values: dict[str, Any], name: str | None = None) -> Any:
    """A transformers config of the right class from a plain dict (it must name its ``model_type``)."""
    from transformers import (
        AutoConfig,  # lazy: importing the adapters stays free of torch
    )

    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ValueError(
            "The config dict has no 'model_type' (e.g. 'llama', 'gpt2', 'bert', 'vit', 't5'); add it, "
            "or pass a transformers PretrainedConfig instead."
        )
    for key in ("transformers_version", "_name_or_path"):
        values.pop(key, None)
    config = AutoConfig.for_model(model_type, **values)
    if name:
        config.name_or_path = name
    return config


def _config_from_path(path: Path) -> Any:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Directory {str(path)!r} holds no config.json: pass the directory written by save_pretrained, "
                "or the path of a config.json."
            )
        path = path / "config.json"
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    return config_from_dict(values, name=str(path.parent if path.name == "config.json" else path))


def load_config(name_or_path: str | os.PathLike) -> Any:
    """A ``transformers.PretrainedConfig`` from a config.json path, a directory or a bundled name. Offline.

    A local path wins over a bundled name (as in ``from_pretrained``): a fine-tuned ``./gpt2`` directory
    describes itself, not the bundled gpt2.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _config_from_path(path)
    if name in _index():
        return config_from_dict(bundled_config_dict(name), name=name)
    raise UnknownModelError(name, bundled_models())
