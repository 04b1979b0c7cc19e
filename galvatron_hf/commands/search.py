"""`galvatron-hf search`: find the fastest plan that fits, or price one uniform plan.

Pure Python (no torch.distributed): runs on a laptop. Without the uniform flags it searches; with any of
--pp/--tp/--dp_type/--checkpoint/--num_micro_batches/--schedule it prices that one uniform plan instead.
Exit codes: 0 done, 2 bad input, 3 no plan fits the memory budget (the smallest budget that fits is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from galvatron_hf.planner.plan import (
    DP_TYPES,
    MIXED_PRECISIONS,
    SCHEDULES,
    Plan,
)

EXIT_BAD_INPUT = 2
EXIT_NO_FIT = 3
UNIFORM_FLAGS = ("pp", "tp", "dp_type", "checkpoint", "num_micro_batches", "schedule")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        required=True,
        help="bundled hub id (e.g. meta-llama/Llama-2-7b), config.json or model directory",
    )
    model.add_argument("--seq_len", type=int, default=None, help="tokens per sample (default: the adapter's)")
    model.add_argument("--decoder_seq_len", type=int, default=None, help="target length (T5 only)")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--num_gpus", type=int, required=True, help="GPUs in total")
    cluster.add_argument(
        "--num_nodes",
        type=int,
        default=None,
        help="nodes (default: num_gpus / GPUs per node of the hardware, rounded up)",
    )
    cluster.add_argument(
        "--memory_gb",
        type=float,
        default=None,
        help="memory budget per GPU in GB (1e9 bytes; default: the device's memory less 8%% headroom for allocator fragmentation)",
    )
    cluster.add_argument(
        "--hardware",
        default="h100",
        help="built-in node (h100, h200, a100) or a JSON profile from `galvatron-hf profile hardware`",
    )
    cluster.add_argument(
        "--profile",
        "--model_profile",
        dest="profile",
        default=None,
        help="model profile JSON (`galvatron-hf profile model`): measured layer costs instead of FLOPs",
    )
    training = parser.add_argument_group("training")
    training.add_argument(
        "--global_batch_size",
        type=int,
        default=None,
        help="samples per optimizer step (default: searched, up to 4M tokens)",
    )
    training.add_argument(
        "--max_global_batch_size",
        type=int,
        default=None,
        help="largest batch the search tries when --global_batch_size is absent",
    )
    training.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default="bf16")
    training.add_argument("--attn_impl", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa")
    uniform = parser.add_argument_group("uniform plan (price one plan instead of searching)")
    uniform.add_argument("--pp", type=int, default=None, help="pipeline stages")
    uniform.add_argument("--tp", type=int, default=None, help="tensor-parallel degree of every block")
    uniform.add_argument("--dp_type", choices=DP_TYPES, default=None, help="data-parallel flavour of every block")
    uniform.add_argument("--checkpoint", action="store_true", default=None, help="checkpoint every block")
    uniform.add_argument("--num_micro_batches", type=int, default=None, help="micro-batches per step")
    uniform.add_argument("--schedule", choices=SCHEDULES, default=None, help="pipeline schedule")
    output = parser.add_argument_group("output")
    output.add_argument("--output", default=None, help="write the plan here (JSON, version 1)")
    output.add_argument("--json", action="store_true", help="print machine-readable JSON only on stdout")


def run(args: argparse.Namespace) -> int:
    from galvatron_hf.planner.search import ImpossibleBudgetError

    try:
        spec, hardware, memory_gb = _inputs(args)
        if any(getattr(args, flag) is not None for flag in UNIFORM_FLAGS):
            return _price_uniform(args, spec, hardware, memory_gb)
        return _search(args, spec, hardware, memory_gb)
    except ImpossibleBudgetError as err:
        _fail(args, str(err), EXIT_NO_FIT, min_memory_gb=err.min_memory_gb)
        return EXIT_NO_FIT
    except (ValueError, OSError) as err:  # PlanError, HardwareProfileError, unknown models are ValueErrors
        _fail(args, str(err), EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT


# ----- inputs -------------------------------------------------------------------------------------------
def _inputs(args):
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.search import default_memory_gb
    from galvatron_hf.profiler.builtin_hardware import load_hardware

    if args.num_gpus < 1:
        raise ValueError(f"--num_gpus must be >= 1, got {args.num_gpus}")
    hardware = load_hardware(args.hardware, args.num_nodes)
    if args.num_nodes is None:
        nodes = max(1, math.ceil(args.num_gpus / hardware.gpus_per_node))
        hardware = load_hardware(args.hardware, nodes)
    memory_gb = args.memory_gb if args.memory_gb is not None else default_memory_gb(hardware)
    spec = describe_model(args.model_name_or_path, seq_len=args.seq_len, decoder_seq_len=args.decoder_seq_len)
    return spec, hardware, memory_gb


def _compute(args, spec, hardware):
    """The layer cost source (measured with --profile, else analytic) and lines saying where figures come from."""
    from galvatron_hf.planner.profiled_costs import profiled_source_for

    return profiled_source_for(args.profile, spec, hardware, args.mixed_precision, args.attn_impl)


def _sources_to_stderr(lines: list[str]) -> None:
    """With --json stdout carries JSON only; where figures come from (and profile warnings) go to stderr."""
    for line in lines:
        print(line, file=sys.stderr)


def _progress(args):
    """Progress goes to stderr (stdout stays the plan, or pure JSON with --json)."""
    return lambda message: print(message, file=sys.stderr, flush=True)


# ----- search -------------------------------------------------------------------------------------------
def _search(args, spec, hardware, memory_gb) -> int:
    from galvatron_hf.planner.search import search_plan

    compute, sources = _compute(args, spec, hardware)
    result = search_plan(
        spec,
        hardware,
        args.num_gpus,
        memory_gb,
        global_batch_size=args.global_batch_size,
        mixed_precision=args.mixed_precision,
        attn_impl=args.attn_impl,
        progress=_progress(args),
        max_global_batch_size=args.max_global_batch_size,
        compute=compute,
    )
    plan = result.best.plan
    if args.output:
        plan.save(args.output)
    if args.json:
        _sources_to_stderr(sources)
        print(json.dumps(_result_json(result, spec, hardware), indent=2))
        return 0
    print(_header(spec, hardware, args.num_gpus, memory_gb, args.mixed_precision))
    for line in sources:
        print(f"  {line}")
    stats = result.stats
    print(
        f"searched {stats.configs} step configs ({stats.relaxed_solves} bounded, {stats.exact_solves} solved "
        f"exactly) in {stats.seconds:.2f} s"
    )
    print()
    print(format_plan(plan, result.best.report))
    print()
    print(_comparison(result, spec))
    if args.output:
        print(f"\nplan written to {args.output}")
    return 0


def _price_uniform(args, spec, hardware, memory_gb) -> int:
    from galvatron_hf.planner.cost_model import estimate_plan
    from galvatron_hf.planner.search import uniform_plan

    pp = args.pp or 1
    tp = args.tp or 1
    micro_batches = args.num_micro_batches or 1
    devices = args.num_gpus // pp if args.num_gpus % pp == 0 else 1
    batch = args.global_batch_size or micro_batches * devices  # splits over every dp of the stage
    schedule = args.schedule or ("1f1b" if micro_batches >= pp else "gpipe")
    plan = uniform_plan(
        spec,
        args.num_gpus,
        global_batch_size=batch,
        pp=pp,
        tp=tp,
        dp_type=args.dp_type or "ddp",
        checkpoint=bool(args.checkpoint),
        num_micro_batches=micro_batches,
        schedule=schedule,
        mixed_precision=args.mixed_precision,
    )
    compute, sources = _compute(args, spec, hardware)
    report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, attn_impl=args.attn_impl, compute=compute)
    plan = plan.with_predicted(report.predicted)
    fits = report.fits(memory_gb)
    if args.output and fits:
        plan.save(args.output)
    if args.json:
        _sources_to_stderr(sources)
        print(json.dumps({"plan": plan.to_dict(), "fits": fits, "stages": _stages_json(report)}, indent=2))
    else:
        print(_header(spec, hardware, args.num_gpus, memory_gb, args.mixed_precision))
        for line in sources:
            print(f"  {line}")
        print()
        print(format_plan(plan, report))
        if args.output and fits:
            print(f"\nplan written to {args.output}")
    if not fits:
        print(
            f"this plan needs {report.peak_memory_gb:.1f} GB per GPU, more than the {memory_gb:g} GB budget; "
            "add --checkpoint, use --dp_type zero3, raise --tp / --pp or --num_micro_batches",
            file=sys.stderr,
        )
        return EXIT_NO_FIT
    return 0


# ----- formatting ---------------------------------------------------------------------------------------
def _header(spec, hardware, num_gpus, memory_gb, mixed_precision) -> str:
    return (
        f"galvatron-hf search: {spec.name} ({spec.architecture}, {spec.total_params / 1e9:.2f}B params, "
        f"seq {spec.seq_len}) on {num_gpus} GPUs ({hardware.num_nodes} node(s) x {hardware.gpus_per_node}, "
        f"{hardware.name}), {memory_gb:g} GB per GPU, {mixed_precision}"
    )


def layer_runs(plan: Plan) -> list[tuple[int, int, Any]]:
    """Runs of identical consecutive block strategies: (first, last, strategy)."""
    runs: list[tuple[int, int, Any]] = []
    for index, layer in enumerate(plan.layers):
        if runs and runs[-1][2] == layer:
            runs[-1] = (runs[-1][0], index, layer)
        else:
            runs.append((index, index, layer))
    return runs


def _strategy_text(tp: int, dp: int, dp_type: str, checkpoint: bool = False) -> str:
    text = f"tp={tp} dp={dp} {dp_type}"
    return text + (" +checkpoint" if checkpoint else "")


def format_plan(plan: Plan, report) -> str:
    """The plan as people read it: one line per run of identical blocks, then the predictions."""
    micro = plan.micro_batch_size
    lines = [
        f"plan: pp={plan.pp}, schedule {plan.schedule}, global batch {plan.global_batch_size} = "
        f"{plan.num_micro_batches} micro-batch(es) of {micro}",
        f"  vocab (embedding / head): {_strategy_text(plan.vocab.tp, plan.vocab.dp, plan.vocab.dp_type)}",
    ]
    for first, last, layer in layer_runs(plan):
        blocks = f"block {first}" if first == last else f"blocks {first}-{last}"
        lines.append(
            f"  stage {layer.stage}  {blocks:<14} {_strategy_text(layer.tp, layer.dp, layer.dp_type, layer.checkpoint)}"
        )
    p = plan.predicted
    if p is not None:
        mfu = f", MFU {p.mfu * 100:.1f}%" if p.mfu is not None else ""
        lines.append(
            f"predicted: step {p.step_time_s:.3f} s, {p.samples_per_s:.2f} samples/s, "
            f"{p.tokens_per_s:,.0f} tokens/s{mfu} ({p.source} costs)"
        )
        memory = ", ".join(f"{gb:.1f}" for gb in p.peak_memory_gb)
        lines.append(f"peak memory per stage (GB): {memory}")
    return "\n".join(lines)


def _comparison(result, spec) -> str:
    best = result.best.report.predicted
    rows = [("searched plan", result.best)]
    if result.best_uniform is not None:
        u = result.best_uniform.plan
        layer = u.layers[0]
        label = f"best uniform (pp={u.pp} {_strategy_text(layer.tp, layer.dp, layer.dp_type, layer.checkpoint)}, M={u.num_micro_batches}, B={u.global_batch_size})"
        rows.append((label, result.best_uniform))
    else:
        rows.append(("best uniform", None))
    for name, label in (("ddp", "plain DDP"), ("zero3", "plain ZeRO-3")):
        evaluated = result.baselines.get(name)
        if evaluated is not None:
            label += f" (M={evaluated.plan.num_micro_batches}, B={evaluated.plan.global_batch_size})"
        rows.append((label, evaluated))
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}}  {'samples/s':>10} {'tokens/s':>12} {'MFU':>6} {'peak GB':>8}  vs searched"]
    for label, evaluated in rows:
        if evaluated is None:
            lines.append(f"{label:<{width}}  {'no plan fits':>10}")
            continue
        p = evaluated.report.predicted
        mfu = f"{p.mfu * 100:5.1f}%" if p.mfu is not None else "   n/a"
        peak = evaluated.report.peak_memory_gb
        if not evaluated.report.fits(result.memory_gb):
            lines.append(f"{label:<{width}}  does not fit: needs {peak:.1f} GB per GPU")
            continue
        ratio = best.samples_per_s / p.samples_per_s
        lines.append(
            f"{label:<{width}}  {p.samples_per_s:>10.2f} {p.tokens_per_s:>12,.0f} {mfu:>6} {peak:>8.1f}  x{ratio:.2f}"
        )
    return "\n".join(lines)


# ----- JSON ---------------------------------------------------------------------------------------------
def _stages_json(report) -> list[dict]:
    return [
        {
            "stage": s.stage,
            "blocks": list(s.blocks),
            "time_per_micro_batch_s": s.time_per_micro_batch_s,
            "micro_batches_in_flight": s.in_flight,
            "peak_memory_gb": s.peak_memory_gb,
            "static_gb": s.static_gb,
            "activation_gb": s.activation_gb,
            "workspace_gb": s.workspace_gb,
            "reserved_gb": s.reserved_gb,
        }
        for s in report.stages
    ]


def _evaluated_json(evaluated, memory_gb) -> dict | None:
    if evaluated is None:
        return None
    return {
        "plan": evaluated.plan.to_dict(),
        "fits": evaluated.report.fits(memory_gb),
        "stages": _stages_json(evaluated.report),
    }


def _result_json(result, spec, hardware) -> dict:
    stats = result.stats
    return {
        "model": spec.name,
        "hardware": hardware.name,
        "memory_gb": result.memory_gb,
        "best": _evaluated_json(result.best, result.memory_gb),
        "best_uniform": _evaluated_json(result.best_uniform, result.memory_gb),
        "baselines": {name: _evaluated_json(e, result.memory_gb) for name, e in result.baselines.items()},
        "search": {
            "configs": stats.configs,
            "relaxed_solves": stats.relaxed_solves,
            "exact_solves": stats.exact_solves,
            "pruned": stats.pruned,
            "seconds": stats.seconds,
            "certified": stats.certified,
        },
    }


def _fail(args, message: str, code: int, min_memory_gb: float | None = None) -> None:
    print(f"galvatron-hf search: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        payload = {"error": message, "exit_code": code}
        if min_memory_gb is not None:
            payload["min_memory_gb"] = min_memory_gb
        print(json.dumps(payload))
