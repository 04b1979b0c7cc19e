"""T5: T5ForConditionalGeneration, including the T5 v1.1 gated-GELU variants (``wi_0`` / ``wi_1``).

Layers in execution order: the shared embedding, the encoder blocks (``encoder_block``), the encoder final
norm, the decoder blocks (``cross_decoder_block``: self-attention over ``decoder_seq_len`` tokens plus
cross-attention whose keys are the ``seq_len`` encoder tokens), the decoder final norm and the LM head.
The relative position bias (an ``nn.Embedding(num_buckets, num_heads)``) lives in block 0 of each stack and
is split by heads (a column split of the embedding); the other blocks reuse the bias block 0 computes.
``T5Attention`` stores ``n_heads`` and ``inner_dim``: both are TP attributes. ``encoder.embed_tokens`` and
``decoder.embed_tokens`` alias ``shared``'s weight: the TP rule names ``shared`` and the runtime re-points the
aliases (as it re-ties the LM head).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from ._common import FamilyAdapter, attention_core_flops, linear_flops, lm_head_spec
from .spec import ActivationModel, AttentionCall, Device, LayerSpec, TPAttribute, TPRule

T5_NORM_STAT = 1  # fp32 1/rms per token
# f-sized tensors an activation keeps besides its output ("gelu_new" is written out in Python).
ACT_INTERNAL = {"relu": 0, "gelu_new": 4, "gelu": 1, "gelu_pytorch_tanh": 1, "silu": 1}


@dataclass(frozen=True)
class T5Dims:
    hidden: int
    heads: int
    head_dim: int
    ffn: int
    buckets: int
    gated: bool
    activation: str
    dropout: bool

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim


def t5_dims(config: Any) -> T5Dims:
    projection = str(getattr(config, "feed_forward_proj", "relu"))
    return T5Dims(
        hidden=int(config.d_model),
        heads=int(config.num_heads),
        head_dim=int(config.d_kv),
        ffn=int(config.d_ff),
        buckets=int(config.relative_attention_num_buckets),
        gated=projection.startswith("gated-"),
        activation=str(getattr(config, "dense_act_fn", projection.split("-")[-1])),
        dropout=float(getattr(config, "dropout_rate", 0.0) or 0.0) > 0,
    )


def ffn_params(d: T5Dims) -> int:
    return (3 if d.gated else 2) * d.hidden * d.ffn


def ffn_rules(d: T5Dims, index: int) -> tuple[TPRule, ...]:
    base = f"layer.{index}.DenseReluDense"
    inputs = ("wi_0", "wi_1") if d.gated else ("wi",)
    return tuple(TPRule(f"{base}.{name}", "colwise") for name in inputs) + (TPRule(f"{base}.wo", "rowwise"),)


def attention_rules(sublayer: str, with_bias: bool) -> tuple[TPRule, ...]:
    rules = tuple(TPRule(f"{sublayer}.{name}", "colwise") for name in ("q", "k", "v"))
    rules += (TPRule(f"{sublayer}.o", "rowwise"),)
    if with_bias:
        rules += (TPRule(f"{sublayer}.relative_attention_bias", "colwise"),)  # split by heads
    return rules


def ffn_kept(d: T5Dims) -> int:
    """f-sized tensors the feed-forward keeps: activation internals, its output, the gate, wo's input."""
    internal = ACT_INTERNAL.get(d.activation, 1)
    keeps_output = d.activation == "relu"  # ReLU's backward reads its output
    if d.gated:  # act(wi_0 x) * wi_1 x keeps both factors; wo keeps the (dropped) product
        return internal + 1 + 1 + 1
    return internal + (1 if keeps_output else 0) + (0 if keeps_output and not d.dropout else 1)


def norm_activation(d: T5Dims, count: int) -> dict[str, float]:
    """``count`` T5LayerNorms: input, normalised value and output in dtype; an fp32 upcast of the input."""
    return {
        "replicated": 3 * d.hidden * count,
        "upcast_replicated": d.hidden * count,
        "fp32_replicated": T5_NORM_STAT * count,
    }


