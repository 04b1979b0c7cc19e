"""Phases 3 and 4 report, and the suite's summary (one plain process, no GPU).

    python benchmarks/multi_gpu/report.py --out OUT_DIR [--phases OUT_DIR/phases.tsv]

Reads ``OUT_DIR/speed/plans.json`` and ``OUT_DIR/speed/runs/*.json`` and writes

- ``speed.json`` / ``speed.md``: per run tokens/s/GPU, MFU, peak memory (max over ranks), or why it has no
  numbers (out of memory, error, not run); the ratio ours (the searched plan) / best other run (uniform
  layouts and accelerate FSDP2), and ours / accelerate FSDP2 alone;
- ``cost_model.json`` / ``cost_model.md`` (phase 4): predicted vs measured step time and peak memory per plan;
- ``summary.md``: each phase's status and duration (from ``phases.tsv``, written by run_all.sh), phase 1's
  verdicts, the speed table and the cost-model table.

MFU = model FLOPs per step (3 x forward FLOPs of the ModelSpec x global batch; recomputation not counted) /
step time / (GPUs x the hardware profile's peak rate for the precision). On the CPU dry run the "peak" is the
profile's measured matmul rate and every number describes gloo on a shared CPU, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def load_runs(runs_dir: Path) -> dict[str, dict]:
    """name -> result; a run without a result file but with per-rank OOM / error files gets those."""
    runs: dict[str, dict] = {}
    if not runs_dir.is_dir():
        return runs
    for path in sorted(runs_dir.glob("*.json")):
        stem = path.stem
        if ".oom-rank" in stem or ".error-rank" in stem:
            name = stem.split(".")[0]
            data = json.loads(path.read_text())
            if runs.get(name, {}).get("status") != "ok":
                runs.setdefault(name, {"name": name, **data, "ranks": []})["ranks"].append(data.get("rank"))
            continue
        runs[stem] = json.loads(path.read_text())
    return runs


def mfu(run: dict, index: dict) -> float | None:
    peak = index["hardware"]["peak_tflops"].get(index["precision"])
    if not peak or not run.get("status", "").startswith("ok"):
        return None
    flops = 3 * index["forward_flops_per_sample"] * run["global_batch_size"]
    return flops / run["median_step_s"] / (run["world_size"] * peak * 1e12)


def speed_rows(index: dict, runs: dict[str, dict]) -> list[dict]:
    names = [p["name"] for p in index["plans"]] + [n for n in sorted(runs) if n.startswith("accelerate_fsdp2")]
    plans = {p["name"]: p for p in index["plans"]}
    rows = []
    for name in names:
        run = runs.get(name, {"status": "not run"})
        twin = plans.get(name, {}).get("same_layout_as")
        if twin and name not in runs and runs.get(twin, {}).get("status") == "ok":
            run = {
                **runs[twin],
                "status": f"ok (same layout as {twin}: its measurement)",
            }
        row = {
            "name": name,
            "kind": plans.get(name, {}).get("kind", "baseline: accelerate FSDP2 (plain HF model)"),
            "layout": plans.get(name, {}).get("layout") or run.get("how", ""),
            "status": run.get("status", "?"),
        }
        if run.get("status", "").startswith("ok"):
            row.update(
                median_step_s=run["median_step_s"],
                tokens_per_s_per_gpu=run["tokens_per_s_per_gpu"],
                mfu=mfu(run, index),
                peak_allocated_gb=run.get("peak_allocated_gb"),
                peak_reserved_gb=run.get("peak_reserved_gb"),
                first_loss=run["losses"][0],
                last_loss=run["losses"][-1],
            )
        elif "error" in run:
            row["error"] = run["error"]
        rows.append(row)
    return rows


def ratios(rows: list[dict]) -> dict:
    """ours / best other run (a uniform plan identical to ours counts, with ours' measurement: ratio 1), and
    ours / best run of a different layout, and ours / accelerate FSDP2."""
    ok = {r["name"]: r["tokens_per_s_per_gpu"] for r in rows if r["status"].startswith("ok")}
    twins = {r["name"] for r in rows if r["status"].startswith("ok (same layout")}
    result: dict = {"ours": "searched", "ours_tokens_per_s_per_gpu": ok.get("searched")}
    others = {n: v for n, v in ok.items() if n != "searched"}
    if "searched" in ok and others:
        best = max(others, key=others.get)
        result.update(best_other=best, ours_over_best_other=ok["searched"] / others[best])
        different = {n: v for n, v in others.items() if n not in twins}
        if different:
            best_different = max(different, key=different.get)
            result.update(
                best_different_layout=best_different,
                ours_over_best_different_layout=ok["searched"] / different[best_different],
            )
        fsdp = {n: v for n, v in others.items() if n.startswith("accelerate_fsdp2")}
        if fsdp:
            best_fsdp = max(fsdp, key=fsdp.get)
            result.update(
                best_fsdp2=best_fsdp,
                ours_over_accelerate_fsdp2=ok["searched"] / fsdp[best_fsdp],
            )
    return result


def cost_model_rows(index: dict, runs: dict[str, dict]) -> list[dict]:
    rows = []
    for plan in index["plans"]:
        run, predicted = runs.get(plan["name"], {}), plan["predicted"]
        row = {
            "name": plan["name"],
            "status": run.get("status", "not run"),
            "predicted_fits": plan["predicted_fits"],
            "predicted_step_s": predicted["step_time_s"],
            "predicted_peak_gb": predicted["peak_memory_gb"],
            "source": predicted["source"],
        }
        twin = plan.get("same_layout_as")
        if not run and twin:
            run = {**runs.get(twin, {}), "status": f"same layout as {twin}"} if runs.get(twin) else {}
        if run.get("median_step_s") is not None:
            row["status"] = run.get("status", "ok")
            row["measured_step_s"] = run["median_step_s"]
            row["step_time_error"] = predicted["step_time_s"] / run["median_step_s"] - 1
            if run.get("peak_allocated_gb"):
                row["measured_peak_gb"] = run["peak_allocated_gb"]
                row["peak_memory_error"] = predicted["peak_memory_gb"] / run["peak_allocated_gb"] - 1
        rows.append(row)
    return rows


def _fmt(value, pattern: str = "{:.3g}") -> str:
    return "—" if value is None else pattern.format(value)


def speed_markdown(index: dict, rows: list[dict], ratio: dict, dry_run: bool) -> str:
    label = "CPU DRY RUN (gloo, tiny model): not GPU numbers" if dry_run else index["hardware"]["device"]
    lines = [
        f"## Speed: {label}",
        "",
        (
            f"Model {index['model']['shape']} ({index['model']['params'] / 1e9:.3g}B params), seq {index['seq_len']}, "
            f"global batch {index['global_batch_size']}, {index['precision']}, {index['num_gpus']} ranks, budget "
            f"{index['memory_budget_gb']:.1f} GB per rank; MFU against {index['hardware']['peak_tflops']} TFLOP/s "
            f"({Path(index['hardware']['source']).name})."
        ),
        "",
        "| run | layout | status | step s | tokens/s/GPU | MFU | peak alloc GB | peak reserved GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['layout']} | {r['status']} | {_fmt(r.get('median_step_s'), '{:.4f}')} | "
            f"{_fmt(r.get('tokens_per_s_per_gpu'), '{:,.0f}')} | {_fmt(r.get('mfu'), '{:.1%}')} | "
            f"{_fmt(r.get('peak_allocated_gb'), '{:.2f}')} | {_fmt(r.get('peak_reserved_gb'), '{:.2f}')} |"
        )
    lines.append("")
    if "ours_over_best_other" in ratio:
        lines.append(f"ours / best other ({ratio['best_other']}): **x{ratio['ours_over_best_other']:.3f}**")
    if "ours_over_best_different_layout" in ratio and ratio["best_different_layout"] != ratio.get("best_other"):
        lines.append(
            f"ours / best run of a different layout ({ratio['best_different_layout']}): "
            f"**x{ratio['ours_over_best_different_layout']:.3f}**"
        )
    if "ours_over_accelerate_fsdp2" in ratio:
        lines.append(f"ours / accelerate FSDP2 ({ratio['best_fsdp2']}): **x{ratio['ours_over_accelerate_fsdp2']:.3f}**")
    if "ours_over_best_other" not in ratio:
        lines.append("no ratio: the searched plan or every other run has no measurement")
    return "\n".join(lines) + "\n"


def cost_markdown(rows: list[dict]) -> str:
    lines = [
        "## Cost model: predicted vs measured (error = predicted / measured - 1)",
        "",
        (
            "| plan | source | fits (predicted) | status | step s pred | step s meas | step error | "
            "peak GB pred | peak GB meas | memory error |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['source']} | {r['predicted_fits']} | {r['status']} | "
            f"{r['predicted_step_s']:.4f} | {_fmt(r.get('measured_step_s'), '{:.4f}')} | "
            f"{_fmt(r.get('step_time_error'), '{:+.1%}')} | {r['predicted_peak_gb']:.2f} | "
            f"{_fmt(r.get('measured_peak_gb'), '{:.2f}')} | {_fmt(r.get('peak_memory_error'), '{:+.1%}')} |"
        )
    return "\n".join(lines) + "\n"


def correctness_markdown(path: Path) -> str:
    if not path.is_file():
        return "## Phase 1: correctness\n\nno result file (the phase failed or was not run; see its log)\n"
    data = json.loads(path.read_text())
    floor = data.get("bf16_floor_vs_fp32")
    verdict = "all passed" if data["passed"] else "FAILURES"
    lines = [
        f"## Phase 1: correctness ({data['precision']}, {data['world_size']} ranks): {verdict}",
        "",
    ]
    if floor:
        lines += [
            f"bf16 floor (one process, bf16 vs fp32): loss {floor['loss']:.2e}, gradients {floor['grads']:.2e}",
            "",
        ]
    lines += [
        "| layout | passed | loss rel err | worst grad rel err | worst weight rel err | s |",
        "|---|---|---|---|---|---|",
    ]
    for c in data["cases"]:
        lines.append(
            f"| {c['case']} | {c['passed']} | {_fmt(c.get('loss_rel_error'), '{:.1e}')} | "
            f"{_fmt(c.get('grad_rel_error'), '{:.1e}')} | {_fmt(c.get('weight_rel_error'), '{:.1e}')} | "
            f"{c['seconds']} |" + (f" error: {c['error'].splitlines()[0]}" if c.get("error") else "")
        )
    return "\n".join(lines) + "\n"


def phases_markdown(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [
        "## Phases",
        "",
        "| phase | status | exit code | seconds | log |",
        "|---|---|---|---|---|",
    ]
    for line in path.read_text().splitlines():
        name, status, code, seconds, log = line.split("\t")
        lines.append(f"| {name} | {status} | {code} | {seconds} | {log} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the suite's OUT_DIR")
    parser.add_argument("--phases", type=Path, default=None, help="phases.tsv written by run_all.sh")
    parser.add_argument("--title", default="Multi-GPU suite")
    args = parser.parse_args(argv)
    sections = [f"# {args.title}", ""]
    sections.append(phases_markdown(args.phases))
    sections.append(correctness_markdown(args.out / "correctness.json"))
    index_path = args.out / "speed" / "plans.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        dry_run = bool(index.get("cpu_dry_run"))
        runs = load_runs(args.out / "speed" / "runs")
        rows, costs = speed_rows(index, runs), cost_model_rows(index, runs)
        ratio = ratios(rows)
        common.write_json(
            args.out / "speed.json",
            {
                "phase": "speed",
                "cpu_dry_run": dry_run,
                "setup": {
                    k: index[k]
                    for k in (
                        "model",
                        "num_gpus",
                        "seq_len",
                        "global_batch_size",
                        "precision",
                        "memory_budget_gb",
                        "hardware",
                        "cost_sources",
                        "search",
                    )
                },
                "runs": rows,
                "ratio": ratio,
            },
        )
        common.write_json(
            args.out / "cost_model.json",
            {"phase": "cost_model", "cpu_dry_run": dry_run, "plans": costs},
        )
        speed_md, cost_md = (
            speed_markdown(index, rows, ratio, dry_run),
            cost_markdown(costs),
        )
        (args.out / "speed.md").write_text(speed_md)
        (args.out / "cost_model.md").write_text(cost_md)
        sections += [speed_md, cost_md]
    else:
        sections.append("## Speed\n\nno plans.json (phase 3 did not plan; see its log)\n")
    (args.out / "summary.md").write_text("\n".join(sections))
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
