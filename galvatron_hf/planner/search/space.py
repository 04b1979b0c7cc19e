"""The search space: the step configs the outer search visits and the strategies a block may take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from galvatron_hf.planner.cost_model import StepShape
from galvatron_hf.planner.plan import DP_TYPES, LayerStrategy, StepGeometry

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

TOKENS_PER_STEP_CAP = 4 * 1024 * 1024  # default bound of a searched batch: 4M tokens (Llama 2's batch)


# Below this many tokens per sample the search does not try context parallelism: CP's ring passes keys and
# values every layer and hides them behind an attention whose cost grows with the square of the sequence, so
# short sequences leave the exchange exposed (docs/cost_model.md, "Context parallelism"); a plan with --cp is
# still priced at any length.
CP_MIN_SEQ_LEN = 8192
# Families whose position ids and causal masks the context-parallel runtime handles (parallel/context_parallel.py)
CP_MODEL_TYPES = ("llama", "gpt2")
# Families whose blocks the sequence-parallel runtime runs (parallel/sequence_parallel.py: pre-norm blocks whose
# norms and residual adds work token by token); the search offers sp on their blocks only
SEQUENCE_PARALLEL_FAMILIES = ("llama", "gpt2")


class Slot(NamedTuple):
    """What a block may choose once its TP degree is fixed (``sp`` only with tp > 1)."""

    dp_type: str
    checkpoint: bool
    sp: bool = False


SLOTS = tuple(
    Slot(dp_type, checkpoint, sp) for dp_type in DP_TYPES for checkpoint in (False, True) for sp in (False, True)
)


class Strategy(NamedTuple):
    """One block's layout on a stage: ``tp * dp`` is the stage's devices over cp (``dp_shard``: hsdp's shard
    group; ``sp`` only with tp > 1)."""

    tp: int
    dp: int
    dp_type: str
    checkpoint: bool
    dp_shard: int = 0
    sp: bool = False

    def on_stage(self, stage: int) -> LayerStrategy:
        return LayerStrategy(
            stage=stage,
            tp=self.tp,
            dp=self.dp,
            dp_type=self.dp_type,
            checkpoint=self.checkpoint,
            dp_shard=self.dp_shard,
            sp=self.sp,
        )


# A shard group the search offers holds the stage's sharded fp32 state (weights, gradients, AdamW: 16 bytes
# a parameter) in at most this share of the budget, leaving the rest to activations and gathered layers.
HSDP_STATE_SHARE = 0.5
SHARDED_STATE_BYTES = 16


def hsdp_shard(tp: int, dp: int, gpus_per_node: int, stage_params: float = 0.0, budget_bytes: float = 0.0) -> int:
    """The shard group the search gives an "hsdp" layer: the DP ranks of one node (``gpus_per_node / tp``),
    doubled (two nodes, four, ...) until the stage's state fits in ``HSDP_STATE_SHARE`` of the budget, so
    gathers and reduce-scatters stay inside few nodes and only the replica all-reduce spans them all
    (torchtitan's and accelerate's usual HSDP). 0 when no such group is a proper divisor of ``dp``: the
    slot is then not offered (one group holding all of dp is zero3)."""
    shard = max(1, gpus_per_node // tp)
    if budget_bytes > 0:
        while shard < dp and SHARDED_STATE_BYTES * stage_params / tp / shard > HSDP_STATE_SHARE * budget_bytes:
            shard *= 2
    return shard if 1 < shard < dp and dp % shard == 0 else 0


@dataclass(frozen=True)
class StepConfig(StepGeometry):
    """One point of the outer search: how a step is cut into stages and micro-batches."""

    pp: int
    num_micro_batches: int
    global_batch_size: int
    schedule: str
    world_size: int
    cp: int = 1
    offload: bool = False

    def shape(self) -> StepShape:
        return StepShape(
            self.pp,
            self.num_micro_batches,
            self.micro_batch_size,
            self.devices_per_stage,
            self.schedule,
            cp=self.cp,
            offload=self.offload,
        )


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _powers_of_two_up_to(limit: int) -> list[int]:
    values, v = [], 1
    while v <= limit:
        values.append(v)
        v *= 2
    return values


def default_max_batch(spec: ModelSpec, world_size: int) -> int:
    """Largest searched global batch: a power of two with at most 4M tokens, at least one sample per GPU."""
    per_sample = max(1, spec.tokens_per_sample)
    cap = max(1, TOKENS_PER_STEP_CAP // per_sample)
    return max(_powers_of_two_up_to(max(cap, world_size))[-1], 1)


def step_configs(
    spec: ModelSpec,
    world_size: int,
    global_batch_size: int | None,
    max_global_batch_size: int | None = None,
    *,
    accumulate_without_pipeline: bool = True,
    cp_degrees: tuple[int, ...] | None = None,
    offload: bool = False,
    max_pp: int | None = None,
) -> list[StepConfig]:
    """Pipeline degrees, batches and micro-batch counts the search visits (docs/search.md).

    With pp = 1, more than one micro-batch means gradient accumulation inside one step: the runtime cuts the
    batch into ``plan.num_micro_batches`` (training/batching.py) with gradient sync on the last one only, as
    pipelining does. ``accumulate_without_pipeline=False`` keeps pp = 1 configs to a single micro-batch, for a
    runtime that runs the whole batch in one forward/backward. ``cp_degrees`` (default
    :func:`default_cp_degrees`) are the context-parallel degrees tried where they divide a stage; ``offload``
    prices every config with CPU offload. ``max_pp`` caps the pipeline degree (1 for a
    model whose head the runtime cannot run as pipeline stages: the search never proposes what it refuses).
    """
    cps = cp_degrees if cp_degrees is not None else default_cp_degrees(spec, world_size)
    pairs = _batch_splits(spec, world_size, global_batch_size, max_global_batch_size)
    configs: set[StepConfig] = set()
    for pp in divisors(world_size):
        if pp > spec.num_blocks or (max_pp is not None and pp > max_pp):
            continue
        for batch, m in pairs:
            if pp == 1 and m > 1 and not accumulate_without_pipeline:
                continue
            schedule = "1f1b" if m >= pp else "gpipe"
            for cp in cps:
                if (world_size // pp) % cp == 0 and (cp == 1 or spec.seq_len % (2 * cp) == 0):
                    configs.add(StepConfig(pp, m, batch, schedule, world_size, cp, offload))
    return sorted(configs, key=lambda c: (c.pp, c.cp, c.global_batch_size, c.num_micro_batches))


def default_cp_degrees(spec: ModelSpec, world_size: int) -> tuple[int, ...]:
    """Context-parallel degrees the search tries: powers of two for the causal decoders of ``CP_MODEL_TYPES``
    with sequences of at least ``CP_MIN_SEQ_LEN`` tokens, else 1."""
    if spec.seq_len < CP_MIN_SEQ_LEN or spec.model_type not in CP_MODEL_TYPES:
        return (1,)
    return tuple(_powers_of_two_up_to(world_size))


def _batch_splits(
    spec: ModelSpec, world_size: int, global_batch_size: int | None, max_global_batch_size: int | None
) -> list[tuple[int, int]]:
    """(global batch, micro-batches) pairs: every split of a given batch, else per micro-batch size both the
    batch of one micro-batch and the largest batch (more micro-batches of one size only shrink the bubble)."""
    if global_batch_size is not None:
        return [(global_batch_size, m) for m in divisors(global_batch_size)]
    cap = max_global_batch_size or default_max_batch(spec, world_size)
    pairs = []
    for mb in _powers_of_two_up_to(cap):
        pairs.append((mb, 1))  # one micro-batch: the whole batch at once
        pairs.append((cap, cap // mb))  # the largest batch made of micro-batches of mb
    return pairs


def tp_options(spec: ModelSpec, hardware: HardwareProfile, devices: int) -> list[int]:
    """TP degrees inside one node that divide the stage and that at least one block supports."""
    gpn = hardware.gpus_per_node
    return [t for t in divisors(devices) if t <= gpn and any(b.supports_tp(t) for b in spec.blocks)]


def vocab_supports(spec: ModelSpec, tp: int) -> bool:
    """The vocab layers split by TP must divide (the vocabulary for the embedding and LM head)."""
    if tp == 1:
        return True
    for layer in spec.layers:
        if layer.is_block:
            continue
        if layer.tp_params and layer.vocab_size and layer.vocab_size % tp:
            return False
    return True
