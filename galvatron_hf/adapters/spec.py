"""The model description every other part of galvatron_hf reads.

An adapter turns a Hugging Face config (no weights) into a :class:`ModelSpec`: the model's layers in
execution order, each with its sizes, parameter count, FLOPs, the activation bytes it keeps for backward,
the Linear modules that tensor parallelism splits, and the module path where the runtime finds it.
The planner prices layers from these numbers; the runtime parallelises the HF modules the spec points at.
Everything here is plain data (JSON-able), so the planner stays free of torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

LayerKind = Literal[
    "embedding",  # token (+ position) embeddings, or ViT patch embeddings
    "encoder_block",  # bidirectional self-attention block (BERT, ViT, T5 encoder)
    "decoder_block",  # causal self-attention block (GPT-2, LLaMA)
    "cross_decoder_block",  # causal self-attention + cross-attention block (T5 decoder)
    "final_norm",  # a norm after the last block (LLaMA norm, GPT-2 ln_f, T5 final_layer_norm)
    "pooler",  # BERT pooler, ViT layernorm before the classifier
    "head",  # LM head or classifier
]
BLOCK_KINDS: frozenset[str] = frozenset({"encoder_block", "decoder_block", "cross_decoder_block"})

TPStyle = Literal["colwise", "rowwise"]
AttentionImpl = Literal["eager", "sdpa", "flash_attention_2"]
Device = Literal["cuda", "cpu"]


def module_path(root: str, relative: str) -> str:
    """A module named relative to a layer's ``root`` as a path from the model root (either part may be "")."""
    return ".".join(part for part in (root, relative) if part)


@dataclass(frozen=True)
class TPRule:
    """How tensor parallelism splits one module.

    ``module`` is relative to the owning layer's ``root``. ``colwise`` splits the output features (and the
    bias), ``rowwise`` the input features (its output is summed over the TP group); for an ``nn.Embedding``
    ``rowwise`` means a vocabulary-parallel split and for the LM head ``colwise`` a vocabulary-parallel
    output. ``fused`` > 1 marks an output made of that many equal parts that must each be split on their own
    (GPT-2's ``c_attn`` holds q, k and v side by side). ``conv1d`` marks GPT-2's ``Conv1D``, whose weight is
    stored transposed (in_features, out_features).
    """

    module: str
    style: TPStyle
    fused: int = 1
    conv1d: bool = False


@dataclass(frozen=True)
class TPAttribute:
    """A module attribute holding a head count or width that must be divided by the TP degree.

    Some HF attention modules reshape with a stored head count (T5's ``n_heads``, BERT's
    ``num_attention_heads``); after a column split each rank holds ``value / tp`` of them.
    """

    module: str
    attribute: str


def dropout_mask_bytes(device: Device, dtype_bytes: int) -> int:
    """Bytes of one dropout-mask element: CUDA's fused dropout keeps a bool mask; CPU dropout multiplies by a
    noise tensor of the input's dtype and keeps that."""
    return 1 if device == "cuda" else dtype_bytes


