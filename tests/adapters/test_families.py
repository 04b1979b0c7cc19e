"""GPT-2, BERT, ViT and T5 adapters: exact parameters per layer, TP rules and attributes, layer layout."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.pytorch_utils import Conv1D

from galvatron_hf.adapters import describe_model
from galvatron_hf.adapters.validate import (
    build_model,
    layer_param_counts,
    layer_tp_param_counts,
    module_path,
)

SMALL = {
    "gpt2": {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 300, "n_positions": 64},
    "bert": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 300,
                 "max_position_embeddings": 64},
    "vit": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128, "image_size": 32,
                "patch_size": 8},
    "t5": {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 3, "vocab_size": 300},
}

CASES = [
    ("gpt2", {}, "GPT2LMHeadModel"),
    ("gpt2", {"tie_word_embeddings": False, "n_inner": 96}, "GPT2LMHeadModel"),
    ("gpt2", {"num_labels": 3}, "GPT2ForSequenceClassification"),
    ("bert", {}, "BertForMaskedLM"),
    ("bert", {"tie_word_embeddings": False}, "BertForMaskedLM"),
    ("bert", {"num_labels": 3}, "BertForSequenceClassification"),
    ("bert", {}, "BertModel"),
    ("vit", {"num_labels": 5}, "ViTForImageClassification"),
    ("vit", {"qkv_bias": False, "patch_size": 4}, "ViTModel"),
    ("t5", {}, "T5ForConditionalGeneration"),
    ("t5", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, "T5ForConditionalGeneration"),
]


def small(model_type: str, **overrides) -> transformers.PretrainedConfig:
    return transformers.AutoConfig.for_model(model_type, **{**SMALL[model_type], **overrides})


@pytest.mark.parametrize("model_type,overrides,architecture", CASES)
def test_params_match_the_hf_model_layer_by_layer(model_type, overrides, architecture):
    config = small(model_type, **overrides)
    spec = describe_model(config, architecture=architecture)
    model = build_model(config, architecture)
    assert layer_param_counts(model, spec) == {layer.name: layer.params for layer in spec.layers}
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert layer_tp_param_counts(model, spec) == {layer.name: layer.tp_params for layer in spec.layers}
    assert describe_model(model).architecture == architecture  # the model's class picks the head


@pytest.mark.parametrize("model_type,overrides,architecture", CASES)
def test_tp_rules_and_attributes_name_real_modules(model_type, overrides, architecture):
    config = small(model_type, **overrides)
    spec = describe_model(config, architecture=architecture)
    model = build_model(config, architecture)
    for layer in spec.layers:
        for rule in layer.tp_rules:
            module = model.get_submodule(module_path(layer.root, rule.module))
            assert isinstance(module, (torch.nn.Linear, torch.nn.Embedding, Conv1D)), rule
            assert rule.conv1d == isinstance(module, Conv1D)
        for attribute in layer.tp_attributes:
            module = model.get_submodule(module_path(layer.root, attribute.module))
            assert isinstance(getattr(module, attribute.attribute), int), attribute


def test_gpt2_fused_qkv_rule_and_attributes():
    block = describe_model(small("gpt2")).blocks[0]
    rules = {rule.module: rule for rule in block.tp_rules}
    assert rules["attn.c_attn"].fused == 3 and rules["attn.c_attn"].style == "colwise"
    assert rules["attn.c_proj"].style == "rowwise" and rules["mlp.c_proj"].style == "rowwise"
    assert {a.attribute for a in block.tp_attributes} == {"num_heads", "split_size", "embed_dim"}


def test_gpt2_published_count_and_flops():
    spec = describe_model("gpt2")
    assert spec.total_params == 124_439_808
    s, h = 1024, 768
    assert spec.blocks[0].forward_flops == 2 * s * 12 * h * h + 4 * s * s * h
    with pytest.raises(ValueError, match="learned positions"):
        describe_model("gpt2", seq_len=2048)


def test_bert_heads_and_roots():
    spec = describe_model(small("bert", num_labels=2), architecture="BertForSequenceClassification")
    assert [layer.kind for layer in spec.layers] == ["embedding", "encoder_block", "encoder_block", "pooler", "head"]
    assert spec.blocks[0].root == "bert.encoder.layer.0"
    bare = describe_model(small("bert"), architecture="BertModel")
    assert bare.blocks[0].root == "encoder.layer.0" and bare.layers[-1].kind == "pooler"


def test_vit_sequence_length_is_fixed_by_the_image():
    spec = describe_model("google/vit-base-patch16-224")
    assert spec.seq_len == 197 and all(layer.seq_len == 197 for layer in spec.layers)
    with pytest.raises(ValueError, match="fixed by the image"):
        describe_model("google/vit-base-patch16-224", seq_len=512)
    assert describe_model("google/vit-huge-patch14-224-in21k").seq_len == 257


def test_t5_layout_lengths_and_relative_bias():
    spec = describe_model(small("t5"), seq_len=64, decoder_seq_len=16)
    kinds = [layer.kind for layer in spec.layers]
    assert kinds == ["embedding"] + ["encoder_block"] * 2 + ["final_norm"] + ["cross_decoder_block"] * 3 + ["final_norm", "head"]
    decoder = [layer for layer in spec.layers if layer.kind == "cross_decoder_block"]
    assert all(layer.seq_len == 16 and layer.kv_seq_len == 64 for layer in decoder)
    assert spec.tokens_per_sample == 80 and spec.layers[-1].seq_len == 16
    bias_rules = [rule.module for layer in spec.blocks for rule in layer.tp_rules if "relative" in rule.module]
    assert bias_rules == ["layer.0.SelfAttention.relative_attention_bias"] * 2  # block 0 of each stack
    default = describe_model(small("t5"))
    assert default.seq_len == 512 and default.decoder_seq_len == 512


def test_t5_gated_rules():
    block = describe_model(small("t5", feed_forward_proj="gated-gelu")).blocks[0]
    styles = {rule.module.split(".")[-1]: rule.style for rule in block.tp_rules}
    assert styles["wi_0"] == styles["wi_1"] == "colwise" and styles["wo"] == "rowwise"


def test_supports_tp_follows_heads_and_ffn():
    block = describe_model("bert-base-uncased").blocks[0]  # 12 heads, ffn 3072
    assert [tp for tp in (1, 2, 3, 4, 8) if block.supports_tp(tp)] == [1, 2, 3, 4]
    assert describe_model("gpt2-xl").blocks[0].supports_tp(5)  # 25 heads
    assert not describe_model("gpt2-xl").blocks[0].supports_tp(2)
