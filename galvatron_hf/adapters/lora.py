"""The spec of a LoRA fine-tune planned from a config (no weights): ``galvatron-hf search --lora_rank``.

Built as PEFT builds it, on the meta device; :mod:`.trainable` then counts what PEFT added and froze.
"""

from __future__ import annotations

from typing import Any

from . import describe_model
from .hub import load_config
from .spec import ModelSpec


def describe_lora(
    source: Any,
    rank: int,
    target_modules: list[str] | str | None = None,
    seq_len: int | None = None,
    decoder_seq_len: int | None = None,
) -> ModelSpec:
    """The spec of ``source`` (a config, a bundled name, a path) fine-tuned with LoRA of ``rank`` on
    ``target_modules`` (PEFT's default for the model type when None; ``"all-linear"`` for every Linear).

    Built as PEFT builds it: the HF model on the meta device (no memory, no weights), ``get_peft_model``, then
    ``describe_trainable`` counts what PEFT added and froze. Needs torch, transformers and peft
    (``pip install galvatron-hf[peft]``); ``galvatron-hf search --lora_rank`` calls it.
    """
    if rank < 1:
        raise ValueError(f"--lora_rank must be a positive rank, not {rank}")
    try:
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError(f"LoRA planning builds the PEFT model: pip install galvatron-hf[peft] ({err})") from err
    config = source if hasattr(source, "model_type") else load_config(source)
    plain = describe_model(config, seq_len=seq_len, decoder_seq_len=decoder_seq_len)
    with torch.device("meta"):
        model = getattr(transformers, plain.architecture)(config)
        lora = get_peft_model(model, LoraConfig(r=rank, target_modules=target_modules))
    return describe_model(lora, seq_len=seq_len, decoder_seq_len=decoder_seq_len)
