"""Activation bytes predicted by each adapter vs. what autograd really saves on small CPU models.

``measure_saved_bytes`` records every storage passed to ``saved_tensors_hooks`` during a training-mode
forward with loss, once per storage, attributed to the layer running when it was first saved. Each block and
the whole model must be within 10 % of ``LayerSpec.activation_bytes``.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from galvatron_hf.adapters import describe_model
from galvatron_hf.adapters.validate import build_model, measure_saved_bytes

TOLERANCE = 0.10
BATCH = 2


def llama_config(**overrides):
    values = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, vocab_size=300, max_position_embeddings=128)
    values.update(overrides)
    return transformers.AutoConfig.for_model("llama", **values)


def token_batch(config, seq_len: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (BATCH, seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids}


def compare(config, architecture, batch_fn, seq_len, attn_impl, dtype=torch.float32, checkpoint=False):
    """Predicted and measured bytes per layer; asserts each block and the total are within tolerance."""
    config._attn_implementation = attn_impl
    model = build_model(config, architecture).to(dtype).train()
    spec = describe_model(model, seq_len=seq_len)
    inputs = batch_fn(config, seq_len)
    measured = measure_saved_bytes(model, spec, lambda: model(**inputs).loss, checkpoint_blocks=checkpoint)
    dtype_bytes = torch.finfo(dtype).bits // 8
    predicted = {
        layer.name: BATCH * layer.activation_bytes(
            dtype_bytes=dtype_bytes, checkpoint=checkpoint and layer.is_block, attn_impl=attn_impl
        )
        for layer in spec.layers
    }
    for block in spec.blocks:
        got = measured.per_layer[block.name]
        assert predicted[block.name] == pytest.approx(got, rel=TOLERANCE), (block.name, predicted, dict(measured.per_layer))
    assert sum(predicted.values()) == pytest.approx(measured.total, rel=TOLERANCE), (predicted, dict(measured.per_layer))
    return predicted, measured


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_llama_family(model_type, attn_impl):
    config = llama_config()
    config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config.to_dict().items()
                                                               if k in ("hidden_size", "intermediate_size",
                                                                        "num_attention_heads", "num_key_value_heads",
                                                                        "num_hidden_layers", "vocab_size")})
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    compare(config, architecture[model_type], token_batch, 32, attn_impl)


def test_llama_attention_dropout_eager():
    compare(llama_config(attention_dropout=0.1), "LlamaForCausalLM", token_batch, 32, "eager")


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_llama_checkpointed_blocks_keep_only_their_input(attn_impl):
    predicted, measured = compare(llama_config(), "LlamaForCausalLM", token_batch, 32, attn_impl, checkpoint=True)
    assert measured.per_layer["decoder_block.1"] == BATCH * 32 * 64 * 4  # fp32 hidden states


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_llama_bf16(attn_impl):
    compare(llama_config(), "LlamaForCausalLM", token_batch, 32, attn_impl, dtype=torch.bfloat16)
