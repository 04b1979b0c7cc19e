"""Hand-built ModelSpecs for planner tests: small, fast, and independent of the adapters' HF imports."""

from __future__ import annotations

import pytest

from galvatron_hf.adapters.spec import ActivationModel, LayerSpec, ModelSpec, TPRule
from galvatron_hf.profiler.builtin_hardware import builtin_hardware

BLOCK_RULES = (
    TPRule("attn.q", "colwise"),
    TPRule("attn.o", "rowwise"),
    TPRule("mlp.up", "colwise"),
    TPRule("mlp.down", "rowwise"),
)


def block(index: int, hidden: int, heads: int, ffn: int, seq: int) -> LayerSpec:
    params = 4 * hidden * hidden + 2 * hidden * ffn
    return LayerSpec(
        name=f"decoder_block.{index}",
        kind="decoder_block",
        root=f"model.layers.{index}",
        modules=("",),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        ffn_size=ffn,
        seq_len=seq,
        params=params + 2 * hidden,
        tp_params=params,
        forward_flops=2.0 * params * seq + 4.0 * seq * seq * hidden,
        activation=ActivationModel(
            replicated=4 * hidden, sharded=4 * hidden + 3 * ffn, fused_attention=2 * hidden, checkpointed=hidden
        ),
        tp_rules=BLOCK_RULES,
    )


def make_spec(
    num_blocks: int = 4,
    hidden: int = 1024,
    heads: int = 8,
    ffn: int = 4096,
    seq: int = 1024,
    vocab: int = 32000,
    ffn_pattern: tuple[int, ...] | None = None,
    name: str = "toy-decoder",
) -> ModelSpec:
    """A decoder LM: embedding, ``num_blocks`` blocks (FFN widths cycle through ``ffn_pattern``), norm, head."""
    widths = ffn_pattern or (ffn,)
    blocks = [block(i, hidden, heads, widths[i % len(widths)], seq) for i in range(num_blocks)]
    embedding = LayerSpec(
        name="embedding",
        kind="embedding",
        root="",
        modules=("model.embed_tokens",),
        hidden_size=hidden,
        seq_len=seq,
        vocab_size=vocab,
        params=vocab * hidden,
        tp_params=vocab * hidden,
        tp_rules=(TPRule("model.embed_tokens", "rowwise"),),
    )
    norm = LayerSpec(
        name="final_norm",
        kind="final_norm",
        root="",
        modules=("model.norm",),
        hidden_size=hidden,
        seq_len=seq,
        params=hidden,
        activation=ActivationModel(replicated=hidden),
    )
    head = LayerSpec(
        name="head",
        kind="head",
        root="",
        modules=("lm_head",),
        hidden_size=hidden,
        seq_len=seq,
        vocab_size=vocab,
        params=vocab * hidden,
        tp_params=vocab * hidden,
        forward_flops=2.0 * vocab * hidden * seq,
        activation=ActivationModel(replicated=hidden, fp32_sharded=vocab),
        tp_rules=(TPRule("lm_head", "colwise"),),
    )
    layers = (embedding, *blocks, norm, head)
    return ModelSpec(
        name=name,
        model_type="llama",
        family="llama",
        architecture="LlamaForCausalLM",
        seq_len=seq,
        hidden_size=hidden,
        vocab_size=vocab,
        tie_word_embeddings=False,
        layers=layers,
    )


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture
def h100():
    return builtin_hardware("h100", 1)
