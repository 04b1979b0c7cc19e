"""What every family adapter shares: the adapter base class and the FLOP / parameter formulas.

Conventions (docs/adapters.md repeats them):
- FLOPs count 2 per multiply-add, per sample, forward only. Linear layers: 2 * tokens * in * out. Attention
  scores (Q K^T) and the weighted sum (P V) are counted with the full ``s * s_kv`` product even when the mask
  is causal (what dense kernels compute). Norms, activations, softmax and embeddings lookups are left out
  (they are memory bound and < 1 % of the total for real sizes).
- Parameters are exact: the sum of ``p.numel()`` over the modules a layer owns; a tied weight is counted once,
  by the embedding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .errors import UnsupportedArchitectureError
from .spec import ActivationModel, LayerSpec, ModelSpec, TPAttribute, TPRule

LAYERNORM_STATS = 2  # fp32 mean and 1/std per token


def linear_params(in_features: int, out_features: int, bias: bool) -> int:
    return in_features * out_features + (out_features if bias else 0)


def linear_flops(tokens: int, in_features: int, out_features: int) -> float:
    return 2.0 * tokens * in_features * out_features


def attention_core_flops(seq_len: int, kv_seq_len: int, num_heads: int, head_dim: int) -> float:
    """Q K^T plus P V over the full (unmasked) score matrix."""
    return 2.0 * 2.0 * seq_len * kv_seq_len * num_heads * head_dim


def mha_block_spec(
    *,
    kind: str,
    index: int,
    root: str,
    modules: tuple[str, ...],
    hidden: int,
    heads: int,
    ffn: int,
    seq_len: int,
    tp_params: int,
    replicated_params: int,
    activation: ActivationModel,
    tp_rules: tuple[TPRule, ...],
    tp_attributes: tuple[TPAttribute, ...],
) -> LayerSpec:
    """A block of full multi-head attention (q/k/v/o of width ``hidden``) and a two-matrix FFN (BERT, ViT, GPT-2).

    ``tp_params`` are split by TP, ``replicated_params`` (biases, norms) kept whole on every rank.
    """
    flops = linear_flops(seq_len, hidden, 4 * hidden) + linear_flops(seq_len, hidden, 2 * ffn)
    return LayerSpec(
        name=f"{kind}.{index}",
        kind=kind,
        root=root,
        modules=modules,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        ffn_size=ffn,
        seq_len=seq_len,
        params=tp_params + replicated_params,
        tp_params=tp_params,
        forward_flops=flops + attention_core_flops(seq_len, seq_len, heads, hidden // heads),
        activation=activation,
        tp_rules=tp_rules,
        tp_attributes=tp_attributes,
    )


def lm_head_spec(hidden: int, seq_len: int, vocab: int, tied: bool, fp32_log_probs: bool) -> LayerSpec:
    """``lm_head`` (colwise under TP); a tied weight is counted by the embedding.

    It keeps its input, the loss's log-probabilities (fp32 where the model upcasts the logits, else in the
    logits' dtype) and the labels.
    """
    params = 0 if tied else vocab * hidden
    log_probs = {"fp32_sharded": vocab} if fp32_log_probs else {"sharded": vocab}
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
        activation=ActivationModel(replicated=hidden, index_replicated=1, **log_probs),
        tp_rules=(TPRule("lm_head", "colwise"),),
    )


def score_head_spec(hidden: int, seq_len: int, labels: int) -> LayerSpec:
    """The bias-free ``score`` classifier of decoder models: HF scores every token, then pools one."""
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


def first_token_dense_spec(
    *, name: str, root: str, modules: tuple[str, ...], hidden: int, seq_len: int, width: int, activation: ActivationModel
) -> LayerSpec:
    """A biased Linear applied to one token per sample (a pooler or a [CLS] classifier); ``kind`` is ``name``."""
    return LayerSpec(
        name=name,
        kind=name,
        root=root,
        modules=modules,
        hidden_size=hidden,
        seq_len=seq_len,
        params=linear_params(hidden, width, True),
        forward_flops=linear_flops(1, hidden, width),
        activation=activation,
    )


def layernorm_final_spec(root: str, modules: tuple[str, ...], hidden: int, seq_len: int) -> LayerSpec:
    """A final LayerNorm: it keeps its input and fp32 statistics; its output is kept by the next layer."""
    return LayerSpec(
        name="final_norm",
        kind="final_norm",
        root=root,
        modules=modules,
        hidden_size=hidden,
        seq_len=seq_len,
        params=2 * hidden,
        activation=ActivationModel(replicated=hidden, fp32_replicated=LAYERNORM_STATS),
    )


def check_learned_positions(seq_len: int, positions: Any, model: str) -> None:
    """A model with a learned position table cannot run past its length."""
    if seq_len > int(positions):
        raise ValueError(f"seq_len={seq_len} exceeds {model}'s {positions} learned positions; pass seq_len <= {positions}")


class FamilyAdapter(ABC):
    """Builds the layers of one model family from its HF config.

    Subclasses set ``heads`` (each model type they read -> the HF head classes they describe for it, the
    default first) and implement ``layers``; ``describe`` picks the head and the sequence lengths and
    assembles the :class:`ModelSpec`.
    """

    family: ClassVar[str] = ""
    heads: ClassVar[dict[str, tuple[str, ...]]] = {}

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def resolve_architecture(self, config: Any, architecture: str | None, supported: dict) -> str:
        """An explicit choice must be supported; otherwise the config's own head, else the family default."""
        allowed = self.heads[config.model_type]
        if architecture is not None:
            if architecture not in allowed:
                raise UnsupportedArchitectureError(
                    f"Architecture {architecture!r} for model type {config.model_type!r}", supported
                )
            return architecture
        for candidate in getattr(config, "architectures", None) or ():
            if candidate in allowed:
                return candidate
        return allowed[0]

    def default_seq_len(self, config: Any) -> int:
        """min(max position embeddings, 4096): long enough to plan for, never past what the model accepts."""
        limit = getattr(config, "max_position_embeddings", None) or 4096
        return min(int(limit), 4096)

    def check_seq_len(self, config: Any, seq_len: int) -> None:
        """Families with a fixed or bounded length override this."""
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")

    def describe(
        self,
        config: Any,
        name: str,
        architecture: str | None,
        seq_len: int | None,
        decoder_seq_len: int | None,
        supported: dict,
    ) -> ModelSpec:
        arch = self.resolve_architecture(config, architecture, supported)
        seq = int(seq_len) if seq_len is not None else self.default_seq_len(config)
        self.check_seq_len(config, seq)
        dec = self.decoder_length(seq, decoder_seq_len)
        layers = tuple(self.layers(config, arch, seq, dec))
        return ModelSpec(
            name=name,
            model_type=config.model_type,
            family=self.family,
            architecture=arch,
            seq_len=seq,
            hidden_size=self.hidden_size(config),
            vocab_size=int(getattr(config, "vocab_size", 0) or 0),
            tie_word_embeddings=self.ties_embeddings(config, arch),
            layers=layers,
            decoder_seq_len=dec,
            config=config.to_dict(),
        )

    def decoder_length(self, seq_len: int, decoder_seq_len: int | None) -> int:
        """Only encoder-decoder families have a target length."""
        if decoder_seq_len is not None:
            raise ValueError(f"decoder_seq_len is only meaningful for encoder-decoder models (T5), not {self.family}")
        return 0

    def hidden_size(self, config: Any) -> int:
        return int(config.hidden_size)

    def ties_embeddings(self, config: Any, architecture: str) -> bool:
        return bool(getattr(config, "tie_word_embeddings", False))

    @abstractmethod
    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        """The layers in execution order."""