@dataclass(frozen=True)
class AttentionCall:
    """One ``scaled_dot_product_attention`` call whose kernel, and so what it keeps, depends on the device.

    SDPA runs a fused kernel (flash, memory-efficient, cuDNN: q, k, v, output and a logsumexp) where one accepts
    the inputs, else the math kernel (``_scaled_dot_product_attention_math`` in PyTorch's
    aten/src/ATen/native/transformers/attention.cpp). The math kernel is plain autograd ops: it casts bf16/fp16
    q, k, v to fp32 first (unless ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``, off by
    default), so its matmuls keep the scaled fp32 q and k and the fp32 v instead of the dtype tensors, softmax
    keeps its fp32 output and, with dropout, the matmul keeps the fp32 dropped probabilities and dropout its mask
    (CUDA: bool; CPU: the fp32 noise it multiplied by). It does not keep the float mask it adds.
    T5 is the case: its relative position bias is the SDPA mask, it needs grad (CPU's fused kernel refuses that)
    and some transformers releases hand it over with a strided last dimension (CUDA's fused kernels refuse that).

    The call's q, k, v are counted in the layer's ``sharded`` in the activation dtype; the math kernel adds
    ``4 - dtype_bytes`` per element. Everything here is split by TP.
    """

    math_on: tuple[Device, ...] = ()  # devices where PyTorch picks the math kernel for this call
    qkv: float = 0.0  # per token: q, k, v elements (cross-attention: k, v of every key, per query token)
    scores: float = 0.0  # per token and key (of the layer's kv_seq_len): fp32 probabilities the math kernel keeps
    scores_mask: float = 0.0  # per token and key: dropout-mask elements the math kernel keeps
    fused: float = 0.0  # per token: activation-dtype elements a fused kernel keeps besides q, k, v, output
    batch_fused: float = 0.0  # per micro-batch, TOTAL activation-dtype elements a fused kernel keeps (its float mask)

    def runs_math(self, device: Device) -> bool:
        return device in self.math_on

    def bytes_per_token(self, tp: int, dtype_bytes: int, kv_len: int, device: Device) -> float:
        """Bytes per token this call adds under SDPA, on top of the q, k, v the layer counts in its dtype."""
        if not self.runs_math(device):
            return self.fused / tp * dtype_bytes
        upcast = self.qkv * (4 - dtype_bytes)  # fp32 copies replace the dtype q, k, v; nothing more in fp32
        per_key = self.scores * 4 + self.scores_mask * dropout_mask_bytes(device, 4)
        return (upcast + per_key * kv_len) / tp

    def bytes_per_micro_batch(self, tp: int, dtype_bytes: int, device: Device) -> float:
        return 0.0 if self.runs_math(device) else self.batch_fused / tp * dtype_bytes


