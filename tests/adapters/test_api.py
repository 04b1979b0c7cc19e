"""describe_model / load_config / bundled_models: every kind of source, defaults, and the errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

from galvatron_hf.adapters import (
    UnknownModelError,
    UnsupportedArchitectureError,
    bundled_models,
    describe_model,
    load_config,
)
from galvatron_hf.adapters.validate import build_model

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 128}


def test_importing_the_adapters_imports_neither_torch_nor_transformers():
    code = ("import sys, galvatron_hf.adapters; "
            "print(sorted(m for m in ('torch', 'transformers', 'torch.distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_kind_of_source_gives_the_same_spec(tmp_path):
    config = transformers.AutoConfig.for_model(**TINY_LLAMA)
    model = build_model(config, "LlamaForCausalLM")
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "alone.json").write_text(json.dumps(TINY_LLAMA))
    specs = [
        describe_model(TINY_LLAMA),
        describe_model(config),
        describe_model(model),
        describe_model(tmp_path / "saved"),
        describe_model(str(tmp_path / "saved" / "config.json")),
        describe_model(tmp_path / "alone.json"),
    ]
    layers = {spec.layers for spec in specs}
    assert len(layers) == 1
    assert {spec.total_params for spec in specs} == {sum(p.numel() for p in model.parameters())}
    assert specs[0].seq_len == 128  # min(max_position_embeddings, 4096)


def test_load_config_is_offline_and_typed():
    config = load_config("meta-llama/Llama-2-7b-hf")
    assert isinstance(config, transformers.LlamaConfig) and config.hidden_size == 4096
    assert "gpt2" in bundled_models() and bundled_models() == sorted(bundled_models())


def test_unknown_model_lists_bundled_names_and_the_fix():
    with pytest.raises(UnknownModelError) as error:
        describe_model("someone/not-a-model")
    message = str(error.value)
    assert "meta-llama/Llama-2-7b" in message and "config.json" in message and "directory" in message
    assert isinstance(error.value, ValueError)


def test_unsupported_model_type_lists_what_is_supported():
    with pytest.raises(UnsupportedArchitectureError) as error:
        describe_model({"model_type": "opt", "hidden_size": 32})
    message = str(error.value)
    for expected in ("llama", "mistral", "qwen2", "gpt2", "bert", "vit", "t5", "T5ForConditionalGeneration"):
        assert expected in message
    assert "docs/adapters.md" in message


def test_unsupported_head_and_conflicting_architecture():
    with pytest.raises(UnsupportedArchitectureError, match="GPT2DoubleHeadsModel"):
        describe_model("gpt2", architecture="GPT2DoubleHeadsModel")
    model = build_model(transformers.AutoConfig.for_model(**TINY_LLAMA), "LlamaForCausalLM")
    with pytest.raises(ValueError, match="leave architecture unset"):
        describe_model(model, architecture="LlamaForSequenceClassification")
    bare = build_model(transformers.AutoConfig.for_model(**TINY_LLAMA), "LlamaModel")
    with pytest.raises(UnsupportedArchitectureError, match="LlamaModel"):
        describe_model(bare)


def test_config_dict_without_model_type_and_bad_source():
    with pytest.raises(ValueError, match="model_type"):
        describe_model({"hidden_size": 32})
    with pytest.raises(TypeError, match="PretrainedConfig"):
        describe_model(42)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(".")  # the repository root exists but holds no config.json


def test_architecture_picks_the_head_and_config_architectures_are_followed():
    values = dict(TINY_LLAMA, architectures=["LlamaForSequenceClassification"], num_labels=2)
    assert describe_model(values).architecture == "LlamaForSequenceClassification"
    assert describe_model(values, architecture="LlamaForCausalLM").layers[-1].modules == ("lm_head",)
    assert describe_model("bert-base-uncased", architecture="BertModel").layers[-1].kind == "pooler"


def test_spec_is_json_serialisable():
    spec = describe_model("t5-small", seq_len=128, decoder_seq_len=32)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["decoder_seq_len"] == 32 and data["layers"][0]["tp_rules"][0]["module"] == "shared"


def test_a_model_that_disagrees_with_its_spec_is_refused():
    config = transformers.AutoConfig.for_model(**TINY_LLAMA)
    model = build_model(config, "LlamaForCausalLM")
    model.model.norm.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="final_norm: spec 32, model 35"):
        describe_model(model)


def test_a_local_directory_wins_over_a_bundled_name(tmp_path, monkeypatch):
    local = tmp_path / "gpt2"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 3, "n_embd": 64, "n_head": 4}))
    monkeypatch.chdir(tmp_path)
    assert describe_model("gpt2").num_blocks == 3
    monkeypatch.chdir(tmp_path / "gpt2")
    assert describe_model("gpt2").num_blocks == 12  # no ./gpt2 here: the bundled config
