"""What ``GalvatronTrainer``'s constructor reads from its arguments before the Trainer exists.

The model is sharded before ``Trainer.__init__`` runs, and the Trainer builds its optimizer from the sharded
parameters. Arguments that would bypass the sharding (``model_init``, an optimizer built on the unsharded
parameters) are refused with the fix. The plan is priced for a sequence length: ``seq_length`` when given,
else the first training sample's (and, for an encoder-decoder, its ``decoder_input_ids`` or ``labels``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def refuse_unsupported(model: nn.Module | None, trainer_args: tuple, trainer_kwargs: dict[str, Any]) -> None:
    """Refuse the Trainer arguments that cannot work with a model sharded before the Trainer is built."""
    if model is None:
        raise ValueError("GalvatronTrainer needs the model itself (model_init is not supported: pass model=...)")
    if trainer_kwargs.get("model_init") is not None:
        raise ValueError("GalvatronTrainer does not support model_init: build the model and pass model=...")
    optimizers = trainer_kwargs.get("optimizers", (None, None))
    if optimizers and optimizers[0] is not None:
        raise ValueError(
            "GalvatronTrainer builds the optimizer after sharding the model; pass optimizer_cls_and_kwargs=(cls, "
            "kwargs) or override create_optimizer instead of optimizers=(optimizer, scheduler)"
        )
    if trainer_args:
        raise TypeError("GalvatronTrainer takes (model, args) positionally; pass the other Trainer arguments by name")


def sequence_lengths(seq_length: int | None, dataset: Any, model: nn.Module) -> tuple[int | None, int | None]:
    """(sequence, decoder sequence) lengths to plan for: ``seq_length`` when given, else the first training
    sample's; None where unknown (the adapter's default). The decoder length only for encoder-decoders."""
    first = first_sample(dataset)
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    seq_len = seq_length or sample_length(first.get("input_ids"))
    if not encoder_decoder:
        return seq_len, None
    return seq_len, sample_length(first.get("decoder_input_ids")) or sample_length(first.get("labels"))


def first_sample(dataset: Any) -> dict[str, Any]:
    """The first sample of a map-style dataset of dicts; {} for an iterable (reading it would consume it)."""
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return {}
    try:
        sample = dataset[0]
    except (IndexError, KeyError, TypeError):
        return {}
    return sample if isinstance(sample, dict) else {}


def sample_length(value: Any) -> int | None:
    """The last dimension of a sample's sequence (a list, an array or a tensor); None for a scalar or nothing."""
    if value is None or isinstance(value, (int, float)):
        return None
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[-1]) if len(shape) else None
    return len(value)
