"""The versioned model profile: measured time and memory of one layer of each kind.

Pure Python (no torch), so the planner reads it anywhere. ``galvatron-hf profile model`` writes it; the
planner's :mod:`galvatron_hf.planner.profiled_costs` prices layers from it.

A profile is keyed by what changes the numbers (:class:`ProfileKey`): the model config (hashed without the
layer counts, since one layer of each kind is measured and the rest are copies), dtype, device, attention
implementation and library versions. A re-run with the same key reuses the file.

Times are per micro-batch on one device without parallelism; per layer kind they are stored both as raw
measurements and as a fit (:class:`TokenFit`) against tokens and the attention term, so the planner can ask
for any micro-batch size and sequence length. Memory figures are bytes: parameters of the layer, activations
kept for backward per sample (whole layer, or only the inputs under checkpointing), and the transient peak
above that during backward (CUDA only: CPU has no allocator statistics).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from galvatron_hf.jsonfile import VersionedJson

MODEL_PROFILE_SCHEMA = "galvatron-hf/model-profile"
MODEL_PROFILE_VERSION = 1

# Config keys that do not change one layer's cost: names, versions, and how many layers there are.
_KEY_IGNORED_CONFIG_FIELDS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",
        "dtype",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "use_cache",
        "num_hidden_layers",
        "num_layers",
        "num_decoder_layers",
        "n_layer",
        "layer_types",
        "_commit_hash",
    }
)


class ModelProfileError(ValueError):
    """A model profile that cannot be read, or lacks what a lookup needs; the message names the fix."""


def config_hash(config: dict[str, Any]) -> str:
    """A stable digest of the fields that decide one layer's cost (see ``_KEY_IGNORED_CONFIG_FIELDS``)."""
    relevant = {k: v for k, v in sorted(config.items()) if k not in _KEY_IGNORED_CONFIG_FIELDS}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ProfileKey:
    """What a profile is valid for. Two runs with equal keys measure the same thing."""

    config_hash: str
    model_type: str
    dtype: str  # "bf16", "fp16", "fp32"
    device: str  # e.g. "NVIDIA H100 80GB HBM3", "cpu (x86_64, 2 threads)"
    attn_implementation: str  # "sdpa", "eager", "flash_attention_2"
    library_versions: dict[str, str] = field(default_factory=dict)
    timing: str = ""  # how layers were timed (model_profiler's timer name): a cache must not mix methods
    kernels: str = ""  # fused kernels / compilation the layers ran with ("liger+compile"); "": HF's own modules

    def digest(self) -> str:
        """Short name for cache files."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def mismatches(self, other: ProfileKey) -> list[str]:
        """Human-readable differences (empty when the keys are equal)."""
        problems = []
        for name in ("config_hash", "model_type", "dtype", "device", "attn_implementation", "kernels"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                problems.append(f"{name}: profile has {mine!r}, wanted {theirs!r}")
        for lib in ("torch", "transformers"):
            mine, theirs = self.library_versions.get(lib), other.library_versions.get(lib)
            if mine and theirs and mine != theirs:
                problems.append(f"{lib} version: profile has {mine}, wanted {theirs}")
        return problems


@dataclass(frozen=True)
class TokenFit:
    """``time = intercept_s + per_token_s * b * s + per_attention_s * b * s * kv`` (seconds)."""

    intercept_s: float
    per_token_s: float
    per_attention_s: float = 0.0
    max_relative_error: float = 0.0

    def time_s(self, micro_batch_size: float, seq_len: float, kv_seq_len: float | None = None) -> float:
        kv = seq_len if kv_seq_len is None else kv_seq_len
        tokens = micro_batch_size * seq_len
        return self.intercept_s + self.per_token_s * tokens + self.per_attention_s * tokens * kv


@dataclass(frozen=True)
class LayerMeasurement:
    """One (micro-batch, sequence) point of one layer kind; times are medians over repeats."""

    micro_batch_size: int
    seq_len: int  # tokens per sample through this layer
    kv_seq_len: int  # key length its attention sees (seq_len for self-attention)
    forward_s: float
    backward_s: float
    checkpointed_forward_s: float  # forward under torch.utils.checkpoint (keeps only the inputs)
    checkpointed_backward_s: float  # backward including the recomputed forward
    saved_activation_bytes: int  # tensors autograd saved for backward (parameters excluded)
    checkpointed_saved_bytes: int  # inputs held when checkpointed
    forward_held_bytes: int | None = None  # CUDA: allocated after forward minus before (outputs included)
    backward_peak_bytes: int | None = None  # CUDA: peak during backward above the level it started at
    checkpointed_forward_held_bytes: int | None = None  # CUDA, checkpointed: held after forward (inputs, outputs)
    checkpointed_backward_peak_bytes: int | None = None  # CUDA, checkpointed: backward peak (recomputation included)

    @property
    def recompute_s(self) -> float:
        return max(self.checkpointed_backward_s - self.backward_s, 0.0)


@dataclass(frozen=True)
class LayerProfile:
    """Everything measured for one layer kind (first layer of that kind in the model)."""

    kind: str
    name: str  # the ModelSpec layer it was measured on ("decoder_block.0")
    modules: list[str]  # module paths inside the HF model that were timed
    param_bytes: int
    params: int
    seq_len: int  # the layer's tokens per sample at the profile's sequence length
    kv_seq_len: int
    forward: TokenFit
    backward: TokenFit
    recompute: TokenFit  # extra backward time under checkpointing
    activation_bytes_per_sample: float  # at ``seq_len``, no checkpointing
    checkpointed_bytes_per_sample: float  # at ``seq_len``, checkpointed
    backward_peak_bytes_per_sample: float | None = None  # CUDA only
    checkpointed_backward_peak_bytes_per_sample: float | None = None  # CUDA only
    measurements: list[LayerMeasurement] = field(default_factory=list)

    def forward_time_s(
        self, micro_batch_size: float, seq_len: int | None = None, kv_seq_len: int | None = None
    ) -> float:
        seq = seq_len or self.seq_len
        return self.forward.time_s(micro_batch_size, seq, kv_seq_len or (self.kv_seq_len if seq_len is None else seq))

    def backward_time_s(
        self, micro_batch_size: float, seq_len: int | None = None, kv_seq_len: int | None = None
    ) -> float:
        seq = seq_len or self.seq_len
        return self.backward.time_s(micro_batch_size, seq, kv_seq_len or (self.kv_seq_len if seq_len is None else seq))

    def recompute_time_s(
        self, micro_batch_size: float, seq_len: int | None = None, kv_seq_len: int | None = None
    ) -> float:
        seq = seq_len or self.seq_len
        return self.recompute.time_s(micro_batch_size, seq, kv_seq_len or (self.kv_seq_len if seq_len is None else seq))


@dataclass(frozen=True)
class ModelProfile(VersionedJson):
    """Read and written as versioned JSON (``galvatron_hf.jsonfile.VersionedJson``: unknown keys refused)."""

    JSON_KIND: ClassVar[str] = "model profile"
    JSON_SCHEMA: ClassVar[str | None] = MODEL_PROFILE_SCHEMA
    JSON_VERSION: ClassVar[int] = MODEL_PROFILE_VERSION
    JSON_ERROR: ClassVar[type[ValueError]] = ModelProfileError
    JSON_WRITE_HINT: ClassVar[str] = (
        "`galvatron-hf profile model --model_name_or_path MODEL --seq_len LEN --force --output {path}`"
    )

    key: ProfileKey
    model_name: str
    architecture: str
    seq_len: int
    micro_batch_sizes: list[int]
    seq_lens: list[int]
    layers: dict[str, LayerProfile]  # kind -> profile
    timer: str = ""  # "cuda events" or "perf_counter"
    created: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    schema: str = MODEL_PROFILE_SCHEMA
    version: int = MODEL_PROFILE_VERSION

    def layer(self, kind: str) -> LayerProfile:
        try:
            return self.layers[kind]
        except KeyError:
            raise ModelProfileError(
                f"model profile of {self.model_name!r} has no {kind!r} layer (it has {sorted(self.layers)}); "
                "re-run `galvatron-hf profile model` for this model"
            ) from None

    def covers(self, micro_batch_sizes: list[int], seq_lens: list[int]) -> bool:
        """Whether this profile measured at least these points (so a cached file can be reused)."""
        return set(micro_batch_sizes) <= set(self.micro_batch_sizes) and set(seq_lens) <= set(self.seq_lens)

    # ----- (de)serialisation: VersionedJson, plus a check of the numbers -----------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> ModelProfile:
        profile = super().from_dict(data)
        profile.check()
        return profile

    def check(self) -> None:
        """Reject numbers no real run gives (non-positive times, negative memory)."""
        problems = []
        if not self.layers:
            problems.append("no layers")
        for kind, layer in self.layers.items():
            if layer.kind != kind:
                problems.append(f"layer under key {kind!r} says kind {layer.kind!r}")
            for what in ("forward", "backward"):
                fit: TokenFit = getattr(layer, what)
                if fit.time_s(1, max(layer.seq_len, 1)) <= 0:
                    problems.append(f"{kind}: {what} time must be > 0")
            if layer.param_bytes < 0 or layer.activation_bytes_per_sample < 0:
                problems.append(f"{kind}: memory figures must be >= 0")
        if problems:
            raise ModelProfileError(f"model profile of {self.model_name!r} is not valid: " + "; ".join(problems))

