"""What ``GalvatronTrainer``'s constructor reads from its arguments before the Trainer exists.

The model is sharded before ``Trainer.__init__`` runs, and the Trainer builds its optimizer from the sharded
parameters. Arguments that would bypass the sharding (``model_init``, an optimizer built on the unsharded
parameters) are refused with the fix. The plan is priced for a sequence length: ``seq_length`` when given,
else the first training sample's (and, for an encoder-decoder, its ``decoder_input_ids`` or ``labels``).
A model no adapter describes trains with plain data parallelism (its ``_no_split_modules`` sharded one by
one, as accelerate's FSDP wraps them); the options that need a described model are refused for it.
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


PLAIN_ONLY_NOTE = (
    "the search, TP, PP and activation checkpointing need a supported model family (docs/adapters.md); without "
    "those options any PreTrainedModel trains with plain data parallelism (ddp, zero2, zero3)"
)


def describe_for_training(model: nn.Module, args: Any, seq_len: int | None, decoder_seq_len: int | None):
    """The model's ModelSpec; for a model no adapter describes, asked for plain data parallelism only, a
    generic one (:func:`whole_model_spec`); asked for more, the adapters' refusal with what works."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.adapters.errors import UnsupportedArchitectureError

    try:
        return describe_model(model, seq_len=seq_len, decoder_seq_len=decoder_seq_len)
    except UnsupportedArchitectureError as err:
        asked = plan_options_beyond_data_parallel(args)
        if asked:
            raise ValueError(f"{err}\n{', '.join(asked)} given: {PLAIN_ONLY_NOTE}") from err
        return whole_model_spec(model, seq_len or getattr(model.config, "max_position_embeddings", 0) or 512)


def plan_options_beyond_data_parallel(args: Any) -> list[str]:
    """The plan options given that need a described model: search, plan files, pp, tp, checkpointing, ..."""
    given = ["--auto_parallel"] if getattr(args, "auto_parallel", False) else []
    given += ["--galvatron_plan"] if getattr(args, "galvatron_plan", None) else []
    given += ["--checkpoint"] if getattr(args, "checkpoint", False) else []
    for name in ("pp", "tp"):
        if (getattr(args, name, None) or 1) > 1:
            given.append(f"--{name}")
    return given + (["--profile"] if getattr(args, "profile", None) else [])


def whole_model_spec(model: nn.Module, seq_len: int):
    """A ModelSpec for plain data parallelism of a model no adapter describes (as accelerate's FSDP would wrap
    it): its blocks are the modules the model declares unsplittable (``_no_split_modules``), sharded one by
    one; the rest (embeddings, norms, head) belongs to the root. FLOPs are counted as 2 x parameters per
    token; activations are not modelled, so the printed prediction is rough (the family is "generic")."""
    from galvatron_hf.adapters.spec import ActivationModel, LayerSpec, ModelSpec

    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0) or 1)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    roots = block_roots(model)
    owned = {root: sum(p.numel() for p in model.get_submodule(root).parameters()) for root in roots}
    rest = sum(p.numel() for p in model.parameters()) - sum(owned.values())
    blocks = tuple(
        LayerSpec(
            name=f"decoder_block.{index}",
            kind="decoder_block",
            root=root,
            modules=("",),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=max(1, hidden // heads),
            ffn_size=4 * hidden,
            seq_len=seq_len,
            params=owned[root],
            forward_flops=2.0 * owned[root] * seq_len,
            activation=ActivationModel(replicated=2 * hidden),
        )
        for index, root in enumerate(roots)
    )
    embedding = LayerSpec(
        name="embedding",
        kind="embedding",
        root="",
        modules=(),
        hidden_size=hidden,
        seq_len=seq_len,
        vocab_size=int(getattr(config, "vocab_size", 0) or 0),
        params=rest,
        forward_flops=2.0 * rest * seq_len,
    )
    return ModelSpec(
        name=getattr(config, "name_or_path", "") or config.model_type,
        model_type=config.model_type,
        family="generic",
        architecture=type(model).__name__,
        seq_len=seq_len,
        hidden_size=hidden,
        vocab_size=embedding.vocab_size,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        layers=(embedding, *blocks),
        config=config.to_dict(),
    )


def block_roots(model: nn.Module) -> list[str]:
    """Paths of the outermost modules whose class the model declares unsplittable, in order."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    roots: list[str] = []
    for name, module in model.named_modules():
        if type(module).__name__ in kinds and not any(name.startswith(f"{root}.") for root in roots):
            roots.append(name)
    if not roots:
        raise ValueError(
            f"{type(model).__name__} declares no unsplittable blocks (_no_split_modules) to shard one by one and "
            "no galvatron_hf adapter describes it; train it with transformers.Trainer, or add an adapter "
            "(docs/adapters.md)"
        )
    return roots
