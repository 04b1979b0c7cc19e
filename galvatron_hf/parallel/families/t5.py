"""T5 (``adapters/t5.py``) as pipeline stages of conditional generation: encoder blocks, then decoder blocks.

What a stage hands the next one depends on where it ends:

- inside the encoder:        (encoder hidden, encoder position bias, decoder input embeddings)
- at the last encoder block: (encoder output, decoder input embeddings)
- inside the decoder:        (decoder hidden, decoder position bias, encoder output)

The position bias is computed by block 0 of each stack from its ``relative_attention_bias``; sending it on lets
later stages reuse it exactly as HF's loop does, and its gradient flows back to block 0's weight. Decoder input
embeddings are computed on the first stage, which holds the shared embedding. The blocks share the position
bias with all heads, so TP splits it per block (``head_tensors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.families import Family, PipelineStages
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    Task,
    bidirectional_mask,
    causal_mask,
    present,
    stage_blocks,
)
from galvatron_hf.parallel.relayout import HeadTensors

ENCODING, ENCODED, DECODING = "encoding", "encoded", "decoding"


@dataclass
class T5State:
    enc_hidden: torch.Tensor | None = None
    enc_bias: torch.Tensor | None = None
    dec_embeds: torch.Tensor | None = None
    enc_out: torch.Tensor | None = None
    dec_hidden: torch.Tensor | None = None
    dec_bias: torch.Tensor | None = None


def phase_after(kinds: tuple[str, ...], last_block: int) -> str:
    """Where the model stands after block ``last_block`` (an index into all blocks, encoder first)."""
    if kinds[last_block] != "encoder_block":
        return DECODING
    is_last_encoder = last_block + 1 == len(kinds) or kinds[last_block + 1] != "encoder_block"
    return ENCODED if is_last_encoder else ENCODING


def pass_on(tensor: torch.Tensor) -> torch.Tensor:
    """A view, so a tensor only forwarded by this stage still has a grad_fn for the stage's backward."""
    return tensor.view_as(tensor)


def unpack(model, layout: StageLayout, activations) -> T5State:
    if layout.is_first:
        input_ids, decoder_input_ids = activations
        enc_hidden = model.encoder.dropout(model.shared(input_ids))
        return T5State(enc_hidden=enc_hidden, dec_embeds=model.shared(decoder_input_ids))
    phase = phase_after(layout.model_block_kinds, layout.block_indices[0] - 1)
    if phase == ENCODING:
        enc_hidden, enc_bias, dec_embeds = activations
        return T5State(enc_hidden=enc_hidden, enc_bias=enc_bias, dec_embeds=dec_embeds)
    if phase == ENCODED:
        enc_out, dec_embeds = activations
        return T5State(enc_out=enc_out, dec_embeds=dec_embeds)
    dec_hidden, dec_bias, enc_out = activations
    return T5State(dec_hidden=dec_hidden, dec_bias=dec_bias, enc_out=enc_out)


def pack(state: T5State, phase: str) -> tuple[torch.Tensor, ...]:
    """Contiguous tensors: the receiving stage allocates buffers with the sent strides, and recv needs them dense."""
    if phase == ENCODING:
        return state.enc_hidden.contiguous(), state.enc_bias.contiguous(), pass_on(state.dec_embeds)
    if phase == ENCODED:
        return state.enc_out.contiguous(), pass_on(state.dec_embeds)
    return state.dec_hidden.contiguous(), state.dec_bias.contiguous(), pass_on(state.enc_out)


def run_block(block, hidden, mask, bias, enc_out=None, cross_mask=None):
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


def encoder_output(model, state: T5State) -> torch.Tensor:
    """The encoder's final norm (and dropout): it runs on the stage of the last encoder block."""
    return model.encoder.dropout(model.encoder.final_layer_norm(state.enc_hidden))


class T5Stages(PipelineStages):
    heads: ClassVar[tuple[str, ...]] = ("T5ForConditionalGeneration",)
    stage_kwargs: ClassVar[tuple[str, ...]] = ("attention_mask", "decoder_attention_mask")

    def forward(self, model, layout: StageLayout, *activations, attention_mask=None, decoder_attention_mask=None):
        state = unpack(model, layout, activations)
        for kind, block in zip(layout.block_kinds, stage_blocks(model, layout)):
            if kind == "encoder_block":
                mask = bidirectional_mask(model.encoder.config, state.enc_hidden, attention_mask)
                state.enc_hidden, state.enc_bias = run_block(block, state.enc_hidden, mask, state.enc_bias)
                continue
            if state.enc_hidden is not None:  # the encoder finished on this stage: its final norm runs here
                state.enc_out, state.enc_hidden = encoder_output(model, state), None
            if state.dec_hidden is None:  # first decoder block of the model
                state.dec_hidden = model.decoder.dropout(state.dec_embeds)
            dec_config = model.decoder.config
            self_mask = causal_mask(dec_config, state.dec_hidden, decoder_attention_mask)
            cross_mask = bidirectional_mask(
                dec_config, state.dec_hidden, attention_mask, encoder_hidden_states=state.enc_out
            )
            state.dec_hidden, state.dec_bias = run_block(
                block, state.dec_hidden, self_mask, state.dec_bias, state.enc_out, cross_mask
            )
        phase = phase_after(layout.model_block_kinds, layout.block_indices[-1])
        if state.enc_hidden is not None and phase == ENCODED:
            state.enc_out = encoder_output(model, state)
        if not layout.is_last:
            return pack(state, phase)
        hidden = model.decoder.dropout(model.decoder.final_layer_norm(state.dec_hidden))
        if getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings):
            hidden = hidden * (model.model_dim**-0.5)
        return model.lm_head(hidden)

    def inputs(self, layout: StageLayout, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[tuple, dict]:
        kwargs = present(batch, self.stage_kwargs)
        if not layout.is_first:
            return (), kwargs
        return (batch["input_ids"], decoder_input_ids(model, batch)), kwargs

    def loss_task(self, model) -> Task:
        return Task("token_lm")

    def extra_owned_paths(self, spec: ModelSpec) -> dict[str, int]:
        """The encoder's ``final_layer_norm`` runs right after the last encoder block: it goes with that block."""
        encoder_blocks = [i for i, layer in enumerate(spec.layers) if layer.kind == "encoder_block"]
        return {"encoder.final_layer_norm": encoder_blocks[-1]} if encoder_blocks else {}


def decoder_input_ids(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``decoder_input_ids`` as T5ForConditionalGeneration builds them: the labels shifted right."""
    if batch.get("decoder_input_ids") is not None:
        return batch["decoder_input_ids"]
    return model._shift_right(batch["labels"])


FAMILY = Family(
    "t5",
    pipeline=T5Stages(),
    head_tensors=HeadTensors(inputs=("position_bias", "encoder_decoder_position_bias"), outputs=(1, 2)),
)
