"""`galvatron-hf search --hardware hw.json --profile model.json`: a plan from the two measured files."""

from __future__ import annotations

import json

import torch

from galvatron_hf.cli import main
from galvatron_hf.planner.plan import Plan

LLAMA = dict(
    model_type="llama",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
)


def test_search_command_plans_from_measured_files(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = tmp_path / "tiny-llama"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps(LLAMA))
        hw, model = str(tmp_path / "hw.json"), str(tmp_path / "model.json")
        assert main(["profile", "hardware", "--quick", "--output", hw]) == 0
        assert (
            main(
                [
                    "profile",
                    "model",
                    "--model_name_or_path",
                    str(model_dir),
                    "--seq_len",
                    "32",
                    "--micro_batch_sizes",
                    "1",
                    "2",
                    "--dtype",
                    "fp32",
                    "--device",
                    "cpu",
                    "--output",
                    model,
                    "--cache_dir",
                    str(tmp_path / "cache"),
                    "--warmup",
                    "0",
                    "--repeats",
                    "1",
                ]
            )
            == 0
        )
        capsys.readouterr()
        search = [
            "search",
            "--model_name_or_path",
            str(model_dir),
            "--seq_len",
            "32",
            "--num_gpus",
            "1",
            "--hardware",
            hw,
            "--mixed_precision",
            "fp32",
            "--global_batch_size",
            "4",
        ]
        assert main(search + ["--profile", model, "--output", str(tmp_path / "plan.json")]) == 0
        out = capsys.readouterr()
        shown = out.out + out.err  # where figures come from: stdout in the human report, stderr with --json
        assert "(profiled costs)" in out.out
        assert f"compute time: profiled: {model}" in shown and "warning" not in shown
        plan = Plan.load(tmp_path / "plan.json")
        assert plan.world_size == 1 and plan.predicted.source == "profiled"

        assert main(search) == 0  # without --profile: the analytic default, and it says so
        out = capsys.readouterr()
        assert "(analytic costs)" in out.out and "compute time, activation memory: analytic" in out.out + out.err

        assert main(search[:-4] + ["--mixed_precision", "bf16", "--global_batch_size", "4", "--profile", model]) == 0
        out = capsys.readouterr()
        assert "warning: model profile" in out.out + out.err  # fp32 profile, bf16 plan
    finally:
        torch.set_num_threads(threads)
