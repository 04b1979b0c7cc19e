"""Each model family in one place: the runtime asks the family, found through the one adapter registry.

No process group is needed: these check the registry, the refusals of ``check_plan`` and that no runtime
module outside ``parallel/families`` names a family, a model type or a head class.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers as tf

import galvatron_hf.parallel as parallel_package
from galvatron_hf.adapters import describe_model, supported_architectures
from galvatron_hf.adapters.registry import ADAPTERS
from galvatron_hf.parallel import check_plan
from galvatron_hf.parallel.families import DecoderStages, Family, family_for, pipelined_families, runtime_families
from galvatron_hf.parallel.pipeline_stages import StageLayout, Task
from galvatron_hf.planner.plan import LayerStrategy, Plan, PlanError, VocabStrategy

TINY = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 64},
    "mistral": {"model_type": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 64},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 64},
}  # fmt: skip
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 64}  # fmt: skip


def two_stage_plan() -> Plan:
    return Plan(
        world_size=2, pp=2, schedule="gpipe", global_batch_size=4, num_micro_batches=2,
        layers=[LayerStrategy(stage=0, tp=1, dp=1), LayerStrategy(stage=1, tp=1, dp=1)], mixed_precision="fp32",
    )  # fmt: skip


def one_stage_plan() -> Plan:
    return replace(two_stage_plan(), pp=1, layers=[LayerStrategy(0, 1, 2)] * 2, vocab=VocabStrategy(1, 2))


def test_every_runtime_family_is_a_registered_family():
    """parallel/families/<name>.py exists only for a family the adapter registry names, and says which."""
    registered = {adapter.family: adapter for adapter in ADAPTERS}
    families = runtime_families()
    assert sorted(f.name for f in families) == sorted(registered), "a runtime module per registered family"
    for family in families:
        adapter = registered[family.name]
        heads = {head for model_heads in adapter.heads.values() for head in model_heads}
        if family.pipeline is not None:
            assert set(family.pipeline.heads) <= heads, f"{family.name}: pipeline heads the adapter does not describe"
    assert pipelined_families() == ["bert", "gpt2", "llama", "t5", "vit"]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_model_types_reach_their_family_through_the_adapter_registry(model_type):
    spec = describe_model(TINY[model_type])
    assert spec.family == "llama"
    family = family_for(spec)
    assert family.name == "llama" and family.pipeline is not None
    assert spec.architecture in family.pipeline.heads
    check_plan(two_stage_plan(), spec, world_size=2)  # a causal LM of every llama-like model type pipelines


def test_pipeline_plans_for_heads_without_a_stage_forward_are_refused_before_any_collective():
    spec = describe_model(BERT, architecture="BertModel")
    check_plan(one_stage_plan(), spec, world_size=2)
    with pytest.raises(PlanError, match="BertModel has no pipeline stage forward.*use pp=1"):
        check_plan(two_stage_plan(), spec, world_size=2)


def test_the_refusal_docs_adapters_md_quotes():
    spec = describe_model(BERT, architecture="BertModel")
    with pytest.raises(PlanError) as raised:
        check_plan(two_stage_plan(), spec)
    assert str(raised.value) == (
        "plan cannot be pipelined: BertModel has no pipeline stage forward: the bert family's stages run "
        "BertForMaskedLM, BertForSequenceClassification; use pp=1 for this head"
    )


def test_a_family_without_a_runtime_module_runs_without_pipelines():
    """An adapter alone is a family: every plan without pipeline stages; pp > 1 is refused, naming the file."""
    spec = replace(describe_model(TINY["llama"]), family="newfamily")
    assert family_for(spec) == Family("newfamily")
    check_plan(one_stage_plan(), spec, world_size=2)
    with pytest.raises(PlanError, match="add galvatron_hf/parallel/families/newfamily.py"):
        check_plan(two_stage_plan(), spec)


DECODERS = {
    "GPT2LMHeadModel": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)),
    "GPT2ForSequenceClassification": lambda: tf.GPT2ForSequenceClassification(
        tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=0, num_labels=3)
    ),
    "LlamaForCausalLM": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**TINY["llama"])),
    "LlamaForSequenceClassification": lambda: tf.LlamaForSequenceClassification(
        tf.LlamaConfig(**TINY["llama"], pad_token_id=0, num_labels=3)
    ),
}


@pytest.mark.parametrize("head", sorted(DECODERS))
def test_decoder_stages_end_with_the_hf_head(head):
    """gpt2 and llama share DecoderStages' head: the whole model as one stage gives HF's logits (a classifier's
    pooled at each sample's last non-padding token), and the last stage takes the token ids only to pool."""
    torch.manual_seed(0)
    model = DECODERS[head]().eval()
    spec = describe_model(model)
    stages = family_for(spec).pipeline
    assert isinstance(stages, DecoderStages)
    blocks = spec.blocks
    layout = StageLayout(
        stage=0, num_stages=1, family=spec.family, block_indices=tuple(range(len(blocks))),
        block_roots=tuple(b.root for b in blocks), block_kinds=tuple(b.kind for b in blocks),
        layer_names=tuple(layer.name for layer in spec.layers),
    )  # fmt: skip
    ids = torch.randint(1, 64, (3, 8))
    mask = torch.ones_like(ids)
    mask[0, 5:] = mask[1, 2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        output = stages.forward(model, layout, ids, attention_mask=mask, input_ids=ids)
        torch.testing.assert_close(output, model(input_ids=ids, attention_mask=mask).logits)
    classifier = head.endswith("SequenceClassification")
    assert stages.last_stage_kwargs(model) == (("input_ids",) if classifier else ())
    assert stages.loss_task(model) == (Task("classification", 3) if classifier else Task("causal_lm"))


def family_words() -> set[str]:
    """Every family name, model type and head class the registry knows."""
    words = {adapter.family for adapter in ADAPTERS}
    for model_type, heads in supported_architectures().items():
        words.add(model_type)
        words.update(heads)
    return words


def test_the_runtime_outside_families_never_names_a_family():
    """What differs per family lives in parallel/families/<family>.py: no other runtime module holds a string
    that is a family name, a model type or a head class (the way a branch on them would be written)."""
    root = Path(parallel_package.__file__).parent
    words = family_words()
    found = []
    for path in sorted(root.rglob("*.py")):
        if "families" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert found == []
