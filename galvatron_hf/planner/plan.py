"""The plan: a typed, versioned description of one hybrid-parallel layout.

The planner writes it, the runtime applies it, the trainer stores it beside checkpoints. Keys are fixed by
these dataclasses (no comma-separated strings), the file carries ``"version": 2``, and ``validate`` says
in plain words what is wrong before any process group exists. Version 2 added sequence parallelism per layer
(``sp``), a context-parallel degree (``cp``) and CPU offload (``offload``); version-1 files are read unchanged
(every layer without ``sp``, ``cp`` 1, no offload).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from galvatron_hf.constants import MIXED_PRECISIONS
from galvatron_hf.jsonfile import VersionedJson

if TYPE_CHECKING:  # the planner never needs torch; adapters are pure Python too
    from galvatron_hf.adapters.spec import ModelSpec

PLAN_VERSION = 2
# keys version 2 added, by where they sit: a version-1 file holding one is refused (it means something v1 lacks)
V2_PLAN_KEYS = ("cp", "offload")
V2_LAYER_KEYS = ("sp", "dp_shard")
DP_TYPES = ("ddp", "zero2", "zero3", "hsdp")
DP_TYPE_NAMES = {"ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "hsdp": "HSDP"}  # as people write them
SCHEDULES = ("gpipe", "1f1b")
# What FSDP2's CPUOffloadPolicy keeps in host memory: the sharded fp32 parameters, their gradients and (the
# optimizer step then runs on the CPU) the optimizer states. It moves the three together.
OFFLOAD_STATES = ("params", "grads", "optimizer")

DPType = Literal["ddp", "zero2", "zero3", "hsdp"]
Schedule = Literal["gpipe", "1f1b"]


class StepGeometry:
    """What a step's shape implies, for any record with ``world_size``, ``pp``, ``cp``, ``global_batch_size``
    and ``num_micro_batches`` (a :class:`Plan`, the search's ``StepConfig``): one definition for both."""

    world_size: int
    pp: int
    cp: int
    global_batch_size: int
    num_micro_batches: int

    @property
    def devices_per_stage(self) -> int:
        return self.world_size // self.pp

    @property
    def batch_devices(self) -> int:
        """Devices of a stage that split the batch or the parameters' states: tp x dp (cp splits the sequence)."""
        return self.devices_per_stage // max(self.cp, 1)

    @property
    def micro_batch_size(self) -> int:
        """Samples per micro-batch across the whole stage (each DP rank gets micro_batch_size / dp)."""
        return self.global_batch_size // self.num_micro_batches


class PlanError(ValueError):
    """A plan that cannot run; the message names what to change."""


@dataclass(frozen=True)
class LayerStrategy:
    """How one transformer block runs: its pipeline stage and its (dp, tp) layout inside the stage.

    ``tp * dp * cp`` equals the stage's device count (world_size / pp; ``cp`` is the plan's). TP groups are
    consecutive ranks (innermost), then CP, then DP. ``sp`` (tp > 1 only) shards the block's norms and
    residual stream along the sequence over the TP group (Megatron-style sequence parallelism).
    ``dp_type`` "hsdp" shards the block's state over ``dp_shard`` DP ranks (consecutive after TP, e.g. one
    node) as ZeRO-3 does and replicates it over the ``dp / dp_shard`` groups; ``dp_shard`` is 0 otherwise.
    """

    JSON_REQUIRED: ClassVar[tuple[str, ...]] = ("dp_type", "checkpoint")  # a file states them, never defaulted

    stage: int
    tp: int
    dp: int
    dp_type: DPType = "ddp"
    checkpoint: bool = False
    sp: bool = False
    dp_shard: int = 0


@dataclass(frozen=True)
class VocabStrategy:
    """Layout of the embedding (first stage) and of the final norm / head (last stage).

    ``tp`` > 1 splits the vocabulary across the TP group (vocab-parallel embedding and LM head).
    """

    JSON_REQUIRED: ClassVar[tuple[str, ...]] = ("tp", "dp", "dp_type")

    tp: int = 1
    dp: int = 1
    dp_type: DPType = "ddp"
    dp_shard: int = 0  # "hsdp" only: the shard-group size (see LayerStrategy)


@dataclass(frozen=True)
class Predicted:
    """What the cost model expects of this plan; ``peak_memory_gb`` has one entry per pipeline stage."""

    step_time_s: float
    samples_per_s: float
    tokens_per_s: float
    peak_memory_gb: list[float]
    mfu: float | None = None
    memory_budget_gb: float | None = None
    source: str = "analytic"  # "analytic" or "profiled" (hardware/model profiles)


@dataclass(frozen=True)
class Plan(StepGeometry, VersionedJson):
    """Read and written as versioned JSON (``galvatron_hf.jsonfile.VersionedJson``: unknown keys refused)."""

    JSON_KIND: ClassVar[str] = "plan"
    JSON_VERSION: ClassVar[int] = PLAN_VERSION
    JSON_ERROR: ClassVar[type[ValueError]] = PlanError
    JSON_WRITE_HINT: ClassVar[str] = "`galvatron-hf search --output {path}`"
    JSON_OLDER_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    JSON_REQUIRED: ClassVar[tuple[str, ...]] = ("vocab", "mixed_precision")  # a file states them, never defaulted

    world_size: int
    pp: int
    schedule: Schedule
    global_batch_size: int
    num_micro_batches: int
    layers: list[LayerStrategy]
    vocab: VocabStrategy = field(default_factory=VocabStrategy)
    seq_len: int = 0
    mixed_precision: str = "bf16"
    model_name: str = ""
    model_type: str = ""
    predicted: Predicted | None = None
    cp: int = 1  # context parallelism: every layer's sequence split over cp ranks (ring attention)
    offload: list[str] = field(default_factory=list)  # states kept in host memory: [] or all of OFFLOAD_STATES
    version: int = PLAN_VERSION

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A version-1 file is a version-2 plan without sp, cp or offload; it may not hold their keys."""
        misplaced = [key for key in V2_PLAN_KEYS if key in data]
        layers = data.get("layers")
        if isinstance(layers, list):
            found = {key for layer in layers if isinstance(layer, dict) for key in V2_LAYER_KEYS if key in layer}
            misplaced += [f"layers[].{key}" for key in sorted(found)]
        vocab = data.get("vocab")
        if isinstance(vocab, dict) and "dp_shard" in vocab:
            misplaced.append("vocab.dp_shard")
        if misplaced:
            raise PlanError(
                f"plan file has version 1 but holds version-2 keys {misplaced}; set \"version\": 2 (or drop them)"
            )
        return {**data, "version": PLAN_VERSION}

    # ----- derived views -------------------------------------------------------------------------------
    @property
    def offloaded(self) -> bool:
        return bool(self.offload)

    @property
    def stage_sizes(self) -> list[int]:
        """Number of blocks on each pipeline stage."""
        counts = [0] * self.pp
        for layer in self.layers:
            if 0 <= layer.stage < self.pp:
                counts[layer.stage] += 1
        return counts

    def stage_layers(self, stage: int) -> list[int]:
        """Indices of the blocks on one stage."""
        return [i for i, layer in enumerate(self.layers) if layer.stage == stage]

    def with_predicted(self, predicted: Predicted) -> Plan:
        return replace(self, predicted=predicted)

    # ----- validation ------------------------------------------------------------------------------------
    def validate(self, world_size: int | None = None, spec: ModelSpec | None = None) -> Plan:
        """Raise :class:`PlanError` naming the fix if the plan cannot run; return the plan otherwise.

        The one plan check, listing every problem at once: the plan alone (model-independent), then, when given,
        against ``world_size`` (the number of processes actually launched) and ``spec`` (the model it will run
        on). The runtime adds only what needs torch (``galvatron_hf.parallel.check_plan``: whether the model's
        family runs as pipeline stages).
        """
        errors = self._structural_errors()
        if world_size is not None:
            errors.extend(self._launch_errors(world_size))
        if spec is not None:
            errors.extend(self._model_errors(spec))
        if errors:
            raise PlanError("invalid plan:\n  - " + "\n  - ".join(_collapse_layer_errors(errors)))
        return self

    def _launch_errors(self, world_size: int) -> list[str]:
        if world_size == self.world_size:
            return []
        return [
            f"the plan is for {self.world_size} processes but {world_size} were launched: launch "
            f"{self.world_size} (e.g. `torchrun --nproc_per_node {self.world_size}`) or search a plan for "
            f"{world_size} (`galvatron-hf search --num_gpus {world_size}`)"
        ]

    def _structural_errors(self) -> list[str]:
        errors: list[str] = []
        if self.world_size < 1:
            return [f"world_size must be >= 1, got {self.world_size}"]
        if self.pp < 1 or self.world_size % self.pp:
            errors.append(f"pp={self.pp} must be >= 1 and divide world_size={self.world_size}")
            return errors
        if self.schedule not in SCHEDULES:
            errors.append(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            errors.append(f"mixed_precision {self.mixed_precision!r} is not one of {MIXED_PRECISIONS}")
        if not self.layers:
            errors.append("the plan has no layers")
            return errors
        if self.pp > len(self.layers):
            errors.append(
                f"pp={self.pp} is larger than the {len(self.layers)} transformer blocks the plan places: every stage "
                f"needs at least one block; use pp <= {len(self.layers)}"
            )
        errors.extend(self._batch_errors())
        errors.extend(self._stage_errors())
        errors.extend(self._v2_errors())
        stage_devices = self.batch_devices
        strategies = [(f"layer {i}", s) for i, s in enumerate(self.layers)] + [("vocab", self.vocab)]
        for name, strategy in strategies:
            errors.extend(self._layout_errors(name, strategy, stage_devices))
        return errors

    def _batch_errors(self) -> list[str]:
        if self.global_batch_size < 1 or self.num_micro_batches < 1:
            return [
                f"global_batch_size ({self.global_batch_size}) and num_micro_batches "
                f"({self.num_micro_batches}) must be >= 1"
            ]
        if self.global_batch_size % self.num_micro_batches:
            return [
                f"global_batch_size={self.global_batch_size} is not divisible by num_micro_batches="
                f"{self.num_micro_batches}"
            ]
        if self.schedule == "1f1b" and self.num_micro_batches < self.pp:
            return [
                f"the 1f1b schedule needs num_micro_batches >= pp ({self.num_micro_batches} < {self.pp}); "
                "raise num_micro_batches or use schedule 'gpipe'"
            ]
        return []

    def _v2_errors(self) -> list[str]:
        """cp and offload: values the runtime can run."""
        errors = []
        if self.cp < 1 or self.devices_per_stage % self.cp:
            errors.append(f"cp={self.cp} must be >= 1 and divide the devices per stage ({self.devices_per_stage})")
        if self.cp > 1 and self.seq_len and self.seq_len % (2 * self.cp):
            errors.append(
                f"cp={self.cp} splits the sequence into 2 x cp load-balanced chunks: seq_len={self.seq_len} must "
                f"be a multiple of {2 * self.cp}"
            )
        unknown = [state for state in self.offload if state not in OFFLOAD_STATES]
        if unknown:
            errors.append(f"offload {unknown} is not among {list(OFFLOAD_STATES)}")
        elif self.offload and sorted(self.offload) != sorted(OFFLOAD_STATES):
            errors.append(
                f"offload {self.offload}: FSDP2's CPUOffloadPolicy keeps parameters, gradients and optimizer states "
                f"in host memory together; use offload {list(OFFLOAD_STATES)} or []"
            )
        return errors

    def _stage_errors(self) -> list[str]:
        stages = [layer.stage for layer in self.layers]
        if any(b < a for a, b in zip(stages, stages[1:])):
            return [f"layer stages must be non-decreasing (contiguous stages), got {stages}"]
        empty = [stage for stage in range(self.pp) if stage not in stages]
        outside = sorted({stage for stage in stages if not 0 <= stage < self.pp})
        if empty or outside:
            return [
                f"every stage 0..{self.pp - 1} needs at least one block; empty stages {empty}, stages outside the "
                f"range {outside}; move blocks so each stage holds one or lower pp"
            ]
        return []

    def _layout_errors(self, name: str, strategy: LayerStrategy | VocabStrategy, stage_devices: int) -> list[str]:
        errors = []
        if strategy.tp < 1 or strategy.dp < 1 or strategy.tp * strategy.dp != stage_devices:
            where = f"world_size / pp = {stage_devices}" if self.cp == 1 else f"world_size / pp / cp = {stage_devices}"
            errors.append(f"{name}: tp={strategy.tp} x dp={strategy.dp} must equal the devices per stage ({where})")
        if getattr(strategy, "sp", False) and strategy.tp < 2:
            errors.append(
                f"{name}: sp shards the sequence over the TP group, so it needs tp > 1 (got tp={strategy.tp}); "
                "set sp false or raise tp"
            )
        if getattr(strategy, "sp", False) and self.seq_len and (self.seq_len // max(self.cp, 1)) % strategy.tp:
            errors.append(
                f"{name}: sp splits each rank's {self.seq_len // max(self.cp, 1)} tokens over tp={strategy.tp}; "
                "use a seq_len that tp divides"
            )
        if strategy.dp_type not in DP_TYPES:
            errors.append(f"{name}: dp_type {strategy.dp_type!r} is not one of {DP_TYPES}")
        errors.extend(_shard_errors(name, strategy))
        if strategy.dp >= 1 and self.num_micro_batches >= 1 and self.micro_batch_size % strategy.dp:
            errors.append(
                f"{name}: the micro-batch of {self.micro_batch_size} samples does not split over dp={strategy.dp}; "
                f"make global_batch_size a multiple of num_micro_batches x {strategy.dp}"
            )
        return errors

    def _model_errors(self, spec: ModelSpec) -> list[str]:
        blocks = spec.blocks
        if len(blocks) != len(self.layers):
            return [
                f"the plan has {len(self.layers)} layers but {spec.name} has {len(blocks)} transformer blocks; "
                "search a plan for this model"
            ]
        errors = []
        for i, (strategy, block) in enumerate(zip(self.layers, blocks)):
            if not block.supports_tp(strategy.tp):
                errors.append(
                    f"layer {i}: tp={strategy.tp} does not divide {block.num_heads} heads / "
                    f"{block.num_kv_heads} KV heads / FFN {block.ffn_size}; valid tp degrees: "
                    f"{[t for t in range(1, (block.max_tp() or 1) + 1) if block.supports_tp(t)]}"
                )
        vocab_size = spec.vocab_size
        if self.vocab.tp > 1 and vocab_size % self.vocab.tp:
            errors.append(f"vocab: tp={self.vocab.tp} does not divide the vocabulary size {vocab_size}")
        # A different sequence length changes the predictions, not whether the plan runs: not an error here.
        return errors


def _shard_errors(name: str, strategy: LayerStrategy | VocabStrategy) -> list[str]:
    """HSDP needs a shard group that divides dp and is neither 1 (that is ddp) nor dp (that is zero3)."""
    shard, dp = strategy.dp_shard, strategy.dp
    if strategy.dp_type != "hsdp":
        if shard:
            return [f"{name}: dp_shard={shard} is for dp_type 'hsdp' only (got {strategy.dp_type!r}); remove it"]
        return []
    if not (isinstance(shard, int) and 1 < shard < dp and dp % shard == 0):
        return [
            f"{name}: hsdp needs dp_shard dividing dp={dp} with 1 < dp_shard < dp (got {shard}); dp_shard 1 is "
            "'ddp' and dp_shard = dp is 'zero3'"
        ]
    return []


def _collapse_layer_errors(errors: list[str]) -> list[str]:
    """One line per distinct problem: "layer 3: X", "layer 4: X" become "layers 3-4: X" (80-layer plans)."""
    layers_of: dict[str, list[int]] = {}
    order: list[str] = []
    for error in errors:
        head, _, problem = error.partition(": ")
        index = head.removeprefix("layer ")
        key = problem if head.startswith("layer ") and index.isdigit() else error
        if key not in layers_of:
            layers_of[key] = []
            order.append(key)
        if key is problem:
            layers_of[key].append(int(index))
    return [f"{_layer_ranges(layers_of[key])}: {key}" if layers_of[key] else key for key in order]


def _layer_ranges(indices: list[int]) -> str:
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return ("layer " if len(indices) == 1 else "layers ") + text

