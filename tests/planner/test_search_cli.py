"""`galvatron-hf search` end to end, in process (galvatron_hf.cli.main), on bundled model configs."""

from __future__ import annotations

import json

import pytest

from galvatron_hf.cli import main
from galvatron_hf.planner.plan import Plan

LLAMA_7B = ["--model_name_or_path", "meta-llama/Llama-2-7b", "--num_gpus", "8"]


@pytest.fixture(scope="module")
def llama_7b_spec():
    from galvatron_hf.adapters import describe_model

    return describe_model("meta-llama/Llama-2-7b")


def test_search_prints_a_plan_and_writes_a_valid_file(tmp_path, capsys, llama_7b_spec):
    out = tmp_path / "plan.json"
    assert main(["search", *LLAMA_7B, "--memory_gb", "80", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "plan: pp=",
        "vocab (embedding / head)",
        "samples/s",
        "tokens/s",
        "MFU",
        "peak memory per stage",
        "best uniform",
        "plain DDP",
        "plain ZeRO-3",
        f"written to {out}",
    ):
        assert expected in text
    plan = Plan.load(out)
    plan.validate(world_size=8, spec=llama_7b_spec)
    assert plan.pp <= 2 and plan.offload == [], "7B on 8 x 80 GB needs no deep pipeline and no offload"
    assert plan.predicted is not None and plan.predicted.peak_memory_gb[0] <= 80


def test_json_output_is_json_only(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", *LLAMA_7B, "--memory_gb", "40", "--json", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert Plan.from_dict(data["best"]["plan"]) == Plan.load(out)
    assert data["best"]["fits"] is True
    assert set(data["baselines"]) == {"ddp", "zero3"}
    assert data["search"]["configs"] > 0 and data["best"]["stages"][0]["peak_memory_gb"] <= 40


def test_impossible_budget_exits_with_the_smallest_budget(capsys):
    assert main(["search", *LLAMA_7B, "--memory_gb", "6", "--global_batch_size", "8", "--json"]) == 3
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert "smallest budget" in captured.err
    minimum = payload["min_memory_gb"]
    assert minimum > 6
    assert main(["search", *LLAMA_7B, "--memory_gb", str(minimum), "--global_batch_size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"]["fits"]


def test_uniform_flags_price_one_plan(tmp_path, capsys):
    out = tmp_path / "uniform.json"
    args = [
        "search",
        *LLAMA_7B,
        "--memory_gb",
        "80",
        "--pp",
        "2",
        "--tp",
        "2",
        "--dp_type",
        "zero3",
        "--checkpoint",
        "--num_micro_batches",
        "4",
        "--global_batch_size",
        "16",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "stage 1" in text and "tp=2 dp=2 zero3 +checkpoint" in text
    plan = Plan.load(out)
    assert (plan.pp, plan.num_micro_batches, plan.global_batch_size) == (2, 4, 16)
    # a uniform plan that cannot fit exits non-zero and says what to change
    assert (
        main(["search", *LLAMA_7B, "--memory_gb", "20", "--pp", "1", "--dp_type", "ddp", "--global_batch_size", "8"])
        == 3
    )
    assert "more than the 20 GB budget" in capsys.readouterr().err


def test_hardware_by_path_and_bad_names(tmp_path, capsys):
    from galvatron_hf.profiler.builtin_hardware import builtin_hardware

    path = builtin_hardware("a100", 2).save(tmp_path / "a100.json")
    assert (
        main(
            [
                "search",
                "--model_name_or_path",
                "gpt2",
                "--num_gpus",
                "16",
                "--hardware",
                str(path),
                "--memory_gb",
                "40",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["hardware"] == "builtin:a100" and data["best"]["plan"]["world_size"] == 16
    assert main(["search", *LLAMA_7B, "--hardware", "tpu-v9"]) == 2
    assert "h100" in capsys.readouterr().err
