"""LLaMA adapter (also Mistral, Qwen2): exact parameters per layer, TP rules, bundled configs."""

from __future__ import annotations

import pytest
import torch
import transformers

from galvatron_hf.adapters import describe_model
from galvatron_hf.adapters.validate import (
    build_model,
    layer_param_counts,
    layer_tp_param_counts,
)


def tiny(model_type: str = "llama", **overrides) -> transformers.PretrainedConfig:
    values = {
        "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 256,
    }
    values.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **values)


CASES = [
    ("llama", {}, "LlamaForCausalLM"),
    ("llama", {"tie_word_embeddings": True}, "LlamaForCausalLM"),
    ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 32}, "LlamaForCausalLM"),
    ("llama", {"num_labels": 3}, "LlamaForSequenceClassification"),
    ("mistral", {}, "MistralForCausalLM"),
    ("mistral", {"tie_word_embeddings": True}, "MistralForCausalLM"),
    ("qwen2", {}, "Qwen2ForCausalLM"),
    ("qwen2", {"tie_word_embeddings": True}, "Qwen2ForCausalLM"),
    ("qwen2", {"num_labels": 2}, "Qwen2ForSequenceClassification"),
]


@pytest.mark.parametrize("model_type,overrides,architecture", CASES)
def test_params_match_the_hf_model_layer_by_layer(model_type, overrides, architecture):
    config = tiny(model_type, **overrides)
    spec = describe_model(config, architecture=architecture)
    model = build_model(config, architecture)
    counts = layer_param_counts(model, spec)
    assert counts == {layer.name: layer.params for layer in spec.layers}
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    tp_counts = layer_tp_param_counts(model, spec)
    assert tp_counts == {layer.name: layer.tp_params for layer in spec.layers}
    assert spec.architecture == architecture
    assert spec.tie_word_embeddings == bool(overrides.get("tie_word_embeddings", False))


def test_default_head_follows_the_model_type_and_the_model_class():
    assert describe_model(tiny("mistral")).architecture == "MistralForCausalLM"
    config = tiny(num_labels=2)
    model = build_model(config, "LlamaForSequenceClassification")
    assert describe_model(model).architecture == "LlamaForSequenceClassification"


def test_tp_rules_point_at_linear_and_embedding_modules():
    config = tiny()
    spec = describe_model(config)
    model = build_model(config, "LlamaForCausalLM")
    styles = {}
    for layer in spec.layers:
        for rule in layer.tp_rules:
            module = model.get_submodule(".".join(p for p in (layer.root, rule.module) if p))
            assert isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
            styles[rule.module.split(".")[-1]] = rule.style
    assert styles == {
        "embed_tokens": "rowwise", "q_proj": "colwise", "k_proj": "colwise", "v_proj": "colwise",
        "o_proj": "rowwise", "gate_proj": "colwise", "up_proj": "colwise", "down_proj": "rowwise",
        "lm_head": "colwise",
    }
    assert all(not layer.tp_attributes for layer in spec.layers)  # HF reshapes with -1 heads


def test_layer_roots_and_kinds():
    spec = describe_model(tiny(num_hidden_layers=3))
    assert [layer.kind for layer in spec.layers] == ["embedding"] + ["decoder_block"] * 3 + ["final_norm", "head"]
    assert [block.root for block in spec.blocks] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert spec.num_blocks == 3 and spec.seq_len == 256


def test_tp_degree_is_bounded_by_kv_heads_and_ffn():
    block = describe_model(tiny()).blocks[0]  # 4 heads, 2 KV heads, ffn 96
    assert [tp for tp in (1, 2, 4, 8) if block.supports_tp(tp)] == [1, 2]
    assert block.max_tp() == 2


def test_llama2_7b_has_its_published_parameter_count():
    spec = describe_model("meta-llama/Llama-2-7b")
    assert spec.total_params == 6_738_415_616
    assert spec.seq_len == 4096 and spec.num_blocks == 32
    block = spec.blocks[0]
    # 2 * s * (4 h^2 + 3 h f) + 4 s^2 h, per sample
    s, h, f = 4096, 4096, 11008
    assert block.forward_flops == 2 * s * (4 * h * h + 3 * h * f) + 4 * s * s * h


def test_seq_len_default_and_override():
    assert describe_model("meta-llama/Meta-Llama-3-8B").seq_len == 4096
    assert describe_model("meta-llama/Meta-Llama-3-8B", seq_len=1024).blocks[0].seq_len == 1024
    with pytest.raises(ValueError, match="decoder_seq_len"):
        describe_model("meta-llama/Meta-Llama-3-8B", decoder_seq_len=128)
