"""GPT-2: GPT2LMHeadModel (default) and GPT2ForSequenceClassification.

Block layout (HF ``GPT2Block``): LayerNorm -> ``c_attn`` (one Conv1D producing q, k, v side by side) ->
attention -> ``c_proj`` -> dropout -> residual; LayerNorm -> ``c_fc`` -> GELU -> ``c_proj`` -> dropout ->
residual. ``Conv1D`` stores its weight as (in, out), hence ``conv1d=True``; ``c_attn`` is split as three
column blocks (``fused=3``). GPT2Attention splits ``c_attn``'s output with ``split_size`` (must become
hidden / tp) and older releases reshape with ``num_heads``: both, and ``embed_dim``, are TP attributes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._common import FamilyAdapter, attention_core_flops, linear_flops, linear_params
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
LAYERNORM_STATS = 2  # fp32 mean and 1/std per token
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
        if seq_len > int(config.n_positions):
            raise ValueError(
                f"seq_len={seq_len} exceeds GPT-2's {config.n_positions} learned positions; pass seq_len <= "
                f"{config.n_positions}"
            )

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
        # c_attn's bias (fused: kept whole by the runtime), rowwise biases, two LayerNorms
        replicated = 3 * hidden + 2 * hidden + 2 * 2 * hidden
        flops = linear_flops(seq_len, hidden, 4 * hidden) + linear_flops(seq_len, hidden, 2 * ffn)
        return LayerSpec(
            name=f"decoder_block.{index}",
            kind="decoder_block",
            root=f"transformer.h.{index}",
            modules=("ln_1", "attn", "ln_2", "mlp"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            ffn_size=ffn,
            seq_len=seq_len,
            params=split + replicated,
            tp_params=split,
            forward_flops=flops + attention_core_flops(seq_len, seq_len, heads, hidden // heads),
            activation=block_activation(config, hidden, heads, ffn),
            tp_rules=BLOCK_RULES,
            tp_attributes=BLOCK_ATTRIBUTES,
        )

    def final_norm(self, hidden: int, seq_len: int) -> LayerSpec:
        return LayerSpec(
            name="final_norm",
            kind="final_norm",
            root="transformer",
            modules=("ln_f",),
            hidden_size=hidden,
            seq_len=seq_len,
            params=2 * hidden,
            # its input (the last block's output); its output is kept by the head
            activation=ActivationModel(replicated=hidden, fp32_replicated=LAYERNORM_STATS),
        )

    def lm_head(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        vocab = int(config.vocab_size)
        params = 0 if self.ties_embeddings(config, "GPT2LMHeadModel") else vocab * hidden
        return LayerSpec(
            name="head",
            kind="head",
            root="",
            modules=("lm_head",),
            hidden_size=hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=params,
            tp_params=params,
            forward_flops=linear_flops(seq_len, hidden, vocab),
            activation=ActivationModel(replicated=hidden, fp32_sharded=vocab, index_replicated=1),
            tp_rules=(TPRule("lm_head", "colwise"),),
        )

    def classifier(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        labels = int(config.num_labels)
        return LayerSpec(
            name="head",
            kind="head",
            root="",
            modules=("score",),
            hidden_size=hidden,
            seq_len=seq_len,
            params=hidden * labels,
            forward_flops=linear_flops(seq_len, hidden, labels),
            activation=ActivationModel(replicated=hidden),
        )

    def hidden_size(self, config: Any) -> int:
        return int(config.n_embd)

    def default_seq_len(self, config: Any) -> int:
        return min(int(config.n_positions), 4096)
