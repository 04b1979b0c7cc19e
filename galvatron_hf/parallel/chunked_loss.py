"""A causal-LM training loss that never holds the whole batch's logits: cross-entropy token chunk by chunk.

The plain HF head computes ``logits = lm_head(hidden)`` for every token, upcasts them to fp32 and keeps them
for backward: for a 32k vocabulary that is ``tokens x 32000 x (2 + 4 + 4)`` bytes at the step's peak, more
than a whole transformer block's activations. Here the head and the loss run on ``chunk`` tokens at a time
under non-reentrant activation checkpointing, so only one chunk's logits exist at once (in forward and again,
recomputed, in backward); the price is one extra head matmul per step.

It runs on any device (Liger's fused linear cross-entropy does the same without the recomputation, on CUDA
only: ``kernels.py`` prefers it when asked). The model's own forward is kept for evaluation and for calls
without labels; the chunked path replaces only the training forward of a causal LM whose loss is exactly
``cross_entropy(lm_head(base_model(...)), shifted labels)`` (families with ``Family.plain_causal_head``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.constants import IGNORE_INDEX

_ALTERING_CONFIG = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class ChunkedLossError(ValueError):
    """The chunked loss cannot replace this model's head; the message names what to change."""


def chunk_tokens_for(hidden_size: int, vocab_size: int, tokens: int) -> int:
    """Tokens per chunk so that one chunk's logits are about the size of the hidden states (Liger's rule)."""
    return max(1, math.ceil(tokens / math.ceil(vocab_size / hidden_size)))


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor):
    logits = F.linear(hidden, weight, bias).float()  # fp32 as HF's loss upcasts
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    head: nn.Linear,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """HF's causal-LM loss of ``head(hidden)`` against ``labels`` (shifted by one), chunk by chunk.

    The mean over label tokens, or the sum over ``num_items_in_batch`` when given (HF's convention for
    gradient accumulation). A chunk without label tokens adds zero; a batch without any gives 0, not NaN.
    """
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_tokens or chunk_tokens_for(flat.shape[-1], head.weight.shape[0], flat.shape[0])
    total = flat.new_zeros((), dtype=torch.float32)
    for part, part_labels in zip(flat.split(chunk), shifted.split(chunk)):
        total = total + checkpoint(_chunk_loss_sum, part, head.weight, head.bias, part_labels, use_reentrant=False)
    if num_items_in_batch is None:
        num_items_in_batch = (shifted != IGNORE_INDEX).sum().clamp(min=1)
    return total / num_items_in_batch


def fused_head_obstacle(spec: ModelSpec, vocab_tp: int, pp: int) -> str | None:
    """Why a head without materialised logits (chunked, or Liger's fused one) cannot replace this model's
    loss under a plan with this vocabulary TP degree and pipeline depth; None when it can."""
    if not spec.architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return f"{spec.architecture} is not a causal LM (only causal-LM heads are replaced)"
    if vocab_tp > 1:
        return (
            f"the head is split over the vocabulary (vocab tp={vocab_tp}): its logits are materialised per "
            "vocabulary shard and gathered; a plan with vocab tp = 1 keeps the whole head weight on each rank"
        )
    if pp > 1:
        return "with pipeline parallelism the last stage computes the loss from its micro-batch's logits"
    return None


def check_chunked_loss(model: nn.Module, spec: ModelSpec, vocab_tp: int, pp: int) -> None:
    """Raise ``ChunkedLossError`` where the chunked loss would not compute the model's own loss."""
    obstacle = fused_head_obstacle(spec, vocab_tp, pp)
    if obstacle:
        raise ChunkedLossError(f"chunked_loss cannot apply: {obstacle}; leave chunked_loss off")
    from galvatron_hf.parallel.families import family_for

    if not family_for(spec).plain_causal_head:
        raise ChunkedLossError(
            f"the {spec.family} family does not declare a plain causal-LM head (Family.plain_causal_head in "
            "parallel/families/): leave chunked_loss off"
        )
    config = getattr(model, "config", None)
    altered = [name for name in _ALTERING_CONFIG if getattr(config, name, None) not in (None, 1, 1.0)]
    if altered:
        raise ChunkedLossError(f"{spec.architecture} rescales its logits ({altered}): leave chunked_loss off")


def install_chunked_loss(model: nn.Module, spec: ModelSpec, vocab_tp: int = 1, pp: int = 1) -> None:
    """Route ``model``'s training forward (labels given, ``model.training``) through the chunked loss.

    Runs before sharding; the new forward runs inside the root module's call, so FSDP2 has gathered the
    head weight when it is read.
    """
    check_chunked_loss(model, spec, vocab_tp, pp)
    original = model.forward
    model.forward = functools.wraps(original)(functools.partial(_chunked_forward, model, original))
    model._galvatron_chunked_loss = True


def _chunked_forward(model: nn.Module, original, *args, labels=None, num_items_in_batch=None, **kwargs):
    if args or labels is None or not model.training:
        return original(*args, labels=labels, **_with_items(kwargs, num_items_in_batch))
    from transformers.modeling_outputs import CausalLMOutputWithPast

    kwargs.pop("logits_to_keep", None)
    outputs = getattr(model, model.base_model_prefix)(**kwargs)
    loss = chunked_causal_lm_loss(outputs.last_hidden_state, model.get_output_embeddings(), labels, num_items_in_batch)
    return CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        past_key_values=getattr(outputs, "past_key_values", None),
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
    )


def _with_items(kwargs: dict, num_items_in_batch) -> dict:
    return kwargs if num_items_in_batch is None else {**kwargs, "num_items_in_batch": num_items_in_batch}
