"""Our cost model against published large-scale training throughput.

Each row is a published run whose layout we can express as a uniform plan (FSDP = ZeRO-3, FSDP x TP, FSDP x TP
x PP); the script prices that plan with the analytic cost model on the built-in H100 profile (the same one
`galvatron-hf search` uses) and prints predicted vs published tokens/s/GPU. No constant is tuned per row:
where the published setup differs from what we model (fp8, async TP, torch.compile, 500 W parts), the row
says so, and only bf16 rows count towards the accuracy figures.

Sources:

* torchtitan, ``benchmarks/llama3_h100_202412_torchtitan.md`` (pytorch/torchtitan, Dec 2024): Llama 3.1
  8B / 70B / 405B on 8 to 512 H100 (96 GB HBM2e parts at a 500 W limit, 400 Gb/s RDMA per GPU), seq 8192
  (the llama3 train configs).
* MosaicML LLM Foundry, ``scripts/train/benchmarking/README.md`` (mosaicml/llm-foundry), "H100 80GB BF16"
  tables: MPT models with FSDP FULL_SHARD, amp_bf16, Flash attention. MPT blocks are GPT-style (LayerNorm,
  4x GELU MLP, ALiBi); they are expressed as GPT-2 configs of the same width, depth, heads and vocabulary
  (learned positions and biases add < 1 % of FLOPs).

    python benchmarks/published_tables.py [--output benchmarks/results/published-tables.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TORCHTITAN = "torchtitan llama3_h100_202412"
FOUNDRY = "LLM Foundry MPT H100 BF16"


@dataclass(frozen=True)
class Row:
    """One published run and the uniform layout it used."""

    source: str
    table: str
    model: str  # a bundled model name, or "mpt-<size>" (a GPT-2 config of that shape)
    seq_len: int
    num_gpus: int
    global_batch_size: int
    published_tokens_per_gpu: float
    tp: int = 1
    pp: int = 1
    num_micro_batches: int = 1
    checkpoint: bool = False
    dp_type: str = "zero3"
    differs: tuple[str, ...] = ()  # what the published run did that the cost model does not price
    bf16: bool = True  # the accuracy figures count bf16 rows only

    @property
    def layout(self) -> str:
        parts = [f"FSDP{self.num_gpus // (self.tp * self.pp)}"]
        parts += [f"TP{self.tp}"] if self.tp > 1 else []
        parts += [f"PP{self.pp}"] if self.pp > 1 else []
        return " x ".join(parts) + (" + AC" if self.checkpoint else "")


H100_500W = "96 GB HBM2e H100 at 500 W (we price 700 W SXM5: datasheet rate)"
SAC = "selective AC (priced as none: recomputed element-wise ops not priced)"

ROWS = (
    Row(TORCHTITAN, "Table 1", "meta-llama/Llama-3.1-8B", 8192, 8, 16, 5762, differs=(H100_500W, SAC)),
    Row(TORCHTITAN, "Table 3", "meta-llama/Llama-3.1-8B", 8192, 128, 256, 5605, differs=(H100_500W, SAC)),
    Row(
        TORCHTITAN, "Table 4", "meta-llama/Llama-3.1-70B", 8192, 256, 512, 829, tp=8, checkpoint=True,
        differs=(H100_500W, "Float8 linears", "torch.compile"), bf16=False,
    ),
    Row(
        TORCHTITAN, "Table 5 (1F1B)", "meta-llama/Llama-3.1-405B", 8192, 512, 256, 100, tp=8, pp=8,
        num_micro_batches=32, checkpoint=True,
        differs=(H100_500W, "Float8 linears", "torch.compile", "async TP"), bf16=False,
    ),
    Row(FOUNDRY, "H100 80GB BF16", "mpt-7b", 2048, 8, 48, 10643),
    Row(FOUNDRY, "large scale", "mpt-7b", 2048, 128, 768, 10475),
    Row(FOUNDRY, "H100 80GB BF16", "mpt-13b", 2048, 8, 16, 4792),
    Row(FOUNDRY, "large scale", "mpt-13b", 2048, 128, 2048, 5080, checkpoint=True),
    Row(FOUNDRY, "large scale", "mpt-30b", 2048, 128, 1024, 2199, checkpoint=True),
    Row(FOUNDRY, "H100 80GB BF16", "mpt-70b", 2048, 64, 2048, 1039, num_micro_batches=4, checkpoint=True),
    Row(FOUNDRY, "large scale", "mpt-70b", 2048, 512, 4096, 1007, checkpoint=True),
)

# MPT shapes from LLM Foundry's scripts/train/yamls/pretrain/mpt-*.yaml (d_model, n_heads, n_layers; vocab 50368)
MPT_SHAPES = {"mpt-7b": (4096, 32, 32), "mpt-13b": (5120, 40, 40), "mpt-30b": (7168, 64, 48), "mpt-70b": (8192, 64, 80)}


def spec_of(row: Row):
    from galvatron_hf.adapters import config_from_dict, describe_model

    if row.model not in MPT_SHAPES:
        return describe_model(row.model, seq_len=row.seq_len)
    hidden, heads, layers = MPT_SHAPES[row.model]
    config = config_from_dict(
        {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_embd": hidden,
            "n_head": heads,
            "n_layer": layers,
            "n_inner": 4 * hidden,
            "n_positions": row.seq_len,
            "vocab_size": 50368,
        },
        name=row.model,
    )
    return describe_model(config, seq_len=row.seq_len)


def predict(row: Row) -> dict:
    from galvatron_hf.planner.cost_model import estimate_plan
    from galvatron_hf.planner.search import uniform_plan
    from galvatron_hf.profiler.builtin_hardware import hardware_for

    spec = spec_of(row)
    hardware = hardware_for("h100", row.num_gpus)
    plan = uniform_plan(
        spec,
        row.num_gpus,
        global_batch_size=row.global_batch_size,
        pp=row.pp,
        tp=row.tp,
        dp_type=row.dp_type,
        checkpoint=row.checkpoint,
        num_micro_batches=row.num_micro_batches,
        schedule="1f1b" if row.num_micro_batches >= row.pp else "gpipe",
    )
    report = estimate_plan(plan, spec, hardware)
    tokens_per_gpu = report.predicted.tokens_per_s / row.num_gpus
    stage = max(report.stages, key=lambda s: s.time_per_micro_batch_s)
    return {
        "hidden": spec.blocks[0].hidden_size,
        "predicted": tokens_per_gpu,
        "error": tokens_per_gpu / row.published_tokens_per_gpu - 1.0,
        "mfu": report.predicted.mfu,
        "communication_share": stage.communication_s / stage.time_per_micro_batch_s,
        "bubble_share": report.bubble_time_s / report.step_time_s,
    }


def markdown(rows: list[tuple[Row, dict]]) -> str:
    from galvatron_hf.planner.cost_model import LAYER_EFFICIENCY

    bf16 = [abs(r["error"]) for row, r in rows if row.bf16]
    lines = [
        "# Predicted vs published tokens/s/GPU (benchmarks/published_tables.py)",
        "",
        "Analytic cost model, built-in H100 profile (`--hardware h100`), uniform plan of each published layout;",
        "no constant tuned per row. Error = predicted / published - 1. `comm` = share of the slowest stage's",
        "time per micro-batch spent in exposed communication. `implied eff.` = the layer efficiency",
        f"(planner/cost_model/compute.py, LAYER_EFFICIENCY = {LAYER_EFFICIENCY}) that would make the row exact,",
        "LAYER_EFFICIENCY x published / predicted (compute-bound rows: communication is a few percent).",
        "",
        "| source | model | hidden | GPUs | layout | seq | batch | published | predicted | error | pred. MFU | comm | implied eff. | differs from what we price |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, r in rows:
        differs = "; ".join(row.differs) or "-"
        lines.append(
            f"| {row.source} {row.table} | {row.model} | {r['hidden']} | {row.num_gpus} | {row.layout} | {row.seq_len} | "
            f"{row.global_batch_size} | {row.published_tokens_per_gpu:,.0f} | {r['predicted']:,.0f} | "
            f"{r['error'] * 100:+.1f}%{'' if row.bf16 else ' (not bf16)'} | {r['mfu'] * 100:.1f}% | "
            f"{r['communication_share'] * 100:.0f}% | "
            f"{LAYER_EFFICIENCY * row.published_tokens_per_gpu / r['predicted']:.2f} | {differs} |"
        )
    lines += [
        "",
        f"bf16 rows: {len(bf16)}; median |error| {statistics.median(bf16) * 100:.1f}%, largest "
        f"{max(bf16) * 100:.1f}%; within 15%: {sum(e <= 0.15 for e in bf16)} of {len(bf16)}.",
        "",
        "Reading the `implied eff.` column: the misses are in compute, not communication (exposed communication",
        "is 1-4% of a step on every bf16 row, at 8 and at 512 GPUs alike). The analytic compute applies one layer",
        "efficiency to every layer, measured on an HF Llama-1B block (hidden 2048, our eager HF runtime); the",
        "published runs use fused kernels and reach a higher share that grows with width and micro-batch tokens.",
        "That constant is the term that is wrong for these runs; a profile (`--profile`) replaces it with",
        "measured layer times. The torchtitan rows ran on 500 W HBM2e parts, slower than the SXM5 we price.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(RESULTS / "published-tables.md"))
    args = parser.parse_args(argv)
    rows = [(row, predict(row)) for row in ROWS]
    text = markdown(rows)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
