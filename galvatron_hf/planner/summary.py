"""The plan as people read it: what `galvatron-hf search` prints and ``GalvatronTrainer`` prints before training.

:func:`format_summary` is the one printer of a resolved plan request (``planner/request.py``): a header (the
plan's source, the model, the devices, the hardware, the budget), where each figure comes from, the plan one
line per run of identical blocks, and the prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from galvatron_hf.planner.plan import LayerStrategy, Plan
    from galvatron_hf.planner.request import ResolvedPlan


def format_summary(resolved: ResolvedPlan) -> str:
    """Header, figure sources, then :func:`format_plan`."""
    lines = [_header(resolved)]
    lines += [f"  {line}" for line in resolved.figure_sources]
    lines.append(format_plan(resolved.plan))
    lines += [f"note: {note}" for note in resolved.notes]
    return "\n".join(lines)


def _header(resolved: ResolvedPlan) -> str:
    spec, hardware, request = resolved.spec, resolved.hardware, resolved.request
    devices = f"{request.world_size} device{'s' if request.world_size != 1 else ''}"
    return (
        f"galvatron plan ({resolved.source}): {spec.name} ({spec.architecture}, {spec.total_params / 1e9:.2f}B "
        f"params, seq {spec.seq_len}) on {devices} ({hardware.num_nodes} node(s) x "
        f"{hardware.gpus_per_node}, {hardware.name}), {resolved.memory_gb:g} GB per device, "
        f"{request.mixed_precision}, {request.attention} attention"
    )


def layer_runs(plan: Plan) -> list[tuple[int, int, LayerStrategy]]:
    """Runs of identical consecutive block strategies: (first, last, strategy)."""
    runs: list[tuple[int, int, LayerStrategy]] = []
    for index, layer in enumerate(plan.layers):
        if runs and runs[-1][2] == layer:
            runs[-1] = (runs[-1][0], index, layer)
        else:
            runs.append((index, index, layer))
    return runs


def strategy_text(
    tp: int, dp: int, dp_type: str, checkpoint: bool = False, dp_shard: int = 0, sp: bool = False
) -> str:
    text = f"tp={tp} dp={dp} {dp_type}" + (f" (shard groups of {dp_shard})" if dp_shard else "")
    return text + (" +sp" if sp else "") + (" +checkpoint" if checkpoint else "")


def format_plan(plan: Plan) -> str:
    """One line per run of identical blocks, then the prediction when the plan holds one."""
    lines = [
        f"plan: pp={plan.pp}, schedule {plan.schedule}, global batch {plan.global_batch_size} = "
        f"{plan.num_micro_batches} micro-batch(es) of {plan.micro_batch_size}"
        + (f", cp={plan.cp} (sequence split over {plan.cp} ranks)" if plan.cp > 1 else "")
        + (f", CPU offload of {' / '.join(plan.offload)}" if plan.offload else ""),
        f"  vocab (embedding / head): {strategy_text(plan.vocab.tp, plan.vocab.dp, plan.vocab.dp_type, dp_shard=plan.vocab.dp_shard)}",
    ]
    for first, last, layer in layer_runs(plan):
        blocks = f"block {first}" if first == last else f"blocks {first}-{last}"
        lines.append(
            f"  stage {layer.stage}  {blocks:<14} "
            f"{strategy_text(layer.tp, layer.dp, layer.dp_type, layer.checkpoint, layer.dp_shard, layer.sp)}"
        )
    p = plan.predicted
    if p is not None:
        mfu = f", MFU {p.mfu * 100:.1f}%" if p.mfu is not None else ""
        lines.append(
            f"predicted: step {_duration(p.step_time_s)}, {p.samples_per_s:.2f} samples/s, "
            f"{p.tokens_per_s:,.0f} tokens/s{mfu} ({p.source} costs)"
        )
        memory = ", ".join(_gigabytes(gb) for gb in p.peak_memory_gb)
        lines.append(f"peak memory per stage (GB): {memory}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """Seconds from one second up, milliseconds below (a tiny model's step on a GPU takes microseconds)."""
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _gigabytes(gb: float) -> str:
    return f"{gb:.1f}" if gb >= 1 else f"{gb:.3f}"