@lru_cache(maxsize=1)
def bias_mask_is_strided() -> bool:
    """Whether the installed transformers hands T5's position bias to SDPA with a strided last dimension.

    ``compute_bias`` returns a permuted view (last-dimension stride ``num_heads``) and the causal ``torch.where``
    keeps that layout. transformers' ``create_position_bias_mask`` (integrations/sdpa_attention.py) passes it on
    as is in 5.17 and calls ``.contiguous()`` in later releases. CUDA's fused kernels require a mask whose last
    dimension has stride 1 (``check_last_dim_stride_equals_1_dense`` in PyTorch's sdp_utils_cpp.h), so with a
    strided mask every biased call runs the math kernel. Read as text, as ``vit.installed_layout`` does, so the
    package does not import torch; without the file, assume the strided (costlier) form.
    """
    spec = importlib.util.find_spec("transformers.integrations.sdpa_attention")
    if spec is None or spec.origin is None:
        return True
    with open(spec.origin, encoding="utf-8") as handle:
        source = handle.read()
    return "position_bias_mask.contiguous()" not in source


def self_attention_call(d: T5Dims, keys_per_layer_key: float, bias_copy: float) -> AttentionCall:
    """T5 self-attention under SDPA: its mask is the relative position bias, which needs grad.

    CPU always runs it with the math kernel (CPU flash refuses a mask that needs grad: ``check_attn_mask_shape``);
    CUDA does too while the mask is strided, else the memory-efficient kernel takes it and keeps the
    contiguous copy of the bias each block makes (``bias_copy``, per micro-batch). ``keys_per_layer_key``
    rescales per-key terms to the layer's ``kv_seq_len`` (the decoder's self-attention has ``t`` keys, its layer
    ``s``).
    """
    math_on: tuple[Device, ...] = ("cpu", "cuda") if bias_mask_is_strided() else ("cpu",)
    return AttentionCall(
        math_on=math_on,
        qkv=3 * d.inner,
        scores=d.heads * (2 if d.dropout else 1) * keys_per_layer_key,  # probabilities; dropped probabilities
        scores_mask=d.heads * keys_per_layer_key if d.dropout else 0,
        fused=d.heads,  # logsumexp
        batch_fused=bias_copy,
    )


def cross_attention_call(d: T5Dims, kv_per_token: float, bias: float) -> AttentionCall:
    """T5 cross-attention under SDPA: its mask is a zero bias (no grad, contiguous), so CUDA runs a fused kernel,
    which keeps that bias (one tensor shared by the decoder blocks: ``bias`` is non-zero for block 0 only).
    CPU's fused kernel has no dropout: with dropout CPU runs the math kernel."""
    return AttentionCall(
        math_on=("cpu",) if d.dropout else (),
        qkv=d.inner + 2 * d.inner * kv_per_token,  # q per decoder token; k, v per encoder token
        scores=d.heads * (2 if d.dropout else 1),
        scores_mask=d.heads if d.dropout else 0,
        fused=d.heads,
        batch_fused=bias,
    )


def encoder_block_activation(d: T5Dims, seq_len: int, index: int) -> ActivationModel:
    """Block 0 computes the relative position bias all encoder blocks share (one per micro-batch): it keeps
    the int64 buckets; checkpointed blocks keep the bias as an input. Under SDPA see ``self_attention_call``."""
    norms = norm_activation(d, 2)
    bias = d.heads * seq_len * seq_len
    return ActivationModel(
        batch_index=seq_len * seq_len if index == 0 else 0,
        batch_checkpointed=bias if index == 0 else 0,
        replicated=norms["replicated"],
        upcast_replicated=norms["upcast_replicated"],
        fp32_replicated=norms["fp32_replicated"],
        sharded=4 * d.inner + ffn_kept(d) * d.ffn,  # q, k, v, attention output; feed-forward
        bool_replicated=2 * d.hidden if d.dropout else 0,
        bool_sharded=d.ffn if d.dropout else 0,
        sdpa_calls=(self_attention_call(d, 1.0, bias),),
        eager_scores=d.heads * (2 if d.dropout else 1),
        eager_scores_bool=d.heads if d.dropout else 0,
        checkpointed=d.hidden,
    )