@dataclass(frozen=True)
class ActivationModel:
    """Bytes a layer keeps for backward, per sample, as linear terms.

    Each field counts elements per token (one sample has ``seq_len`` tokens) so the same numbers serve every
    TP degree, dtype and attention implementation. ``saved_bytes`` evaluates them; the adapter tests
    check it against what ``torch.autograd.graph.saved_tensors_hooks`` records.
    """

    replicated: float = 0.0  # activation-dtype elements every TP rank keeps whole (norm inputs, residuals)
    sharded: float = 0.0  # activation-dtype elements split across the TP group (q/k/v, FFN intermediates)
    eager_scores: float = 0.0  # per token and per key position: attention probabilities (eager only), split by TP
    fused_attention: float = 0.0  # elements kept by SDPA / flash kernels (output, logsumexp), split by TP
    fp32_sharded: float = 0.0  # fp32 elements split by TP whatever the dtype (softmax statistics)
    bool_replicated: float = 0.0  # 1-byte elements kept whole (dropout masks on the residual stream)
    bool_sharded: float = 0.0  # 1-byte elements split by TP (dropout masks inside attention / FFN)
    checkpointed: float = 0.0  # activation-dtype elements kept when the layer is checkpointed (its inputs)
    # Added by the adapters (all default to 0, so older callers see the same numbers):
    eager_sharded: float = 0.0  # per token, elements only eager attention keeps (K/V repeated to every head)
    fp32_replicated: float = 0.0  # fp32 elements kept whole whatever the dtype (RMSNorm's upcast input)
    upcast_replicated: float = 0.0  # fp32 copies of dtype tensors, kept whole: free when the dtype is fp32 (T5 norm)
    eager_scores_fp32: float = 0.0  # per token and key: probabilities kept in fp32 (softmax in fp32), split by TP
    eager_scores_cast: float = 0.0  # per token and key: their dtype copy, split by TP; free when dtype is fp32
    eager_scores_bool: float = 0.0  # per token and key: 1-byte dropout masks on probabilities, split by TP
    index_replicated: float = 0.0  # int64 elements kept whole (token ids an embedding saves, loss labels)
    # Kept once per micro-batch whatever its size (T5's relative position bias, shared by the samples); TOTAL
    # elements, not per token; only ``saved_bytes`` of a micro-batch (``samples``) adds them:
    batch_index: float = 0.0  # int64 elements, not split, without checkpointing (position buckets)
    batch_fused: float = 0.0  # dtype elements split by TP, SDPA without checkpointing (bias handed to the kernel)
    batch_checkpointed: float = 0.0  # dtype elements split by TP, when checkpointed (bias passed between blocks)
    # SDPA calls whose kernel depends on the device (T5's biased attention); under SDPA they replace
    # ``fused_attention`` / ``batch_fused`` for those calls:
    sdpa_calls: tuple[AttentionCall, ...] = ()

    def saved_bytes(
        self,
        seq_len: int,
        tp: int = 1,
        dtype_bytes: int = 2,
        checkpoint: bool = False,
        attn_impl: AttentionImpl = "sdpa",
        kv_seq_len: int | None = None,
        mask_bytes: int | None = None,
        device: Device = "cuda",
        samples: float | None = None,
    ) -> float:
        """Bytes kept between forward and backward on one TP rank: by one sample (``samples`` None), or by a
        micro-batch of ``samples``, which adds what its samples share once (T5's position bias).

        ``device`` is where the layer runs: the planner plans for GPUs, so the default is ``"cuda"``; the CPU
        tests pass ``"cpu"`` because PyTorch keeps other tensors there (dropout masks in the dtype instead of
        bool, and SDPA calls such as T5's run its math kernel on CPU where CUDA has a fused one).
        ``mask_bytes`` is the size of one dropout-mask element; ``None`` takes the device's (CUDA 1, CPU
        ``dtype_bytes``).
        """
        per_sample = self._per_sample(seq_len, tp, dtype_bytes, checkpoint, attn_impl, kv_seq_len, mask_bytes, device)
        if samples is None:
            return per_sample
        return samples * per_sample + self._shared_per_micro_batch(tp, dtype_bytes, checkpoint, attn_impl, device)

    def _per_sample(
        self,
        seq_len: int,
        tp: int,
        dtype_bytes: int,
        checkpoint: bool,
        attn_impl: AttentionImpl,
        kv_seq_len: int | None,
        mask_bytes: int | None,
        device: Device,
    ) -> float:
        if checkpoint:
            return self.checkpointed * seq_len * dtype_bytes
        if mask_bytes is None:
            mask_bytes = dropout_mask_bytes(device, dtype_bytes)
        kv_len = kv_seq_len if kv_seq_len is not None else seq_len
        cast_bytes = 0 if dtype_bytes == 4 else dtype_bytes  # casting fp32 to fp32 returns the same tensor
        upcast_bytes = 0 if dtype_bytes == 4 else 4
        per_token = (self.replicated + self.sharded / tp) * dtype_bytes
        per_token += self.fp32_sharded / tp * 4
        per_token += self.fp32_replicated * 4 + self.upcast_replicated * upcast_bytes
        per_token += (self.bool_replicated + self.bool_sharded / tp) * mask_bytes
        per_token += self.index_replicated * 8
        if attn_impl == "eager":
            per_token += self.eager_sharded / tp * dtype_bytes
            per_key = self.eager_scores * dtype_bytes + self.eager_scores_fp32 * 4
            per_key += self.eager_scores_cast * cast_bytes + self.eager_scores_bool * mask_bytes
            per_token += per_key * kv_len / tp
        else:
            per_token += self.fused_attention / tp * dtype_bytes
            per_token += sum(call.bytes_per_token(tp, dtype_bytes, kv_len, device) for call in self.sdpa_calls)
        return per_token * seq_len

    def _shared_per_micro_batch(
        self, tp: int, dtype_bytes: int, checkpoint: bool, attn_impl: AttentionImpl, device: Device
    ) -> float:
        """What the samples of a micro-batch keep once, together (the ``batch_*`` fields and SDPA masks)."""
        if checkpoint:
            return self.batch_checkpointed / tp * dtype_bytes
        if attn_impl == "eager":
            return self.batch_index * 8
        shared = self.batch_index * 8 + self.batch_fused / tp * dtype_bytes
        return shared + sum(call.bytes_per_micro_batch(tp, dtype_bytes, device) for call in self.sdpa_calls)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the model as the planner and runtime see it."""

    name: str  # readable, unique: "embedding", "decoder_block.3", "head"
    kind: LayerKind
    root: str  # module path inside the HF model ("model.layers.3"; "" for the model root)
    modules: tuple[str, ...]  # module paths (relative to root) this layer owns, e.g. ("model.embed_tokens",)
    hidden_size: int
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    ffn_size: int = 0
    seq_len: int = 0  # tokens per sample that flow through this layer
    kv_seq_len: int = 0  # key length of cross-attention (T5 decoder: the encoder length); 0 without it
    vocab_size: int = 0  # embedding and LM head only
    params: int = 0  # parameters this layer owns (a tied weight is counted once, by the embedding)
    tp_params: int = 0  # of ``params``, those split by TP (the rest are replicated on each TP rank)
    frozen_params: int = 0  # of ``params``, those that do not train (no gradient, no optimizer state): trainable.py
    forward_flops: float = 0.0  # forward FLOPs per sample at ``seq_len`` (2 per multiply-add)
    activation: ActivationModel = field(default_factory=ActivationModel)
    tp_rules: tuple[TPRule, ...] = ()
    tp_attributes: tuple[TPAttribute, ...] = ()

    @property
    def is_block(self) -> bool:
        return self.kind in BLOCK_KINDS

    def activation_bytes(
        self,
        tp: int = 1,
        dtype_bytes: int = 2,
        checkpoint: bool = False,
        attn_impl: AttentionImpl = "sdpa",
        mask_bytes: int | None = None,
        device: Device = "cuda",
        samples: float | None = None,
    ) -> float:
        """Activation bytes saved for backward on one TP rank, per sample (``samples`` None: what the profilers
        measure per sample) or for a micro-batch of ``samples`` with the tensors they share (T5's position
        bias); see ``ActivationModel.saved_bytes``. ``device`` defaults to the GPU the planner plans for."""
        return self.activation.saved_bytes(
            self.seq_len, tp, dtype_bytes, checkpoint, attn_impl, self.kv_seq_len or None, mask_bytes, device, samples
        )

    def max_tp(self) -> int:
        """The largest TP degree this layer can take is bounded by its (KV) heads; 0 heads means no limit."""
        bounds = [h for h in (self.num_heads, self.num_kv_heads) if h]
        return min(bounds) if bounds else 0

    def supports_tp(self, tp: int) -> bool:
        """TP must divide the head counts (HF reshapes with -1 heads) and the FFN width."""
        if tp == 1:
            return True
        for count in (self.num_heads, self.num_kv_heads, self.ffn_size):
            if count and count % tp:
                return False
        return True


@dataclass(frozen=True)
class ModelSpec:
    """An HF model as an ordered list of layers, built from its config alone."""

    name: str  # hub id or path it was resolved from
    model_type: str  # config.model_type ("llama", "mistral", "gpt2", "bert", "vit", "t5", ...)
    family: str  # adapter that built it ("llama", "gpt2", "bert", "vit", "t5")
    architecture: str  # HF class the spec describes ("LlamaForCausalLM", ...)
    seq_len: int
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool
    layers: tuple[LayerSpec, ...]
    decoder_seq_len: int = 0  # T5 only: target length (the encoder uses seq_len)
    config: dict = field(default_factory=dict, compare=False, hash=False)  # the HF config as a dict

    @property
    def blocks(self) -> tuple[LayerSpec, ...]:
        """The transformer blocks, the layers a plan assigns strategies to one by one."""
        return tuple(layer for layer in self.layers if layer.is_block)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def pre_layers(self) -> tuple[LayerSpec, ...]:
        """Layers before the first block (the embedding): they live on the first pipeline stage."""
        first = next(i for i, layer in enumerate(self.layers) if layer.is_block)
        return self.layers[:first]

    @property
    def post_layers(self) -> tuple[LayerSpec, ...]:
        """Layers after the last block (norm, pooler, head): they live on the last pipeline stage."""
        last = max(i for i, layer in enumerate(self.layers) if layer.is_block)
        return self.layers[last + 1 :]

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        """Parameters with gradients and optimizer state (all but a frozen base, e.g. under LoRA)."""
        return sum(layer.params - layer.frozen_params for layer in self.layers)

    @property
    def forward_flops(self) -> float:
        """Forward FLOPs per sample of the whole model."""
        return sum(layer.forward_flops for layer in self.layers)

    @property
    def tokens_per_sample(self) -> int:
        """Tokens that count toward tokens/s: input plus target length for T5."""
        return self.seq_len + self.decoder_seq_len

    def to_dict(self) -> dict:
        return asdict(self)
