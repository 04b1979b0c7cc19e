"""LLaMA-style decoders: LlamaForCausalLM, and the same layout for Mistral and Qwen2.

Block layout (HF ``LlamaDecoderLayer``): RMSNorm -> q/k/v projections (GQA: k/v have ``num_key_value_heads``)
-> rotary -> attention -> o_proj -> residual; RMSNorm -> SwiGLU MLP (gate, up, down) -> residual.
Mistral is the same module tree; Qwen2 adds biases to q/k/v (never to o_proj). HF reshapes heads with
``view(..., -1, head_dim)`` and keeps only the head *ratio* (``num_key_value_groups``), so a column split needs
no attribute rewrite: ``tp_attributes`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ._common import FamilyAdapter, attention_core_flops, linear_flops, linear_params, lm_head_spec, score_head_spec
from .spec import ActivationModel, LayerSpec, TPRule


@dataclass(frozen=True)
class LlamaDims:
    """The sizes one block is built from, with each model type's bias rules applied."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def llama_dims(config: Any) -> LlamaDims:
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    attention_bias = bool(getattr(config, "attention_bias", False))
    qwen2 = config.model_type == "qwen2"  # Qwen2Attention hard-codes bias=True on q/k/v, False on o_proj
    return LlamaDims(
        hidden=hidden,
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
        ffn=int(config.intermediate_size),
        qkv_bias=qwen2 or attention_bias,
        o_bias=attention_bias and not qwen2,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
    )


ATTENTION_RULES = (
    TPRule("self_attn.q_proj", "colwise"),
    TPRule("self_attn.k_proj", "colwise"),
    TPRule("self_attn.v_proj", "colwise"),
    TPRule("self_attn.o_proj", "rowwise"),
)
MLP_RULES = (
    TPRule("mlp.gate_proj", "colwise"),
    TPRule("mlp.up_proj", "colwise"),
    TPRule("mlp.down_proj", "rowwise"),
)

# An RMSNorm in training keeps its input upcast to fp32 and the fp32 1/rms statistic, plus, in the activation
# dtype, the normalised value (kept by the weight multiply) and its output (kept by the Linear layers it feeds).
RMSNORM_FP32 = 1  # per hidden element: the upcast input (the input itself when the dtype is fp32)
RMSNORM_STAT = 1  # per token: the rsqrt statistic (fp32)
RMSNORM_DTYPE = 2  # per hidden element: normalised value and output


def block_params(d: LlamaDims) -> tuple[int, int]:
    """(params, tp_params) of one decoder layer; rowwise biases and norms stay whole on every rank."""
    q = linear_params(d.hidden, d.q_width, d.qkv_bias)
    kv = 2 * linear_params(d.hidden, d.kv_width, d.qkv_bias)
    o_weight = d.q_width * d.hidden
    gate_up = 2 * linear_params(d.hidden, d.ffn, d.mlp_bias)
    down_weight = d.ffn * d.hidden
    split = q + kv + o_weight + gate_up + down_weight
    replicated = (d.hidden if d.o_bias else 0) + (d.hidden if d.mlp_bias else 0) + 2 * d.hidden
    return split + replicated, split


def block_flops(d: LlamaDims, seq_len: int) -> float:
    projections = linear_flops(seq_len, d.hidden, d.q_width + 2 * d.kv_width)
    projections += linear_flops(seq_len, d.q_width, d.hidden)
    mlp = linear_flops(seq_len, d.hidden, 2 * d.ffn) + linear_flops(seq_len, d.ffn, d.hidden)
    return projections + mlp + attention_core_flops(seq_len, seq_len, d.heads, d.head_dim)