def decoder_block_activation(d: T5Dims, seq_len: int, kv_seq_len: int, index: int) -> ActivationModel:
    """Per decoder token; cross-attention K/V (per encoder token) and self-attention scores (per decoder key)
    are rescaled to the layer's lengths, since per-key terms are multiplied by ``kv_seq_len``.

    Per micro-batch: block 0 keeps the buckets; the self-attention bias and the (zero) cross-attention bias
    are shared by the blocks and kept as inputs by checkpointed blocks. Under SDPA see the two calls.
    """
    norms = norm_activation(d, 3)
    self_bias = d.heads * seq_len * seq_len
    cross_bias = d.heads * seq_len * kv_seq_len
    kv_per_token = kv_seq_len / seq_len
    self_keys_per_cross_key = seq_len / kv_seq_len
    probs = d.heads * (2 if d.dropout else 1)
    return ActivationModel(
        batch_index=seq_len * seq_len if index == 0 else 0,
        batch_checkpointed=self_bias + cross_bias if index == 0 else 0,
        replicated=norms["replicated"],
        upcast_replicated=norms["upcast_replicated"],
        fp32_replicated=norms["fp32_replicated"],
        # self q, k, v, output; cross q, output, and K, V over the encoder tokens; feed-forward
        sharded=4 * d.inner + 2 * d.inner + 2 * d.inner * kv_per_token + ffn_kept(d) * d.ffn,
        bool_replicated=3 * d.hidden if d.dropout else 0,
        bool_sharded=d.ffn if d.dropout else 0,
        sdpa_calls=(
            self_attention_call(d, self_keys_per_cross_key, self_bias),  # a causal-masked copy per block
            cross_attention_call(d, kv_per_token, cross_bias if index == 0 else 0),
        ),
        eager_scores=probs * (1 + self_keys_per_cross_key),
        eager_scores_bool=d.heads * (1 + self_keys_per_cross_key) if d.dropout else 0,
        checkpointed=d.hidden,  # the encoder output every block reads is kept once, by the encoder final norm
    )


