"""Hugging Face configs -> ModelSpec: one adapter per model family.

``describe_model`` is the entry point: it accepts an HF model, a config (object or dict), a bundled hub id or
a local config.json / directory, and returns the :class:`ModelSpec` the planner and the runtime read.
Importing this package does not import torch or transformers; resolving a config imports transformers'
config classes only (no model is built).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import UnknownModelError, UnsupportedArchitectureError
from .hub import bundled_models, config_from_dict, load_config
from .registry import adapter_for, supported_architectures
from .spec import ActivationModel, LayerSpec, ModelSpec, TPAttribute, TPRule, module_path
from .trainable import ParamCounts, base_model, describe_trainable, layer_counts

__all__ = [
    "ActivationModel",
    "LayerSpec",
    "ModelSpec",
    "TPAttribute",
    "TPRule",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "bundled_models",
    "describe_model",
    "load_config",
    "supported_architectures",
]


def _is_model(source: Any) -> bool:
    return hasattr(source, "config") and hasattr(source, "named_parameters")


def _resolve(source: Any) -> tuple[Any, str, str | None]:
    """(config, name, the head class when the source is a model) for every accepted kind of source."""
    if isinstance(source, (str, os.PathLike)):
        config = load_config(source)
        return config, os.fspath(source), None
    if isinstance(source, dict):
        config = config_from_dict(source)
        return config, config.name_or_path or config.model_type, None
    if _is_model(source):
        config = source.config
        return config, config.name_or_path or config.model_type, type(source).__name__
    if hasattr(source, "model_type") and hasattr(source, "to_dict"):
        return source, source.name_or_path or source.model_type, None
    raise TypeError(
        f"describe_model cannot read a {type(source).__name__}: pass an HF PreTrainedModel, a PretrainedConfig, "
        "a config dict, a bundled model name (see bundled_models()), a config.json path or a directory."
    )


def describe_model(
    source: Any,
    seq_len: int | None = None,
    decoder_seq_len: int | None = None,
    architecture: str | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` of ``source``.

    ``architecture`` picks the head (e.g. ``"BertForSequenceClassification"``); by default the model's own
    class, else ``config.architectures[0]`` when the adapter describes it, else the family default.
    ``seq_len`` defaults to min(max position embeddings, 4096) (T5: 512; ViT: fixed by the image size).
    A model's frozen parameters and PEFT adapter weights (a ``PeftModel`` is read through its base model) are
    described too (``LayerSpec.frozen_params``, ``adapters/trainable.py``).
    """
    source = base_model(source)
    config, name, model_class = _resolve(source)
    adapter = adapter_for(config.model_type)
    if architecture and model_class and architecture != model_class:
        raise ValueError(
            f"architecture={architecture!r} but the model passed is a {model_class}; leave architecture unset "
            "(the model's class is used) or pass its config instead of the model."
        )
    head = architecture or model_class
    spec = adapter.describe(config, name, head, seq_len, decoder_seq_len, supported_architectures())
    if model_class:
        counts = _check_module_paths(source, spec)
        spec = describe_trainable(spec, counts)
    return spec


def _check_module_paths(model: Any, spec: ModelSpec) -> dict[str, ParamCounts]:
    """Every module the spec names must exist in the model, and hold the parameters the spec counts (adapter
    weights aside): a mismatch means another transformers layout. Returns each layer's ``ParamCounts``."""
    present = {name for name, _ in model.named_modules()}
    missing = []
    for layer in spec.layers:
        paths = [*layer.modules, *(rule.module for rule in layer.tp_rules)]
        paths += [attribute.module for attribute in layer.tp_attributes]
        full = [module_path(layer.root, path) for path in paths]
        missing += [path for path in full if path not in present]
    import transformers

    if missing:
        raise UnsupportedArchitectureError(
            f"{spec.architecture} as built by transformers {transformers.__version__} (modules "
            f"{', '.join(missing[:5])} not found: the {spec.family} adapter expects another module layout)",
            supported_architectures(),
        )
    counted = layer_counts(model, spec)
    wrong = [f"{layer.name}: spec {layer.params}, model {counted[layer.name].base}" for layer in spec.layers
             if counted[layer.name].base != layer.params]
    if wrong:
        raise ValueError(
            f"The {spec.family} adapter's parameter counts disagree with this {spec.architecture} "
            f"(transformers {transformers.__version__}): {'; '.join(wrong[:4])}. The spec would misprice the "
            "model; report it with the config, or pass the config instead of the model to skip this check."
        )
    return counted
