"""What each model family's pipeline stage computes, calling the HF modules the way the HF forward does.

A pruned stage module (see ``pipeline_parallel.prune_to_stage``) gets its ``forward`` replaced by one of the
functions here, bound to the module instance: the parameter names stay the HF names (no wrapper module in the
path) and FSDP2 / TP hooks on the HF modules still run. We never copy HF model code: every computation is a
call to an HF module (embeddings, blocks, norms, heads) or an HF mask helper, in the order the HF forward makes
them.

Stage inputs: the first stage takes the model inputs as positional arguments (token ids, pixel values); every
stage takes the batch's masks as keyword arguments (``PipelineStage`` passes ``step`` kwargs to every stage,
chunked per micro-batch), so masks never travel between stages. Between stages travel only tensors the next
stage cannot rebuild: the hidden states, and for T5 the relative position bias, the encoder output and the
decoder input embeddings (see docs/pipeline.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec

    from .pipeline_parallel import StageLayout

IGNORE_INDEX = -100
_FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "bert": "bert"}
_FAMILY_OF_MODEL_TYPE.update({"vit": "vit", "t5": "t5"})


def family_of(spec: ModelSpec) -> str | None:
    """The stage-forward family of a model (Mistral and Qwen2 run Llama's), or None if unsupported."""
    if spec.family in STAGE_FORWARDS:
        return spec.family
    return _FAMILY_OF_MODEL_TYPE.get(spec.model_type)


# --------------------------------------------------------------------------------------------------------
# HF mask helpers, called by parameter name: their signatures moved between transformers 5.x releases
# --------------------------------------------------------------------------------------------------------


def _call_mask_helper(helper: Callable, config, hidden: torch.Tensor, attention_mask, **extra) -> Any:
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

    return _call_mask_helper(create_causal_mask, config, hidden, attention_mask, position_ids=position_ids)


def bidirectional_mask(config, hidden: torch.Tensor, attention_mask, encoder_hidden_states=None):
    """HF's padding mask for bidirectional (or cross) attention; None without padding."""
    from transformers.masking_utils import create_bidirectional_mask

    return _call_mask_helper(
        create_bidirectional_mask, config, hidden, attention_mask, encoder_hidden_states=encoder_hidden_states
    )


def _hidden(output: Any) -> torch.Tensor:
    """Blocks return a tensor in transformers 5; older releases returned a tuple led by it."""
    return output[0] if isinstance(output, tuple) else output


def _blocks(model: nn.Module, layout: StageLayout) -> list[nn.Module]:
    return [model.get_submodule(root) for root in layout.block_roots]


def _positions(hidden: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    if position_ids is not None:
        return position_ids
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


# --------------------------------------------------------------------------------------------------------
# Stage forwards: ``forward(model, layout, *activations, **batch_kwargs)``
# --------------------------------------------------------------------------------------------------------


def llama_stage(model, layout, *activations, attention_mask=None, position_ids=None):
    """Llama / Mistral / Qwen2: embed (first), decoder layers with per-stage rotary embeddings, norm + head (last).

    Rotary embeddings hold no parameters, so every stage computes them from the positions; with no padding
    mask the causal mask stays None and SDPA runs causal, as in ``LlamaModel.forward``. Sliding-window layers
    (Mistral with ``sliding_window``, Qwen2's ``layer_types``) get HF's sliding-window mask.
    """
    base = model.model
    (first,) = activations
    hidden = base.embed_tokens(first) if layout.is_first else first
    position_ids = _positions(hidden, position_ids)
    masks = _DecoderMasks(base.config, hidden, attention_mask, position_ids)
    position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
    for index, block in zip(layout.block_indices, _blocks(model, layout)):
        mask = masks.for_layer(index)
        hidden = _hidden(
            block(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids)
        )
    if not layout.is_last:
        return hidden
    return model.lm_head(base.norm(hidden))


class _DecoderMasks:
    """The causal or sliding-window mask of each decoder layer, built once per stage call, as HF picks them."""

    def __init__(self, config, hidden: torch.Tensor, attention_mask, position_ids) -> None:
        self.config, self.hidden, self.attention_mask, self.position_ids = config, hidden, attention_mask, position_ids
        self._built: dict[str, Any] = {}

    def layer_type(self, index: int) -> str:
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types:  # Qwen2 (and newer configs) name each layer's attention
            return layer_types[index]
        sliding = getattr(self.config, "sliding_window", None) is not None
        return "sliding_attention" if sliding else "full_attention"  # Mistral: one window for all layers

    def for_layer(self, index: int):
        kind = self.layer_type(index)
        if kind not in self._built:
            from transformers import masking_utils

            sliding = kind == "sliding_attention"
            helper = masking_utils.create_sliding_window_causal_mask if sliding else masking_utils.create_causal_mask
            self._built[kind] = _call_mask_helper(
                helper, self.config, self.hidden, self.attention_mask, position_ids=self.position_ids
            )
        return self._built[kind]


def gpt2_stage(model, layout, *activations, attention_mask=None, position_ids=None):
    """GPT-2: token + position embeddings and dropout (first), blocks, ``ln_f`` + LM head (last)."""
    base = model.transformer
    (first,) = activations
    if layout.is_first:
        embeds = base.wte(first)
        position_ids = _positions(embeds, position_ids)
        hidden = base.drop(embeds + base.wpe(position_ids))
    else:
        hidden = first
        position_ids = _positions(hidden, position_ids)
    if attention_mask is not None and attention_mask.ndim < 4:
        attention_mask = attention_mask.view(hidden.shape[0], -1)
    mask = causal_mask(base.config, hidden, attention_mask, position_ids)
    for block in _blocks(model, layout):
        hidden = _hidden(block(hidden, attention_mask=mask, position_ids=position_ids))
    if not layout.is_last:
        return hidden
    return model.lm_head(base.ln_f(hidden))


def bert_stage(model, layout, *activations, attention_mask=None, token_type_ids=None, position_ids=None):
    """BERT masked LM: embeddings (first), encoder layers with the padding mask, ``cls`` MLM head (last)."""
    base = model.bert
    (first,) = activations
    if layout.is_first:
        hidden = base.embeddings(input_ids=first, token_type_ids=token_type_ids, position_ids=position_ids)
    else:
        hidden = first
    mask = bidirectional_mask(base.config, hidden, attention_mask)
    for block in _blocks(model, layout):
        hidden = _hidden(block(hidden, attention_mask=mask))
    if not layout.is_last:
        return hidden
    return model.cls(hidden)  # BertForMaskedLM's head reads the whole sequence


def vit_stage(model, layout, *activations):
    """ViT image classification: patch embeddings (first), layers, ``layernorm`` + classifier on [CLS] (last)."""
    base = model.vit
    (first,) = activations
    if layout.is_first:
        projection = base.embeddings.patch_embeddings.projection
        hidden = base.embeddings(first.to(projection.weight.dtype))
    else:
        hidden = first
    mask = bidirectional_mask(base.config, hidden, None)
    for block in _blocks(model, layout):
        hidden = _hidden(block(hidden, mask))
    if not layout.is_last:
        return hidden
    return model.classifier(base.layernorm(hidden)[:, 0, :])


# ----- T5 -----------------------------------------------------------------------------------------------

# What a T5 stage hands the next one, by where the stage ends:
#   inside the encoder:          (encoder hidden, encoder position bias, decoder input embeddings)
#   at the last encoder block:   (encoder output, decoder input embeddings)
#   inside the decoder:          (decoder hidden, decoder position bias, encoder output)
# The position bias is computed by block 0 of each stack from its ``relative_attention_bias``; sending it on
# lets later stages reuse it exactly as HF's loop does, and its gradient flows back to block 0's weight.
# Decoder input embeddings are computed on the first stage, which holds the shared embedding.
T5_ENCODING, T5_ENCODED, T5_DECODING = "encoding", "encoded", "decoding"


@dataclass
class _T5State:
    enc_hidden: torch.Tensor | None = None
    enc_bias: torch.Tensor | None = None
    dec_embeds: torch.Tensor | None = None
    enc_out: torch.Tensor | None = None
    dec_hidden: torch.Tensor | None = None
    dec_bias: torch.Tensor | None = None


def _t5_phase_after(kinds: tuple[str, ...], last_block: int) -> str:
    """Where the model stands after block ``last_block`` (an index into all blocks, encoder first)."""
    if kinds[last_block] != "encoder_block":
        return T5_DECODING
    is_last_encoder = last_block + 1 == len(kinds) or kinds[last_block + 1] != "encoder_block"
    return T5_ENCODED if is_last_encoder else T5_ENCODING


def _pass_on(tensor: torch.Tensor) -> torch.Tensor:
    """A view, so a tensor only forwarded by this stage still has a grad_fn for the stage's backward."""
    return tensor.view_as(tensor)


def _t5_unpack(model, layout, activations, all_kinds) -> _T5State:
    if layout.is_first:
        input_ids, decoder_input_ids = activations
        enc_hidden = model.encoder.dropout(model.shared(input_ids))
        return _T5State(enc_hidden=enc_hidden, dec_embeds=model.shared(decoder_input_ids))
    phase = _t5_phase_after(all_kinds, layout.block_indices[0] - 1)
    if phase == T5_ENCODING:
        enc_hidden, enc_bias, dec_embeds = activations
        return _T5State(enc_hidden=enc_hidden, enc_bias=enc_bias, dec_embeds=dec_embeds)
    if phase == T5_ENCODED:
        enc_out, dec_embeds = activations
        return _T5State(enc_out=enc_out, dec_embeds=dec_embeds)
    dec_hidden, dec_bias, enc_out = activations
    return _T5State(dec_hidden=dec_hidden, dec_bias=dec_bias, enc_out=enc_out)


def _t5_pack(state: _T5State, phase: str) -> tuple[torch.Tensor, ...]:
    """Contiguous tensors: the receiving stage allocates buffers with the sent strides, and recv needs them dense."""
    if phase == T5_ENCODING:
        return state.enc_hidden.contiguous(), state.enc_bias.contiguous(), _pass_on(state.dec_embeds)
    if phase == T5_ENCODED:
        return state.enc_out.contiguous(), _pass_on(state.dec_embeds)
    return state.dec_hidden.contiguous(), state.dec_bias.contiguous(), _pass_on(state.enc_out)


def _t5_block(block, hidden, mask, bias, enc_out=None, cross_mask=None):
    """One ``T5Block`` call; returns (hidden, self-attention position bias)."""
    out = block(
        hidden,
        attention_mask=mask,
        position_bias=bias,
        encoder_hidden_states=enc_out,
        encoder_attention_mask=cross_mask,
        encoder_decoder_position_bias=None,  # cross-attention bias is all zeros: each block rebuilds it
    )
    return out[0], out[1]


def t5_stage(model, layout, *activations, all_kinds=(), attention_mask=None, decoder_attention_mask=None):
    """T5 (conditional generation): encoder blocks, then decoder blocks, across the stages."""
    state = _t5_unpack(model, layout, activations, all_kinds)
    for kind, block in zip(layout.block_kinds, _blocks(model, layout)):
        if kind == "encoder_block":
            mask = bidirectional_mask(model.encoder.config, state.enc_hidden, attention_mask)
            state.enc_hidden, state.enc_bias = _t5_block(block, state.enc_hidden, mask, state.enc_bias)
            continue
        if state.enc_hidden is not None:  # the encoder finished on this stage: its final norm runs here
            state.enc_out = model.encoder.dropout(model.encoder.final_layer_norm(state.enc_hidden))
            state.enc_hidden = None
        if state.dec_hidden is None:  # first decoder block of the model
            state.dec_hidden = model.decoder.dropout(state.dec_embeds)
        dec_config = model.decoder.config
        self_mask = causal_mask(dec_config, state.dec_hidden, decoder_attention_mask)
        cross_mask = bidirectional_mask(
            dec_config, state.dec_hidden, attention_mask, encoder_hidden_states=state.enc_out
        )
        state.dec_hidden, state.dec_bias = _t5_block(
            block, state.dec_hidden, self_mask, state.dec_bias, state.enc_out, cross_mask
        )
    if state.enc_hidden is not None and _t5_phase_after(all_kinds, layout.block_indices[-1]) == T5_ENCODED:
        state.enc_out = model.encoder.dropout(model.encoder.final_layer_norm(state.enc_hidden))
    if not layout.is_last:
        return _t5_pack(state, _t5_phase_after(all_kinds, layout.block_indices[-1]))
    hidden = model.decoder.dropout(model.decoder.final_layer_norm(state.dec_hidden))
    if getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings):
        hidden = hidden * (model.model_dim**-0.5)
    return model.lm_head(hidden)


STAGE_FORWARDS: dict[str, Callable[..., Any]] = {
    "llama": llama_stage,
    "gpt2": gpt2_stage,
    "bert": bert_stage,
    "vit": vit_stage,
    "t5": t5_stage,
}


def extra_owned_paths(family: str | None, spec: ModelSpec) -> dict[str, int]:
    """Modules a family's stage uses that the spec may not list, mapped to the spec layer that owns them.

    T5's encoder ``final_layer_norm`` runs right after the last encoder block, so it goes with that block.
    Paths the spec already covers are left to the spec (the longest owned path wins).
    """
    if family != "t5":
        return {}
    encoder_blocks = [i for i, layer in enumerate(spec.layers) if layer.kind == "encoder_block"]
    return {"encoder.final_layer_norm": encoder_blocks[-1]} if encoder_blocks else {}


def install_stage_forward(model: nn.Module, spec: ModelSpec, layout: StageLayout) -> None:
    """Bind the family's stage forward to this model instance (its class and parameter names stay HF's)."""
    forward = STAGE_FORWARDS[layout.family]
    if layout.family == "t5":
        forward = functools.partial(forward, all_kinds=tuple(block.kind for block in spec.blocks))
    model.forward = functools.partial(forward, model, layout)


# --------------------------------------------------------------------------------------------------------
# Stage inputs from a batch, and the loss of each task
# --------------------------------------------------------------------------------------------------------


def _present(batch: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: batch[name] for name in names if batch.get(name) is not None}


def t5_decoder_input_ids(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``decoder_input_ids`` as T5ForConditionalGeneration builds them: the labels shifted right."""
    if batch.get("decoder_input_ids") is not None:
        return batch["decoder_input_ids"]
    return model._shift_right(batch["labels"])


def stage_inputs(layout: StageLayout, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[tuple, dict]:
    """(positional inputs of the first stage, keyword inputs of this stage) for ``schedule.step``."""
    family = layout.family
    if family in ("llama", "gpt2"):
        args = (batch["input_ids"],)
        kwargs = _present(batch, ("attention_mask", "position_ids"))
    elif family == "bert":
        args = (batch["input_ids"],)
        kwargs = _present(batch, ("attention_mask",))
        if layout.is_first:
            kwargs.update(_present(batch, ("token_type_ids", "position_ids")))
    elif family == "vit":
        args, kwargs = (batch["pixel_values"],), {}
    else:  # t5
        args = (batch["input_ids"], t5_decoder_input_ids(model, batch)) if layout.is_first else ()
        kwargs = _present(batch, ("attention_mask", "decoder_attention_mask"))
    return (args if layout.is_first else ()), kwargs


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
        flat_logits = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat_logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")

    def count(self, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "causal_lm":
            return (labels[:, 1:] != IGNORE_INDEX).sum()
        if self.kind == "regression":
            return torch.tensor(labels.numel(), device=labels.device)
        return (labels != IGNORE_INDEX).sum()


def task_for(spec: ModelSpec, model: nn.Module) -> Task:
    """The loss the HF model computes for this family's head."""
    family = family_of(spec)
    if family in ("llama", "gpt2"):
        return Task("causal_lm")
    if family in ("bert", "t5"):
        return Task("token_lm")
    config = model.config
    num_labels = int(getattr(config, "num_labels", 0))
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification":
        raise NotImplementedError(
            "pipeline loss for multi-label classification is not implemented; use problem_type "
            "'single_label_classification' or 'regression'"
        )
    if problem == "regression" or (problem is None and num_labels == 1):
        return Task("regression", num_labels)
    return Task("classification", num_labels)
