"""`galvatron-hf search`: find the fastest plan that fits, or price one uniform plan.

Pure Python (no torch.distributed): runs on a laptop. Without the uniform flags it searches; with any of
--pp/--tp/--dp_type/--checkpoint/--schedule/--num_micro_batches/--sp/--cp/--offload it prices that one uniform plan instead.
The plan options (names, help, defaults) are ``planner.request.PlanOptions``, the fields
``GalvatronTrainingArguments`` has too; the request is resolved by ``planner.request.resolve_plan`` and
printed by ``planner.summary.format_summary``, as the trainer does. The Galvatron-2 names (--pp_deg,
--global_tp_deg, --pipeline_type, --seq_length, --model_profile, --attn_impl, ...) still work, with a warning.
Exit codes: 0 done, 2 bad input, 3 no plan fits the memory budget (the smallest budget that fits is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, get_args, get_type_hints

from galvatron_hf.commands import EXIT_BAD_INPUT, EXIT_NO_FIT
from galvatron_hf.planner.plan import MIXED_PRECISIONS
from galvatron_hf.planner.request import (
    UNIFORM_OPTIONS,
    DeprecatedPlanOptions,
    PlanOptions,
    PlanRequest,
    ResolvedPlan,
    fold_deprecated_names,
    resolve_plan,
)
from galvatron_hf.planner.summary import format_summary, strategy_text

# where each PlanOptions field appears in --help (auto_parallel and galvatron_plan are the trainer's only)
OPTION_GROUPS = {
    "model": ("seq_len", "attn_implementation"),
    "cluster": ("hardware", "num_nodes", "gpus_per_node", "memory_gb", "profile"),
    "training": ("global_batch_size",),
    "uniform plan (price one plan instead of searching)": UNIFORM_OPTIONS,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = {title: parser.add_argument_group(title) for title in (*OPTION_GROUPS, "output")}
    groups["model"].add_argument(
        "--model_name_or_path",
        required=True,
        help="bundled hub id (e.g. meta-llama/Llama-2-7b), config.json or model directory",
    )
    groups["model"].add_argument("--decoder_seq_len", type=int, default=None, help="target length (T5 only)")
    groups["model"].add_argument(
        "--lora_rank",
        type=int,
        default=None,
        help="plan a LoRA fine-tune of this rank: the frozen base has no gradients or optimizer state "
        "(needs galvatron-hf[peft])",
    )
    groups["model"].add_argument(
        "--lora_target_modules",
        default=None,
        help="comma-separated modules LoRA adapts, or all-linear (default: PEFT's default for the model type)",
    )
    groups["cluster"].add_argument("--num_gpus", type=int, required=True, help="GPUs in total")
    groups["training"].add_argument(
        "--max_global_batch_size",
        type=int,
        default=None,
        help="largest batch the search tries when --global_batch_size is absent (default: 4M tokens)",
    )
    groups["training"].add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default="bf16")
    types = _option_types()
    by_name = {f.name: f for f in fields(PlanOptions)}
    for title, names in OPTION_GROUPS.items():
        for name in names:
            _add_option(groups[title], name, types[name], by_name[name].metadata)
    for f in fields(DeprecatedPlanOptions):  # hidden from --help
        _add_option(parser, f.name, _without_none(f.type), f.metadata)
    groups["output"].add_argument("--output", default=None, help="write the plan here (JSON, version 2)")
    groups["output"].add_argument("--json", action="store_true", help="print machine-readable JSON only on stdout")
    groups["output"].add_argument(
        "--report",
        default=None,
        metavar="PLAN.html",
        help="write the HTML plan report here (one self-contained page: layers, memory, timeline, comparison)",
    )


def _option_types() -> dict[str, type]:
    return {name: _without_none(hint) for name, hint in get_type_hints(PlanOptions).items()}


def _without_none(hint: Any) -> type:
    """``int | None`` -> ``int``; ``bool`` stays ``bool``."""
    return next((t for t in get_args(hint) if t is not type(None)), hint)


def _add_option(group, name: str, kind: type, metadata) -> None:
    """One PlanOptions field as a flag; every default is None here (PlanOptions' default applies)."""
    help_text = metadata.get("help")
    if kind is bool:
        group.add_argument(f"--{name}", action="store_true", default=None, help=help_text)
    else:
        group.add_argument(f"--{name}", type=kind, default=None, choices=metadata.get("choices"), help=help_text)


def run(args: argparse.Namespace) -> int:
    from galvatron_hf.parallel.families import max_pipeline_degree
    from galvatron_hf.planner.search import ImpossibleBudgetError

    try:
        for note in fold_deprecated_names(args):
            print(f"galvatron-hf search: warning: {note}", file=sys.stderr)
        request = plan_request(args)
        spec = _describe(args, request.seq_len)
        request.max_pp = max_pipeline_degree(spec)  # never propose pipeline stages the runtime refuses
        resolved = resolve_plan(request, spec, progress=_progress)
        if args.report:
            _write_report(args.report, resolved)
        return _report_search(args, resolved) if resolved.search is not None else _report_uniform(args, resolved)
    except ImpossibleBudgetError as err:
        _fail(args, str(err), EXIT_NO_FIT, min_memory_gb=err.min_memory_gb)
        return EXIT_NO_FIT
    except (ValueError, OSError, ImportError) as err:  # PlanError, HardwareProfileError, unknown models; no peft
        _fail(args, str(err), EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT


def _describe(args: argparse.Namespace, seq_len: int | None):
    """The model's spec; with --lora_rank, the LoRA model's (frozen base, trainable adapters)."""
    from galvatron_hf.adapters import describe_model

    if args.lora_rank is None:
        if args.lora_target_modules is not None:
            raise ValueError("--lora_target_modules needs --lora_rank")
        return describe_model(args.model_name_or_path, seq_len=seq_len, decoder_seq_len=args.decoder_seq_len)
    from galvatron_hf.adapters.lora import describe_lora

    targets = args.lora_target_modules
    if targets is not None and targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    spec = describe_lora(args.model_name_or_path, args.lora_rank, targets, seq_len, args.decoder_seq_len)
    print(
        f"LoRA rank {args.lora_rank}: {spec.trainable_params:,} of {spec.total_params:,} parameters train "
        f"({100 * spec.trainable_params / spec.total_params:.2f}%); the frozen base is priced without gradients "
        "or optimizer state",
        file=sys.stderr,
    )
    return spec


def plan_request(args: argparse.Namespace) -> PlanRequest:
    """The request of the parsed flags: a search unless a uniform flag is given; no per-device batch, so a
    uniform plan without --global_batch_size takes one sample per data-parallel group and micro-batch."""
    return PlanRequest.of(
        args,
        auto_parallel=not PlanOptions.of(args).uniform_flags_given,
        world_size=args.num_gpus,
        mixed_precision=args.mixed_precision,
        max_global_batch_size=args.max_global_batch_size,
    )


def _write_report(path: str, resolved: ResolvedPlan) -> None:
    """The HTML plan report (docs/plan_report.md); written for plans that do not fit too (it shows why)."""
    from galvatron_hf.report import gather_plan_report, write_plan_html

    report = gather_plan_report(
        resolved.spec, resolved.hardware, resolved.plan, resolved.report, resolved.memory_gb, resolved.search
    )
    write_plan_html(path, report)
    print(f"plan report written to {path}", file=sys.stderr)


def _sources_to_stderr(lines) -> None:
    """With --json stdout carries JSON only; where figures come from (and profile warnings) go to stderr."""
    for line in lines:
        print(line, file=sys.stderr)


def _progress(message: str) -> None:
    """Progress goes to stderr (stdout stays the plan, or pure JSON with --json)."""
    print(message, file=sys.stderr, flush=True)


# ----- search -------------------------------------------------------------------------------------------
def _report_search(args, resolved: ResolvedPlan) -> int:
    result, plan = resolved.search, resolved.plan
    if args.output:
        plan.save(args.output)
    if args.json:
        _sources_to_stderr(resolved.figure_sources)
        print(json.dumps(_result_json(result, resolved.spec, resolved.hardware), indent=2))
        return 0
    print(format_summary(resolved))
    for note in result.notes:
        print(f"note: {note}")
    stats = result.stats
    print()
    print(
        f"searched {stats.configs} step configs ({stats.relaxed_solves} bounded, {stats.exact_solves} solved "
        f"exactly) in {stats.seconds:.2f} s"
    )
    print(_comparison(result))
    if args.output:
        print(f"\nplan written to {args.output}")
    return 0


def _report_uniform(args, resolved: ResolvedPlan) -> int:
    plan, report, fits = resolved.plan, resolved.report, resolved.fits
    if args.output and fits:
        plan.save(args.output)
    if args.json:
        _sources_to_stderr(resolved.figure_sources)
        print(json.dumps({"plan": plan.to_dict(), "fits": fits, "stages": _stages_json(report)}, indent=2))
    else:
        print(format_summary(resolved))
        if args.output and fits:
            print(f"\nplan written to {args.output}")
    if not fits:
        print(
            f"this plan needs {report.peak_memory_gb:.1f} GB per GPU, more than the {resolved.memory_gb:g} GB "
            "budget; add --checkpoint, use --dp_type zero3, raise --tp / --pp or --num_micro_batches",
            file=sys.stderr,
        )
        return EXIT_NO_FIT
    return 0


# ----- formatting ---------------------------------------------------------------------------------------
def _comparison(result) -> str:
    best = result.best.report.predicted
    rows = [("searched plan", result.best)]
    if result.best_uniform is not None:
        u = result.best_uniform.plan
        layer = u.layers[0]
        strategy = strategy_text(layer.tp, layer.dp, layer.dp_type, layer.checkpoint)
        label = f"best uniform (pp={u.pp} {strategy}, M={u.num_micro_batches}, B={u.global_batch_size})"
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
        "notes": list(result.notes),
    }


def _fail(args, message: str, code: int, min_memory_gb: float | None = None) -> None:
    print(f"galvatron-hf search: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        payload = {"error": message, "exit_code": code}
        if min_memory_gb is not None:
            payload["min_memory_gb"] = min_memory_gb
        print(json.dumps(payload))
