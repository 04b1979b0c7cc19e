"""BERT: BertForMaskedLM (default), BertForSequenceClassification and the bare BertModel.

Post-LN blocks (HF ``BertLayer``): q/k/v Linear -> attention -> ``attention.output.dense`` -> dropout ->
residual -> LayerNorm; ``intermediate.dense`` -> GELU -> ``output.dense`` -> dropout -> residual -> LayerNorm.
Recent transformers reshape with -1 heads, older ones with ``num_attention_heads`` and ``all_head_size``:
both are TP attributes of ``attention.self`` so either release runs after a column split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ._common import (
    LAYERNORM_STATS,
    FamilyAdapter,
    check_learned_positions,
    first_token_dense_spec,
    linear_flops,
    linear_params,
    mha_block_spec,
)
from .gpt2 import gelu_kept
from .spec import ActivationModel, LayerSpec, TPAttribute, TPRule

BLOCK_RULES = (
    TPRule("attention.self.query", "colwise"),
    TPRule("attention.self.key", "colwise"),
    TPRule("attention.self.value", "colwise"),
    TPRule("attention.output.dense", "rowwise"),
    TPRule("intermediate.dense", "colwise"),
    TPRule("output.dense", "rowwise"),
)
BLOCK_ATTRIBUTES = (
    TPAttribute("attention.self", "num_attention_heads"),
    TPAttribute("attention.self", "all_head_size"),
)


def encoder_block_activation(
    hidden: int, heads: int, ffn: int, attn_dropout: bool, hidden_dropout: bool, activation: str = "gelu"
) -> ActivationModel:
    """Per-token elements of a BERT/ViT-style block with two LayerNorms, q/k/v, GELU MLP and dropouts.

    ``replicated``: the block input kept by q/k/v (pre-LN: the first norm's input and output), each norm's
    input / output; ``sharded``: q, k, v, attention output, FFN input of GELU and its output.
    """
    return ActivationModel(
        replicated=4 * hidden,
        fp32_replicated=2 * LAYERNORM_STATS,
        sharded=3 * hidden + hidden + ffn * (1 + gelu_kept(activation)),
        bool_replicated=2 * hidden if hidden_dropout else 0,
        fused_attention=heads,  # logsumexp (q, k, v and the output are counted in sharded)
        eager_scores=heads * (2 if attn_dropout else 1),
        eager_scores_bool=heads if attn_dropout else 0,
        checkpointed=hidden,
    )


class BertAdapter(FamilyAdapter):
    family = "bert"
    heads: ClassVar[dict[str, tuple[str, ...]]] = {"bert": ("BertForMaskedLM", "BertForSequenceClassification", "BertModel")}

    def check_seq_len(self, config: Any, seq_len: int) -> None:
        super().check_seq_len(config, seq_len)
        check_learned_positions(seq_len, config.max_position_embeddings, "BERT")

    def ties_embeddings(self, config: Any, architecture: str) -> bool:
        return architecture == "BertForMaskedLM" and bool(getattr(config, "tie_word_embeddings", True))

    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        prefix = "" if architecture == "BertModel" else "bert"
        hidden = int(config.hidden_size)
        layers = [self.embedding(config, prefix, hidden, seq_len)]
        layers += [self.block(config, prefix, hidden, seq_len, i) for i in range(int(config.num_hidden_layers))]
        if architecture == "BertForMaskedLM":
            layers.append(self.mlm_head(config, hidden, seq_len))
        else:
            layers.append(self.pooler(prefix, hidden, seq_len))
        if architecture == "BertForSequenceClassification":
            layers.append(self.classifier(config, hidden, seq_len))
        return layers

    def embedding(self, config: Any, prefix: str, hidden: int, seq_len: int) -> LayerSpec:
        vocab = int(config.vocab_size)
        tables = vocab + int(config.max_position_embeddings) + int(config.type_vocab_size)
        dropout = float(config.hidden_dropout_prob or 0.0) > 0
        return LayerSpec(
            name="embedding",
            kind="embedding",
            root=f"{prefix}.embeddings".lstrip("."),
            modules=("",),
            hidden_size=hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=tables * hidden + 2 * hidden,
            tp_params=vocab * hidden,
            # token ids; the LayerNorm's input and statistics; the dropout mask
            activation=ActivationModel(
                index_replicated=1, replicated=hidden, fp32_replicated=LAYERNORM_STATS,
                bool_replicated=hidden if dropout else 0,
            ),
            tp_rules=(TPRule("word_embeddings", "rowwise"),),
        )

    def block(self, config: Any, prefix: str, hidden: int, seq_len: int, index: int) -> LayerSpec:
        return encoder_block_spec(
            config,
            index=index,
            root=f"{prefix}.encoder.layer.{index}".lstrip("."),
            modules=("attention", "intermediate", "output"),
            hidden=hidden,
            seq_len=seq_len,
            qkv_bias=True,
            activation_of=encoder_block_activation,
            tp_rules=BLOCK_RULES,
            tp_attributes=BLOCK_ATTRIBUTES,
        )

    def mlm_head(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        """``cls.predictions``: dense -> GELU -> LayerNorm -> decoder (tied to the word embeddings) + bias."""
        vocab = int(config.vocab_size)
        tied = self.ties_embeddings(config, "BertForMaskedLM")
        decoder_weight = 0 if tied else vocab * hidden
        # transformers ties predictions.bias to decoder.bias only together with the embeddings
        output_biases = vocab if tied else 2 * vocab
        return LayerSpec(
            name="head",
            kind="head",
            root="cls",
            modules=("predictions",),
            hidden_size=hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=linear_params(hidden, hidden, True) + 2 * hidden + decoder_weight + output_biases,
            tp_params=decoder_weight + vocab,
            forward_flops=linear_flops(seq_len, hidden, hidden) + linear_flops(seq_len, hidden, vocab),
            # last block output (dense input), what the activation keeps, its output (norm input), the norm
            # output (decoder input); nn.CrossEntropyLoss keeps log-probabilities in the logits' dtype
            activation=ActivationModel(
                replicated=(3 + gelu_kept(str(config.hidden_act))) * hidden,
                fp32_replicated=LAYERNORM_STATS,
                sharded=vocab,
                index_replicated=1,
            ),
            tp_rules=(TPRule("predictions.decoder", "colwise"),),
        )

    def pooler(self, prefix: str, hidden: int, seq_len: int) -> LayerSpec:
        """Dense + tanh on the first token; it keeps the last block's output (a view of the whole tensor)."""
        return first_token_dense_spec(
            name="pooler", root=f"{prefix}.pooler".lstrip("."), modules=("",), hidden=hidden, seq_len=seq_len,
            width=hidden, activation=ActivationModel(replicated=hidden),
        )

    def classifier(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        """On the pooled vector (one per sample): what it keeps is negligible per token."""
        return first_token_dense_spec(
            name="head", root="", modules=("classifier",), hidden=hidden, seq_len=seq_len,
            width=int(config.num_labels), activation=ActivationModel(),
        )

def encoder_block_spec(
    config: Any,
    *,
    index: int,
    root: str,
    modules: tuple[str, ...],
    hidden: int,
    seq_len: int,
    qkv_bias: bool,
    activation_of: Callable[..., ActivationModel],
    tp_rules: tuple[TPRule, ...],
    tp_attributes: tuple[TPAttribute, ...],
) -> LayerSpec:
    """A BERT-style encoder block (q/k/v/o attention, one FFN, two LayerNorms): BERT and ViT share its numbers.

    ``activation_of(hidden, heads, ffn, attn_dropout, hidden_dropout, hidden_act)`` gives what it keeps for
    backward (post-LN BERT and pre-LN ViT keep different tensors).
    """
    heads = int(config.num_attention_heads)
    ffn = int(config.intermediate_size)
    split = 3 * linear_params(hidden, hidden, qkv_bias) + hidden * hidden + linear_params(hidden, ffn, True) + ffn * hidden
    attn_dropout = float(config.attention_probs_dropout_prob or 0.0) > 0
    hidden_dropout = float(config.hidden_dropout_prob or 0.0) > 0
    return mha_block_spec(
        kind="encoder_block",
        index=index,
        root=root,
        modules=modules,
        hidden=hidden,
        heads=heads,
        ffn=ffn,
        seq_len=seq_len,
        tp_params=split,
        replicated_params=2 * hidden + 2 * 2 * hidden,  # rowwise biases, two LayerNorms
        activation=activation_of(hidden, heads, ffn, attn_dropout, hidden_dropout, str(config.hidden_act)),
        tp_rules=tp_rules,
        tp_attributes=tp_attributes,
    )
