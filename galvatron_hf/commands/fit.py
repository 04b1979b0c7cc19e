"""`galvatron-hf fit`: will a model fit, on how many GPUs of which memory, and how fast? Offline, in seconds.

One search per (GPU count, memory) cell with a time budget (galvatron_hf/planner/fit.py). Pure Python: no
torch.distributed. Exit codes: 0 done, 2 bad input, 3 nothing in the table fits.
"""

from __future__ import annotations

import argparse
import json
import sys

from galvatron_hf.commands import EXIT_BAD_INPUT, EXIT_NO_FIT
from galvatron_hf.planner.plan import MIXED_PRECISIONS

CELL_WIDTH = 17


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from galvatron_hf.planner.fit import CARD_MEMORY_GB, DEFAULT_TIME_BUDGET_S, GPU_COUNTS

    parser.add_argument(
        "--model_name_or_path",
        required=True,
        help="bundled hub id (e.g. meta-llama/Llama-2-7b), config.json or model directory",
    )
    parser.add_argument("--seq_len", type=int, default=None, help="tokens per sample (default: the adapter's)")
    parser.add_argument("--decoder_seq_len", type=int, default=None, help="target length (T5 only)")
    parser.add_argument(
        "--memory_gb",
        type=float,
        nargs="+",
        default=None,
        help="memory budgets per GPU in GB, used as given (default: cards of "
        + ", ".join(f"{gb:g}" for gb in CARD_MEMORY_GB)
        + " GB, each less 8%% headroom for allocator fragmentation)",
    )
    parser.add_argument(
        "--num_gpus",
        type=int,
        nargs="+",
        default=list(GPU_COUNTS),
        help=f"GPU counts (default: {' '.join(map(str, GPU_COUNTS))}); nodes: as many as the GPUs fill",
    )
    parser.add_argument(
        "--hardware",
        default="h100",
        help="whose speeds (compute, interconnect) to assume: built-in h100, h200, a100 or a JSON profile",
    )
    parser.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default="bf16")
    parser.add_argument(
        "--time_budget_s",
        type=float,
        default=DEFAULT_TIME_BUDGET_S,
        help="seconds per cell after which its search stops at the best plan found so far (0: no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only on stdout")


def run(args: argparse.Namespace) -> int:
    try:
        table = _fit(args)
        _clear_progress()
    except (ValueError, OSError) as err:  # unknown models, hardware profiles and bad sizes are ValueErrors
        print(f"galvatron-hf fit: error: {err}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(err), "exit_code": EXIT_BAD_INPUT}))
        return EXIT_BAD_INPUT
    print(json.dumps(table.to_dict(), indent=2) if args.json else format_table(table))
    return 0 if table.cheapest is not None else EXIT_NO_FIT


def _fit(args: argparse.Namespace):
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.fit import CARD_MEMORY_GB, MemoryColumn, fit_table
    from galvatron_hf.profiler.builtin_hardware import hardware_for

    _check(args)
    if args.memory_gb:
        columns = tuple(MemoryColumn.budget(gb) for gb in args.memory_gb)
    else:
        columns = tuple(MemoryColumn.card(gb) for gb in CARD_MEMORY_GB)
    spec = describe_model(args.model_name_or_path, seq_len=args.seq_len, decoder_seq_len=args.decoder_seq_len)
    return fit_table(
        spec,
        lambda num_gpus: hardware_for(args.hardware, num_gpus),
        gpu_counts=tuple(args.num_gpus),
        columns=columns,
        mixed_precision=args.mixed_precision,
        time_budget_s=args.time_budget_s or None,
        progress=_progress(),
    )


def _check(args: argparse.Namespace) -> None:
    if any(n < 1 for n in args.num_gpus):
        raise ValueError(f"--num_gpus values must be >= 1, got {args.num_gpus}")
    if args.memory_gb and any(gb <= 0 for gb in args.memory_gb):
        raise ValueError(f"--memory_gb values must be > 0, got {args.memory_gb}")
    if args.time_budget_s < 0:
        raise ValueError(f"--time_budget_s must be >= 0 (0: no limit), got {args.time_budget_s}")


def _progress():
    """On a terminal, one self-overwriting line on stderr; elsewhere nothing (stdout stays the table)."""
    if not sys.stderr.isatty():
        return None

    def show(message: str) -> None:
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)

    return show


def _clear_progress() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)


# ----- formatting ---------------------------------------------------------------------------------------
def format_table(table) -> str:
    lines = [
        f"galvatron-hf fit: {table.model} ({table.params / 1e9:.2f}B params, {table.tokens_per_sample:,} tokens "
        f"per sample), {table.mixed_precision}, speeds of {table.hardware}",
        "best plan per cell: tokens/s (MFU); - : no plan fits"
        + (
            f"; a card's budget is its memory less {_headroom_text()} headroom"
            if any(c.label.endswith("card") for c in table.columns)
            else ""
        ),
        "",
        f"{'GPUs':<6}" + "".join(f"{column.label:>{CELL_WIDTH}}" for column in table.columns),
    ]
    for num_gpus in table.gpu_counts:
        cells = "".join(f"{_cell_text(table.cell(num_gpus, column)):>{CELL_WIDTH}}" for column in table.columns)
        lines.append(f"{num_gpus:<6}{cells}")
    lines += ["", *_cheapest_lines(table), _timing_line(table)]
    return "\n".join(lines)


def _headroom_text() -> str:
    from galvatron_hf.planner.search import DEFAULT_MEMORY_HEADROOM

    return f"{DEFAULT_MEMORY_HEADROOM:.0%}"


def _cell_text(cell) -> str:
    if not cell.fits:
        return "-"
    text = f"{cell.tokens_per_s:,.0f}"
    if cell.mfu is not None:
        text += f" ({cell.mfu:.0%})"
    return text + ("*" if not cell.complete else "")


def _cheapest_lines(table) -> list[str]:
    cell = table.cheapest
    if cell is None:
        return ["nothing in this table fits: try more GPUs, more memory per GPU or a shorter --seq_len"]
    column = next(c for c in table.columns if c.budget_gb == cell.budget_gb)
    mfu = f", MFU {cell.mfu:.1%}" if cell.mfu is not None else ""
    return [
        f"cheapest that fits (least memory in all): {cell.num_gpus} x {column.label} "
        f"({cell.total_memory_gb:g} GB): {cell.tokens_per_s:,.0f} tokens/s{mfu}",
        f"  plan: {cell.layout}",
    ]


def _timing_line(table) -> str:
    searches = len(table.cells)
    if table.time_budget_s is None:
        return f"{searches} searches in {table.seconds:.1f} s, each to the end"
    note = "; * = stopped by it at the best plan found so far" if any(not c.complete for c in table.cells) else ""
    return f"{searches} searches in {table.seconds:.1f} s (time budget {table.time_budget_s:g} s per search{note})"
