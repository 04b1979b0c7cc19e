"""GPT-2: GPT2LMHeadModel (default) and GPT2ForSequenceClassification.

Block layout (HF ``GPT2Block``): LayerNorm -> ``c_attn`` (one Conv1D producing q, k, v side by side) ->
attention -> ``c_proj`` -> dropout -> residual; LayerNorm -> ``c_fc`` -> GELU -> ``c_proj`` -> dropout ->
residual. ``Conv1D`` stores its weight as (in, out), hence ``conv1d=True``; ``c_attn`` is split as three
column blocks (``fused=3``). GPT2Attention splits ``c_attn``'s output with ``split_size`` (must become
hidden / tp) and older releases reshape with ``num_heads``: both, and ``embed_dim``, are TP attributes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._common import (
    LAYERNORM_STATS,
    FamilyAdapter,
    check_learned_positions,
    layernorm_final_spec,
    linear_params,
    lm_head_spec,
    mha_block_spec,
    score_head_spec,
)
from .spec import ActivationModel, LayerSpec, TPAttribute, TPRule

BLOCK_RULES = (
    TPRule("attn.c_attn", "colwise", fused=3, conv1d=True),
    TPRule("attn.c_proj", "rowwise", conv1d=True),
    TPRule("mlp.c_fc", "colwise", conv1d=True),
    TPRule("mlp.c_proj", "rowwise", conv1d=True),
)
BLOCK_ATTRIBUTES = (
    TPAttribute("attn", "num_heads"),
    TPAttribute("attn", "split_size"),
    TPAttribute("attn", "embed_dim"),
)
# Elements per FFN unit the activation keeps: "gelu_new" (the GPT-2 default) is written out in Python
# (0.5 * x * (1 + tanh(...))) and keeps x, tanh(...), 0.5 * x and 1 + tanh(...); torch's own GELUs keep x.
GELU_KEPT = {"gelu_new": 4, "gelu_pytorch_tanh": 1, "gelu": 1, "relu": 1, "quick_gelu": 2}


def gelu_kept(activation: str) -> int:
    return GELU_KEPT.get(activation, 1)


def block_activation(config: Any, hidden: int, heads: int, ffn: int) -> ActivationModel:
    """Per-token elements one GPT2Block keeps (docs/adapters.md, GPT-2)."""
    attn_dropout = float(config.attn_pdrop or 0.0) > 0
    resid_dropout = float(config.resid_pdrop or 0.0) > 0
    return ActivationModel(
        replicated=4 * hidden,  # each LayerNorm's input and output
        fp32_replicated=2 * LAYERNORM_STATS,
        # c_attn output (q, k, v in one storage), attention output, c_fc output and what GELU keeps, its output
        sharded=3 * hidden + hidden + ffn * (1 + gelu_kept(config.activation_function)),
        bool_replicated=2 * hidden if resid_dropout else 0,  # dropout after attn.c_proj and mlp.c_proj
        # logsumexp; the CPU kernel also keeps contiguous copies of q and v (CUDA kernels read the views)
        fused_attention=heads + 2 * hidden,
        eager_scores=heads * (2 if attn_dropout else 1),  # softmax output (+ dropped copy kept by P @ V)
        eager_scores_bool=heads if attn_dropout else 0,
        checkpointed=hidden,
    )


class GPT2Adapter(FamilyAdapter):
    family = "gpt2"
    heads: ClassVar[dict[str, tuple[str, ...]]] = {"gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification")}

    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        hidden = int(config.n_embd)
        layers = [self.embedding(config, hidden, seq_len)]
        layers += [self.block(config, hidden, seq_len, i) for i in range(int(config.n_layer))]
        layers.append(self.final_norm(hidden, seq_len))
        if architecture == "GPT2ForSequenceClassification":
            layers.append(self.classifier(config, hidden, seq_len))
        else:
            layers.append(self.lm_head(config, hidden, seq_len))
        return layers

    def check_seq_len(self, config: Any, seq_len: int) -> None:
        super().check_seq_len(config, seq_len)
        check_learned_positions(seq_len, config.n_positions, "GPT-2")

    def embedding(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        vocab = int(config.vocab_size)
        dropout = float(config.embd_pdrop or 0.0) > 0
        return LayerSpec(
            name="embedding",
            kind="embedding",
            root="transformer",
            modules=("wte", "wpe", "drop"),
            hidden_size=hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=(vocab + int(config.n_positions)) * hidden,
            tp_params=vocab * hidden,  # wpe stays whole on every rank
            activation=ActivationModel(index_replicated=1, bool_replicated=hidden if dropout else 0),
            tp_rules=(TPRule("wte", "rowwise"),),
        )

    def block(self, config: Any, hidden: int, seq_len: int, index: int) -> LayerSpec:
        heads = int(config.n_head)
        ffn = int(config.n_inner or 4 * hidden)
        split = 3 * hidden * hidden + hidden * hidden + linear_params(hidden, ffn, True) + ffn * hidden
        return mha_block_spec(
            kind="decoder_block",
            index=index,
            root=f"transformer.h.{index}",
            modules=("ln_1", "attn", "ln_2", "mlp"),
            hidden=hidden,
            heads=heads,
            ffn=ffn,
            seq_len=seq_len,
            tp_params=split,
            # c_attn's bias (fused: kept whole by the runtime), rowwise biases, two LayerNorms
            replicated_params=3 * hidden + 2 * hidden + 2 * 2 * hidden,
            activation=block_activation(config, hidden, heads, ffn),
            tp_rules=BLOCK_RULES,
            tp_attributes=BLOCK_ATTRIBUTES,
        )

    def final_norm(self, hidden: int, seq_len: int) -> LayerSpec:
        return layernorm_final_spec("transformer", ("ln_f",), hidden, seq_len)

    def lm_head(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        tied = self.ties_embeddings(config, "GPT2LMHeadModel")
        return lm_head_spec(hidden, seq_len, int(config.vocab_size), tied, fp32_log_probs=True)

    def classifier(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        return score_head_spec(hidden, seq_len, int(config.num_labels))

    def hidden_size(self, config: Any) -> int:
        return int(config.n_embd)

    def default_seq_len(self, config: Any) -> int:
        return min(int(config.n_positions), 4096)