class T5Adapter(FamilyAdapter):
    family = "t5"
    heads: ClassVar[dict[str, tuple[str, ...]]] = {"t5": ("T5ForConditionalGeneration",)}

    def default_seq_len(self, config: Any) -> int:
        return 512  # T5 has relative positions only; 512 is its pre-training length

    def decoder_length(self, seq_len: int, decoder_seq_len: int | None) -> int:
        length = seq_len if decoder_seq_len is None else int(decoder_seq_len)
        if length <= 0:
            raise ValueError(f"decoder_seq_len must be positive, got {length}")
        return length

    def hidden_size(self, config: Any) -> int:
        return int(config.d_model)

    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        d = t5_dims(config)
        decoder_layers = int(getattr(config, "num_decoder_layers", None) or config.num_layers)
        layers = [self.embedding(config, d, seq_len, decoder_seq_len)]
        layers += [self.block(d, "encoder", seq_len, 0, i) for i in range(int(config.num_layers))]
        layers.append(self.final_norm("encoder", d, seq_len, feeds_decoder=True))
        layers += [self.block(d, "decoder", decoder_seq_len, seq_len, i) for i in range(decoder_layers)]
        layers.append(self.final_norm("decoder", d, decoder_seq_len, feeds_decoder=False))
        layers.append(self.lm_head(config, d, decoder_seq_len))
        return layers

    def embedding(self, config: Any, d: T5Dims, seq_len: int, decoder_seq_len: int) -> LayerSpec:
        vocab = int(config.vocab_size)
        both = 1 + decoder_seq_len / seq_len  # encoder and decoder tokens, per encoder token
        return LayerSpec(
            name="embedding",
            kind="embedding",
            root="",
            modules=("shared", "encoder.embed_tokens", "decoder.embed_tokens"),
            hidden_size=d.hidden,
            seq_len=seq_len,
            vocab_size=vocab,
            params=vocab * d.hidden,
            tp_params=vocab * d.hidden,
            activation=ActivationModel(index_replicated=both, bool_replicated=d.hidden * both if d.dropout else 0),
            tp_rules=(TPRule("shared", "rowwise"),),
        )

    def block(self, d: T5Dims, stack: str, seq_len: int, kv_seq_len: int, index: int) -> LayerSpec:
        """One ``T5Block`` of ``stack``: self-attention (block 0 of each stack holds the relative position bias),
        in the decoder cross-attention whose keys are the ``kv_seq_len`` encoder tokens, then the feed-forward.
        Each sublayer has its own norm; ``n_heads`` and ``inner_dim`` are TP attributes of each attention."""
        cross = stack == "decoder"
        attentions = ("layer.0.SelfAttention", "layer.1.EncDecAttention") if cross else ("layer.0.SelfAttention",)
        bias = d.buckets * d.heads if index == 0 else 0
        attention = 4 * d.hidden * d.inner * len(attentions)
        ffn_flops = linear_flops(seq_len, d.hidden, d.ffn) * (3 if d.gated else 2)
        flops = linear_flops(seq_len, d.hidden, 4 * d.inner) + ffn_flops
        flops += attention_core_flops(seq_len, seq_len, d.heads, d.head_dim)
        rules = attention_rules(attentions[0], index == 0)
        if cross:  # cross-attention: q from the decoder tokens, k and v from the encoder tokens
            flops += linear_flops(seq_len, d.hidden, 2 * d.inner) + linear_flops(kv_seq_len, d.hidden, 2 * d.inner)
            flops += attention_core_flops(seq_len, kv_seq_len, d.heads, d.head_dim)
            rules += attention_rules(attentions[1], False)
        return LayerSpec(
            name=f"{stack}_block.{index}",
            kind="cross_decoder_block" if cross else "encoder_block",
            root=f"{stack}.block.{index}",
            modules=("",),
            hidden_size=d.hidden,
            num_heads=d.heads,
            num_kv_heads=d.heads,
            head_dim=d.head_dim,
            ffn_size=d.ffn,
            seq_len=seq_len,
            kv_seq_len=kv_seq_len if cross else 0,
            params=attention + bias + ffn_params(d) + (len(attentions) + 1) * d.hidden,
            tp_params=attention + bias + ffn_params(d),
            forward_flops=flops,
            activation=(
                decoder_block_activation(d, seq_len, kv_seq_len, index)
                if cross
                else encoder_block_activation(d, seq_len, index)
            ),
            tp_rules=rules + ffn_rules(d, len(attentions)),
            tp_attributes=tuple(
                TPAttribute(sublayer, attribute) for sublayer in attentions for attribute in ("n_heads", "inner_dim")
            ),
        )

    def final_norm(self, stack: str, d: T5Dims, seq_len: int, feeds_decoder: bool) -> LayerSpec:
        """The encoder's output (after dropout) is kept once for all decoder blocks' K/V: counted here."""
        norm = norm_activation(d, 1)
        replicated = norm["replicated"] - (0 if feeds_decoder else d.hidden)  # decoder output: counted by the head
        return LayerSpec(
            name=f"{stack}_final_norm",
            kind="final_norm",
            root=stack,
            modules=("final_layer_norm",),
            hidden_size=d.hidden,
            seq_len=seq_len,
            params=d.hidden,
            activation=ActivationModel(
                replicated=replicated,
                upcast_replicated=norm["upcast_replicated"],
                fp32_replicated=norm["fp32_replicated"],
                bool_replicated=d.hidden if d.dropout else 0,
            ),
        )

    def lm_head(self, config: Any, d: T5Dims, seq_len: int) -> LayerSpec:
        """nn.CrossEntropyLoss keeps log-probabilities in the logits' dtype."""
        tied = self.ties_embeddings(config, "T5ForConditionalGeneration")
        return lm_head_spec(d.hidden, seq_len, int(config.vocab_size), tied, fp32_log_probs=False)
