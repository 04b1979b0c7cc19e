"""Phase 3, step 1 (one plain process, no GPU needed): the plans to race, each with its prediction.

    python benchmarks/multi_gpu/plans.py --num_gpus 4 --model 1.3b --seq_len 2048 --global_batch 32 \
        --hardware hw.json --model_profile model.json --out OUT/speed

Writes ``OUT/speed/config/config.json`` (the Llama config every run builds with random weights),
``OUT/speed/plans/<name>.json`` and ``OUT/speed/plans.json`` (the index: name, what it is, predicted step time,
throughput, MFU and peak memory, whether the cost model expects it to fit). The plans, all for the same model,
sequence length, global batch and memory budget (default: the hardware profile's device memory):

- ``searched``: ``search_plan`` with the phase-2 hardware and model profiles;
- ``uniform_ddp``, ``uniform_zero3``, ``uniform_tp<k>_zero3``: one strategy for every block, the fastest
  predicted variant of it (activation checkpointing on or off, gradient-accumulation micro-batches) that fits;
  when none fits, the one needing the least memory, marked ``predicted_fits: false`` (it still runs: the
  measurement says whether it really runs out of memory);
- ``best_uniform``: the search's own fastest uniform plan, when it is not one of the above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def build_inputs(args):
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.profiled_costs import profiled_source_for
    from galvatron_hf.profiler.builtin_hardware import load_hardware

    config = common.llama_config(args.model, args.seq_len)
    config_dir = args.out / "config"
    config.save_pretrained(config_dir)
    spec = describe_model(config, seq_len=args.seq_len)
    hardware = load_hardware(args.hardware)
    compute, notes = profiled_source_for(args.model_profile, spec, hardware, args.precision, "sdpa")
    memory_gb = args.memory_gb or hardware.device.memory_gb
    return config_dir, spec, hardware, compute, notes, memory_gb


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fastest_uniform(spec, hardware, compute, args, memory_gb: float, tp: int, dp_type: str):
    """The fastest fitting (checkpointing, micro-batches) variant of one uniform layout, else the smallest."""
    from galvatron_hf.planner import estimate_plan, uniform_plan
    from galvatron_hf.planner.plan import PlanError

    dp = args.num_gpus // tp
    options = []
    for checkpoint in (False, True):
        for micro_batches in _divisors(args.global_batch):
            if (args.global_batch // micro_batches) % dp:
                continue
            try:
                plan = uniform_plan(
                    spec,
                    args.num_gpus,
                    global_batch_size=args.global_batch,
                    tp=tp,
                    dp_type=dp_type,
                    checkpoint=checkpoint,
                    num_micro_batches=micro_batches,
                    mixed_precision=args.precision,
                )
            except PlanError:
                continue
            report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, compute=compute)
            options.append((report.fits(memory_gb), plan.with_predicted(report.predicted)))
    if not options:
        return None, False
    fitting = [p for fits, p in options if fits]
    if fitting:
        return min(fitting, key=lambda p: p.predicted.step_time_s), True
    return min((p for _, p in options), key=lambda p: max(p.predicted.peak_memory_gb)), False


def describe(plan) -> str:
    """One line: pipeline, per-block strategies collapsed, vocabulary strategy."""
    runs: list[list] = []
    for layer in plan.layers:
        key = (layer.stage, layer.tp, layer.dp, layer.dp_type, layer.checkpoint)
        if runs and runs[-1][0] == key:
            runs[-1][1] += 1
        else:
            runs.append([key, 1])
    blocks = ", ".join(f"{n}x(s{s} tp{t} dp{d} {k}{' +ckpt' if c else ''})" for (s, t, d, k, c), n in runs)
    vocab = plan.vocab
    return (
        f"pp={plan.pp} {plan.schedule} M={plan.num_micro_batches} B={plan.global_batch_size}; {blocks}; "
        f"vocab tp{vocab.tp} dp{vocab.dp} {vocab.dp_type}"
    )


def entry(name: str, kind: str, plan, fits: bool, plans_dir: Path, searched=None) -> dict:
    """An index entry; ``same_layout_as`` names the searched plan when this one is identical to it (it is then
    not run again: the searched plan's measurement stands for both)."""
    path = plan.save(plans_dir / f"{name}.json")
    predicted = plan.predicted
    same = "searched" if searched is not None and same_layout(plan, searched) else None
    return {
        "name": name,
        "kind": kind,
        "plan_file": str(path),
        "layout": describe(plan),
        "predicted_fits": fits,
        "same_layout_as": same,
        "predicted": {
            "step_time_s": predicted.step_time_s,
            "tokens_per_s": predicted.tokens_per_s,
            "mfu": predicted.mfu,
            "peak_memory_gb": max(predicted.peak_memory_gb),
            "source": predicted.source,
        },
    }


def same_layout(a, b) -> bool:
    strip = [{k: v for k, v in p.to_dict().items() if k != "predicted"} for p in (a, b)]
    return strip[0] == strip[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_gpus", type=int, required=True)
    parser.add_argument("--model", default="1.3b", choices=sorted(common.MODEL_SHAPES))
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument(
        "--global_batch",
        type=int,
        required=True,
        help="samples per step, same for every run",
    )
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument(
        "--hardware",
        default="h200",
        help="hardware JSON from phase 2, or a built-in name",
    )
    parser.add_argument(
        "--model_profile",
        default=None,
        help="model profile JSON from phase 2 (optional)",
    )
    parser.add_argument(
        "--memory_gb",
        type=float,
        default=None,
        help="budget per GPU (default: the device's)",
    )
    parser.add_argument(
        "--tp_degrees",
        type=int,
        nargs="*",
        default=None,
        help="TP degrees of the uniform TP x ZeRO-3 baselines (default: 2, and 4 on 8 GPUs)",
    )
    parser.add_argument("--cpu", action="store_true", help="CPU dry run (recorded in plans.json)")
    parser.add_argument(
        "--config_only",
        action="store_true",
        help="write OUT/config/config.json and stop",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.config_only:
        common.llama_config(args.model, args.seq_len).save_pretrained(args.out / "config")
        return 0

    from galvatron_hf.planner import ImpossibleBudgetError, search_plan
    from galvatron_hf.planner.plan import Plan

    config_dir, spec, hardware, compute, notes, memory_gb = build_inputs(args)
    plans_dir = args.out / "plans"
    entries, skipped = [], []
    try:
        result = search_plan(
            spec,
            hardware,
            args.num_gpus,
            memory_gb,
            global_batch_size=args.global_batch,
            mixed_precision=args.precision,
            compute=compute,
        )
        searched = result.plan
        entries.append(entry("searched", "ours: searched plan", searched, True, plans_dir))
        search = {
            "seconds": result.stats.seconds,
            "configs": result.stats.configs,
            "certified": result.stats.certified,
        }
    except ImpossibleBudgetError as err:
        result, searched, search = (
            None,
            None,
            {"error": str(err), "min_memory_gb": err.min_memory_gb},
        )
    tp_degrees = args.tp_degrees or [t for t in (2, 4) if t <= args.num_gpus and (t == 2 or args.num_gpus >= 8)]
    layouts = [("uniform_ddp", 1, "ddp"), ("uniform_zero3", 1, "zero3")]
    layouts += [(f"uniform_tp{t}_zero3", t, "zero3") for t in tp_degrees if args.num_gpus % t == 0]
    for name, tp, dp_type in layouts:
        plan, fits = fastest_uniform(spec, hardware, compute, args, memory_gb, tp, dp_type)
        if plan is None:
            skipped.append(
                {
                    "name": name,
                    "reason": "no micro-batch count splits the batch over the DP ranks",
                }
            )
            continue
        entries.append(entry(name, f"ours: uniform {dp_type} tp{tp}", plan, fits, plans_dir, searched))
    if result is not None and result.best_uniform is not None:
        best = result.best_uniform.plan
        if not any(same_layout(best, Plan.load(e["plan_file"])) for e in entries):
            entries.append(
                entry(
                    "best_uniform",
                    "ours: search's best uniform plan",
                    best,
                    True,
                    plans_dir,
                )
            )
    index = {
        "phase": "plans",
        "cpu_dry_run": args.cpu,
        "model": {
            "shape": args.model,
            **common.MODEL_SHAPES[args.model],
            "params": spec.total_params,
        },
        "config_dir": str(config_dir),
        "num_gpus": args.num_gpus,
        "seq_len": args.seq_len,
        "global_batch_size": args.global_batch,
        "precision": args.precision,
        "memory_budget_gb": memory_gb,
        "hardware": {
            "source": str(args.hardware),
            "name": hardware.name,
            "device": hardware.device.name,
            "peak_tflops": hardware.device.peak_tflops,
            "memory_gb": hardware.device.memory_gb,
        },
        "model_profile": args.model_profile,
        "cost_sources": notes,
        "forward_flops_per_sample": spec.forward_flops,
        "tokens_per_sample": spec.tokens_per_sample,
        "search": search,
        "plans": entries,
        "skipped": skipped,
    }
    common.write_json(args.out / "plans.json", index)
    for e in entries:
        p = e["predicted"]
        print(
            f"{e['name']:22s} fits={e['predicted_fits']!s:5s} step {p['step_time_s']:.3f} s  "
            f"peak {p['peak_memory_gb']:.2f} GB  {e['layout']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