def block_activation(d: LlamaDims, attention_dropout: float) -> ActivationModel:
    """Per-token elements one decoder layer keeps for backward (see docs/adapters.md, LLaMA)."""
    repeated_kv = 2 * (d.q_width - d.kv_width)  # eager repeats K and V to every query head
    probs = d.heads  # per key position
    return ActivationModel(
        replicated=2 * RMSNORM_DTYPE * d.hidden,  # both norms; their outputs are kept by q/k/v and gate/up
        fp32_replicated=2 * (RMSNORM_FP32 * d.hidden + RMSNORM_STAT),
        # rotated q, rotated k, v, attention output (o_proj input); SwiGLU: gate, silu(gate), up, product
        sharded=2 * d.q_width + 2 * d.kv_width + 4 * d.ffn,
        eager_sharded=repeated_kv,
        fused_attention=d.heads,  # logsumexp per head (kept in fp32; small)
        eager_scores_fp32=probs,  # softmax runs in fp32 and keeps its output
        eager_scores_cast=0 if attention_dropout else probs,  # cast kept by P @ V
        eager_scores=probs if attention_dropout else 0,  # dropped probabilities kept by P @ V
        eager_scores_bool=probs if attention_dropout else 0,
        checkpointed=d.hidden,  # the block input
    )


class LlamaAdapter(FamilyAdapter):
    family = "llama"
    heads: ClassVar[dict[str, tuple[str, ...]]] = {
        "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
        "mistral": ("MistralForCausalLM", "MistralForSequenceClassification"),
        "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    }

    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        d = llama_dims(config)
        vocab = int(config.vocab_size)
        classifier = architecture.endswith("ForSequenceClassification")
        layers = [self.embedding(d, vocab, seq_len)]
        layers += [self.block(config, d, seq_len, i) for i in range(int(config.num_hidden_layers))]
        layers.append(self.final_norm(d, seq_len))
        layers.append(self.classifier(config, d, seq_len) if classifier else self.lm_head(config, d, vocab, seq_len))
        return layers

    def embedding(self, d: LlamaDims, vocab: int, seq_len: int) -> LayerSpec:
        return LayerSpec(
            name="embedding",
            kind="embedding",
            root="",
            modules=("model.embed_tokens", "model.rotary_emb"),
            hidden_size=d.hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=vocab * d.hidden,
            tp_params=vocab * d.hidden,
            # token ids; rotary cos/sin are one copy per micro-batch (not per sample) and are left out
            activation=ActivationModel(index_replicated=1),
            tp_rules=(TPRule("model.embed_tokens", "rowwise"),),
        )

    def block(self, config: Any, d: LlamaDims, seq_len: int, index: int) -> LayerSpec:
        params, tp_params = block_params(d)
        return LayerSpec(
            name=f"decoder_block.{index}",
            kind="decoder_block",
            root=f"model.layers.{index}",
            modules=("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"),
            hidden_size=d.hidden,
            num_heads=d.heads,
            num_kv_heads=d.kv_heads,
            head_dim=d.head_dim,
            ffn_size=d.ffn,
            seq_len=seq_len,
            params=params,
            tp_params=tp_params,
            forward_flops=block_flops(d, seq_len),
            activation=block_activation(d, float(getattr(config, "attention_dropout", 0.0) or 0.0)),
            tp_rules=ATTENTION_RULES + MLP_RULES,
        )

    def final_norm(self, d: LlamaDims, seq_len: int) -> LayerSpec:
        return LayerSpec(
            name="final_norm",
            kind="final_norm",
            root="",
            modules=("model.norm",),
            hidden_size=d.hidden,
            seq_len=seq_len,
            params=d.hidden,
            # its output is kept by the head (counted there)
            activation=ActivationModel(
                fp32_replicated=RMSNORM_FP32 * d.hidden + RMSNORM_STAT, replicated=(RMSNORM_DTYPE - 1) * d.hidden
            ),
        )

    def lm_head(self, config: Any, d: LlamaDims, vocab: int, seq_len: int) -> LayerSpec:
        tied = bool(getattr(config, "tie_word_embeddings", False))
        return lm_head_spec(d.hidden, seq_len, vocab, tied, fp32_log_probs=True)

    def classifier(self, config: Any, d: LlamaDims, seq_len: int) -> LayerSpec:
        return score_head_spec(d.hidden, seq_len, int(config.num_labels))
