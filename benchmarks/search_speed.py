"""How long `search_plan` takes, and what it finds, on the issue's reference cases.

Targets (a 2-core CPU machine): Llama-2-70b on 64 GPUs (8 nodes) x 80 GB at seq 4096 in at most 10 s,
Llama-2-7b on 8 GPUs in at most 2 s; at scale, Llama-2-70b on 1,024 GPUs (128 nodes) and the Llama 3.1 405B
shape on 4,096 GPUs (512 nodes) at seq 8192 in a few seconds (10 s); the new dimensions: Meta-Llama-3-8B at seq
65536 on 8 x 80 GB (a plan with context or sequence parallelism) and on one 24 GB GPU at seq 2048 (a plan with CPU
offload), each in a few seconds; Llama-2-13b on 8 x 24 GB at seq 1024 (the state alone cannot fit: proven at
once, then offloaded). Times cover the search only (describe_model, which imports the HF config
classes, is timed apart). Each case runs ``--repeats`` times; the median is reported. Results go to
benchmarks/results/search_speed.json (and a short .md table beside it).

    python benchmarks/search_speed.py [--repeats 3] [--hardware h100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Case:
    model: str
    num_gpus: int
    memory_gb: float
    seq_len: int
    target_s: float


CASES = (
    Case("meta-llama/Llama-2-7b", 8, 80.0, 4096, 2.0),
    Case("meta-llama/Llama-2-7b", 8, 40.0, 4096, 2.0),
    Case("meta-llama/Llama-2-70b-hf", 64, 80.0, 4096, 10.0),
    Case("meta-llama/Llama-2-70b-hf", 1024, 80.0, 4096, 10.0),
    Case("meta-llama/Llama-3.1-405B", 4096, 80.0, 8192, 10.0),
    Case("meta-llama/Meta-Llama-3-8B", 8, 80.0, 65536, 5.0),
    Case("meta-llama/Meta-Llama-3-8B", 1, 24.0, 2048, 5.0),
    Case("meta-llama/Llama-2-13b-hf", 8, 24.0, 1024, 10.0),
)


def plan_summary(plan) -> dict:
    from galvatron_hf.planner.summary import layer_runs

    runs = [
        {
            "blocks": [first, last],
            "stage": s.stage,
            "tp": s.tp,
            "dp": s.dp,
            "dp_type": s.dp_type,
            "dp_shard": s.dp_shard,
            "checkpoint": s.checkpoint,
            "sp": s.sp,
        }
        for first, last, s in layer_runs(plan)
    ]
    return {
        "pp": plan.pp,
        "schedule": plan.schedule,
        "global_batch_size": plan.global_batch_size,
        "num_micro_batches": plan.num_micro_batches,
        "stage_sizes": plan.stage_sizes,
        "cp": plan.cp,
        "offload": plan.offload,
        "vocab": {
            "tp": plan.vocab.tp,
            "dp": plan.vocab.dp,
            "dp_type": plan.vocab.dp_type,
            "dp_shard": plan.vocab.dp_shard,
        },
        "layer_runs": runs,
    }


def predicted(evaluated) -> dict | None:
    if evaluated is None:
        return None
    p = evaluated.report.predicted
    return {
        "samples_per_s": p.samples_per_s,
        "tokens_per_s": p.tokens_per_s,
        "step_time_s": p.step_time_s,
        "mfu": p.mfu,
        "peak_memory_gb": p.peak_memory_gb,
        "fits": evaluated.report.fits(p.memory_budget_gb) if p.memory_budget_gb else None,
    }


def run_case(case: Case, hardware_name: str, repeats: int) -> dict:
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.search import search_plan
    from galvatron_hf.profiler.builtin_hardware import hardware_for

    started = time.perf_counter()
    spec = describe_model(case.model, seq_len=case.seq_len)
    describe_s = time.perf_counter() - started
    hardware = hardware_for(hardware_name, case.num_gpus)
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = search_plan(spec, hardware, case.num_gpus, case.memory_gb)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    stats = result.stats
    median = statistics.median(times)
    return {
        "model": case.model,
        "num_gpus": case.num_gpus,
        "num_nodes": hardware.num_nodes,
        "memory_gb": case.memory_gb,
        "seq_len": case.seq_len,
        "hardware": hardware.name,
        "search_s_median": round(median, 3),
        "search_s_all": [round(t, 3) for t in times],
        "search_cpu_s_median": round(statistics.median(cpu_times), 3),  # less sensitive to a busy machine
        "target_s": case.target_s,
        "within_target": median <= case.target_s,
        "describe_model_s": round(describe_s, 3),
        "search": {
            "configs": stats.configs,
            "relaxed_solves": stats.relaxed_solves,
            "exact_solves": stats.exact_solves,
            "certified": stats.certified,
        },
        "plan": plan_summary(result.best.plan),
        "predicted": predicted(result.best),
        "best_uniform": predicted(result.best_uniform),
        "best_uniform_plan": plan_summary(result.best_uniform.plan) if result.best_uniform else None,
        "plain_ddp": predicted(result.baselines.get("ddp")),
        "plain_zero3": predicted(result.baselines.get("zero3")),
        "notes": list(result.notes),
    }


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# search_speed (benchmarks/search_speed.py)",
        "",
        f"{meta['machine']}, Python {meta['python']}, numpy {meta['numpy']}, {meta['date']}, load average "
        f"{meta['load_average']} (the machine is shared: wall times include waiting for a core; CPU time does "
        "not). Search time only (median); analytic costs, built-in hardware.",
        "",
        "| case | search wall s (target) | CPU s | plan | samples/s | MFU | peak GB/stage | best uniform | plain ZeRO-3 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        p, plan = r["predicted"], r["plan"]
        kinds = sorted(
            {(x["tp"], x["dp_type"], x["dp_shard"], x["checkpoint"], x["sp"]) for x in plan["layer_runs"]}
        )
        layout = "; ".join(
            f"tp{tp} {dt}{f'(shard {sh})' if sh else ''}{' sp' if sp else ''}{' ckpt' if ck else ''}"
            for tp, dt, sh, ck, sp in kinds
        )
        layout += f"; cp{plan['cp']}" if plan["cp"] > 1 else ""
        layout += "; offload" if plan["offload"] else ""
        uniform = r["best_uniform"]["samples_per_s"] if r["best_uniform"] else float("nan")
        zero3 = r["plain_zero3"]
        zero3_text = (
            "n/a"
            if zero3 is None
            else (f"{zero3['samples_per_s']:.2f}" if zero3["fits"] else f"needs {max(zero3['peak_memory_gb']):.0f} GB")
        )
        lines.append(
            f"| {r['model']} {r['num_gpus']} GPUs {r['memory_gb']:g} GB | {r['search_s_median']} ({r['target_s']}) | "
            f"{r['search_cpu_s_median']} | "
            f"pp={plan['pp']} M={plan['num_micro_batches']} B={plan['global_batch_size']} stages={plan['stage_sizes']}: "
            f"{layout} | {p['samples_per_s']:.2f} | {p['mfu'] * 100:.1f}% | {p['peak_memory_gb']} | {uniform:.2f} | "
            f"{zero3_text} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hardware", default="h100")
    parser.add_argument("--output", default=str(RESULTS / "search_speed.json"))
    args = parser.parse_args(argv)
    import numpy

    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.system()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    results = []
    for case in CASES:
        result = run_case(case, args.hardware, args.repeats)
        print(
            f"{case.model} on {case.num_gpus} GPUs x {case.memory_gb:g} GB: {result['search_s_median']} s "
            f"(target {case.target_s} s), {result['predicted']['samples_per_s']:.2f} samples/s",
            file=sys.stderr,
        )
        results.append(result)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {output} and {output.with_suffix('.md')}", file=sys.stderr)
    return 0 if all(r["within_target"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
