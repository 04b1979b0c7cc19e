"""What every pipeline stage shares, whatever its family: where it sits, its loss, and the HF calls it makes.

A family's stage forward (``galvatron_hf/parallel/families/<family>.py``) gets the pruned HF model and the
:class:`StageLayout` of its stage, and runs the HF modules the stage holds in the order the HF forward does.
We never copy HF model code: every computation is a call to an HF module (embeddings, blocks, norms, heads) or
an HF mask helper; the helpers here make those calls the same way for every family.

Stage inputs: the first stage takes the model inputs as positional arguments (token ids, pixel values); every
stage takes the batch's masks as keyword arguments (``PipelineStage`` passes ``step`` kwargs to every stage,
chunked per micro-batch), so masks never travel between stages. Between stages travel only tensors the next
stage cannot rebuild (docs/pipeline.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from galvatron_hf.constants import IGNORE_INDEX

# --------------------------------------------------------------------------------------------------------
# Where a stage sits
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TiedParameter:
    """One weight shared by the first and the last stage (tied input embedding and LM head).

    Each of the two stages keeps its own copy under its own HF name; ``PipelineRunner`` adds the two gradients
    together after every step so both copies take the same optimizer update and stay equal.
    """

    first_stage_name: str  # e.g. "model.embed_tokens.weight"
    last_stage_name: str  # e.g. "lm_head.weight"


@dataclass(frozen=True)
class StageLayout:
    """What one pipeline stage holds, as the stage forward and the runner need it."""

    stage: int
    num_stages: int
    family: str
    block_indices: tuple[int, ...]  # indices into spec.blocks held by this stage
    block_roots: tuple[str, ...]  # their module paths ("model.layers.3")
    block_kinds: tuple[str, ...]  # their LayerSpec.kind ("encoder_block", "cross_decoder_block", ...)
    layer_names: tuple[str, ...]  # every spec layer held here ("embedding", "decoder_block.3", "head")
    tied: tuple[TiedParameter, ...] = ()
    model_block_kinds: tuple[str, ...] = ()  # the kind of every block of the model (T5: where the encoder ends)

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1


# --------------------------------------------------------------------------------------------------------
# The loss of the last stage
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """How the last stage turns its output and the labels into a loss, summed over label tokens (or samples).

    ``count`` gives the number of terms HF's mean divides by, so ``loss_sum / count`` over a whole batch equals
    the loss the HF model returns.
    """

    kind: str  # "causal_lm", "token_lm" (masked LM, seq2seq), "classification", "regression"
    num_labels: int = 0

    def loss_sum(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = output.float()
        if self.kind == "causal_lm":
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        if self.kind == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.float().view(-1), reduction="sum")
            return F.mse_loss(logits, labels.float(), reduction="sum")
        if self.kind == "classification" and labels.is_floating_point():  # multi-label: HF's BCE with logits
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
        flat_logits = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat_logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")

    def count(self, labels: torch.Tensor) -> torch.Tensor:
        return label_items(labels, causal=self.kind == "causal_lm", skips_ignored=self.kind != "regression")


def label_items(labels: torch.Tensor, causal: bool, skips_ignored: bool = True) -> torch.Tensor:
    """The number of terms an HF loss averages over, so that a sum of per-item losses divided by it is the
    loss the HF model returns: the label tokens != -100, after the first of each row for a causal LM
    (``causal``: its labels are shifted by one); every label element when the labels are floats (regression,
    multi-label) or the loss does not skip -100 (``skips_ignored`` False: regression on integer labels).

    The one count for every loss the runtime and the trainer weight: micro-batches without a pipeline, the
    last pipeline stage's ``Task``, evaluation steps.
    """
    if labels.is_floating_point() or not skips_ignored:
        return torch.tensor(labels.numel(), device=labels.device)
    if causal and labels.dim() >= 2:
        labels = labels[..., 1:]
    return (labels != IGNORE_INDEX).sum()


def classification_task(config: Any) -> Task:
    """The loss an HF classification head computes, from its config (``problem_type``, ``num_labels``) and, as
    HF decides it on the first forward when ``problem_type`` is unset, the labels' dtype (float: multi-label)."""
    num_labels = int(getattr(config, "num_labels", 0))
    problem = getattr(config, "problem_type", None)
    if problem == "regression" or (problem is None and num_labels == 1):
        return Task("regression", num_labels)
    return Task("classification", num_labels)


