"""The multi-GPU suite (benchmarks/multi_gpu/run_all.sh) end to end as a CPU dry run on 2 gloo ranks.

It is the only rehearsal the one GPU call gets: every phase must finish, phase 1 must match the single process,
every planned run and the accelerate FSDP2 baseline must produce a measurement, and the report must hold the
ratio and the predicted-vs-measured rows. About 1.5-2 minutes on a 2-core machine (9 torchrun launches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "multi_gpu" / "run_all.sh"


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_dry_run_of_the_whole_suite(tmp_path):
    out = tmp_path / "dry"
    env = {**os.environ, "PYTHON": sys.executable, "STEPS": "2", "WARMUP": "1"}
    result = subprocess.run(
        ["bash", str(SUITE), "2", str(out), "--cpu-dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    phases = [line.split("\t") for line in (out / "phases.tsv").read_text().splitlines()]
    failed = [(name, status) for name, status, *_ in phases if name != "suite" and status != "ok"]
    assert not failed, f"phases not ok: {failed}\n{result.stderr[-4000:]}"
    names = [name for name, *_ in phases]
    assert names[:4] == ["correctness", "profile_hardware", "profile_model", "plans"]
    assert "run:searched" in names and "run:accelerate_fsdp2" in names

    correctness = json.loads((out / "correctness.json").read_text())
    assert correctness["passed"] and correctness["precision"] == "fp32" and correctness["cpu_dry_run"]
    assert {c["case"] for c in correctness["cases"]} >= {
        "ddp2",
        "zero3x2+ckpt",
        "tp2",
        "pp2_1f1b",
    }

    speed = json.loads((out / "speed.json").read_text())
    assert speed["cpu_dry_run"] is True
    runs = {row["name"]: row for row in speed["runs"]}
    assert {
        "searched",
        "uniform_ddp",
        "uniform_zero3",
        "uniform_tp2_zero3",
        "accelerate_fsdp2",
    } <= set(runs)
    for name, row in runs.items():
        assert row["status"].startswith("ok"), f"{name}: {row}"
        assert row["tokens_per_s_per_gpu"] > 0 and row["mfu"] > 0
    assert speed["ratio"]["ours_over_best_other"] > 0
    assert speed["ratio"]["ours_over_accelerate_fsdp2"] > 0

    costs = json.loads((out / "cost_model.json").read_text())["plans"]
    assert costs and all(row["measured_step_s"] > 0 and "step_time_error" in row for row in costs)
    assert "CPU DRY RUN" in (out / "summary.md").read_text()
