"""Every bundled config resolves offline and matches the HF model built from it on the meta device."""

from __future__ import annotations

import pytest

from galvatron_hf.adapters import bundled_models, describe_model, load_config
from galvatron_hf.adapters.validate import build_model

PUBLISHED = {  # well-known parameter counts of the released checkpoints
    "meta-llama/Llama-2-7b": 6_738_415_616,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "gpt2": 124_439_808,
    "gpt2-xl": 1_557_611_200,
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "google/vit-base-patch16-224": 86_567_656,
}


def test_the_required_names_are_bundled():
    required = {
        "meta-llama/Llama-2-7b", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b", "meta-llama/Llama-2-13b-hf",
        "meta-llama/Llama-2-70b", "meta-llama/Llama-2-70b-hf", "meta-llama/Meta-Llama-3-8B", "gpt2", "gpt2-medium",
        "gpt2-large", "gpt2-xl", "bert-base-uncased", "bert-large-uncased", "google/vit-base-patch16-224",
        "google/vit-large-patch16-224", "google/vit-huge-patch14-224-in21k", "t5-small", "t5-base", "t5-large",
        "t5-3b", "t5-11b", "mistralai/Mistral-7B-v0.1", "Qwen/Qwen2.5-7B",
    }
    assert required <= set(bundled_models())


@pytest.mark.parametrize("name", bundled_models())
def test_bundled_config_matches_the_meta_model(name):
    spec = describe_model(name)
    model = build_model(load_config(name), spec.architecture, device="meta")
    assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec.name == name and spec.num_blocks > 0 and spec.forward_flops > 0
    if name in PUBLISHED:
        assert spec.total_params == PUBLISHED[name]


def test_bert_base_mlm_count_from_the_meta_model():
    assert describe_model("bert-base-uncased").total_params == 109_514_298