def last_token_logits(logits: torch.Tensor, input_ids: torch.Tensor | None, pad_token_id: int | None) -> torch.Tensor:
    """A decoder classifier's logits at each sample's last token that is not padding (HF's
    ``...ForSequenceClassification`` pools this way: the rightmost non-pad token, for left or right padding)."""
    batch_size = logits.shape[0]
    if pad_token_id is None:
        if batch_size != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        return logits[:, -1]
    non_pad = (input_ids != pad_token_id).to(logits.device, torch.int32)
    token_indices = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
    last = (token_indices * non_pad).argmax(-1)
    return logits[torch.arange(batch_size, device=logits.device), last]


# --------------------------------------------------------------------------------------------------------
# HF calls every stage forward makes
# --------------------------------------------------------------------------------------------------------


def call_mask_helper(helper: Callable, config, hidden: torch.Tensor, attention_mask, **extra) -> Any:
    """Call an HF mask helper by parameter name: their signatures moved between transformers 5.x releases."""
    params = inspect.signature(helper).parameters
    kwargs: dict[str, Any] = {"config": config, "attention_mask": attention_mask}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    for cache_name in ("cache", "past_key_values"):
        if cache_name in params:
            kwargs[cache_name] = None
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    kwargs.update({k: v for k, v in extra.items() if k in params})
    return helper(**kwargs)


def causal_mask(config, hidden: torch.Tensor, attention_mask, position_ids=None):
    """HF's causal mask for this batch (None when SDPA can run ``is_causal`` without one)."""
    from transformers.masking_utils import create_causal_mask

    return call_mask_helper(create_causal_mask, config, hidden, attention_mask, position_ids=position_ids)


def bidirectional_mask(config, hidden: torch.Tensor, attention_mask, encoder_hidden_states=None):
    """HF's padding mask for bidirectional (or cross) attention; None without padding."""
    from transformers.masking_utils import create_bidirectional_mask

    return call_mask_helper(
        create_bidirectional_mask, config, hidden, attention_mask, encoder_hidden_states=encoder_hidden_states
    )


def hidden_of(output: Any) -> torch.Tensor:
    """Blocks return a tensor in transformers 5; older releases returned a tuple led by it."""
    return output[0] if isinstance(output, tuple) else output


def stage_blocks(model: nn.Module, layout: StageLayout) -> list[nn.Module]:
    """The blocks this stage holds, in model order."""
    return [model.get_submodule(root) for root in layout.block_roots]


def positions(hidden: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """``position_ids`` as given, else 0..seq-1 as the HF forward makes them."""
    if position_ids is not None:
        return position_ids
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


def present(batch: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` named ``names`` that it holds (and are not None)."""
    return {name: batch[name] for name in names if batch.get(name) is not None}


# --------------------------------------------------------------------------------------------------------
# Micro-batches
# --------------------------------------------------------------------------------------------------------


def split_rows(batch: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``batch`` cut along dim 0 into ``count`` near-equal parts (fewer when it has fewer rows): a partial
    batch still runs; the losses are weighted by label items, so uneven parts add up to the batch's mean."""
    rows = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    count = max(1, min(count, rows))
    if count == 1:
        return [batch]
    chunks = {k: v.tensor_split(count) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    return [{k: chunks[k][i] if k in chunks else v for k, v in batch.items()} for i in range(count)]


def pad_rows(batch: Mapping[str, Any], multiple: int) -> tuple[dict[str, Any], int]:
    """``batch`` grown along dim 0 to a multiple of ``multiple`` rows (a pipeline schedule runs a fixed number
    of equal micro-batches) with copies of its last row whose labels are -100, so they add no loss and no
    gradient; returns (the batch, its real rows). Float labels cannot be left out this way: refused."""
    rows = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    extra = -rows % multiple
    if extra == 0:
        return dict(batch), rows
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.is_floating_point():
        raise ValueError(
            f"a batch of {rows} samples does not split into {multiple} pipeline micro-batches, and float labels "
            "(regression, multi-label) cannot be padded out of the loss; set dataloader_drop_last=True and make "
            f"the batch a multiple of {multiple}"
        )
    padded: dict[str, Any] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            padded[key] = value
            continue
        filler = value[-1:].expand(extra, *value.shape[1:])
        if key == "labels":
            filler = torch.full_like(filler, IGNORE_INDEX)
        padded[key] = torch.cat([value, filler])
    return padded, rows
