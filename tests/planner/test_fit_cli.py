"""`galvatron-hf fit` end to end, in process (galvatron_hf.cli.main), on a bundled model config."""

from __future__ import annotations

import json

from galvatron_hf.cli import main
from galvatron_hf.planner.fit import FitCell, FitTable, MemoryColumn

GPT2 = ["fit", "--model_name_or_path", "gpt2", "--num_gpus", "1", "2", "4", "8", "--memory_gb", "3", "6", "24"]


def table_from_json(data: dict) -> FitTable:
    return FitTable(
        **{key: data[key] for key in ("model", "params", "tokens_per_sample", "hardware", "mixed_precision")},
        gpu_counts=tuple(data["gpu_counts"]),
        columns=tuple(MemoryColumn(**column) for column in data["columns"]),
        cells=tuple(FitCell(**cell) for cell in data["cells"]),
        time_budget_s=data["time_budget_s"],
        seconds=data["seconds"],
    )


def test_json_table_parses_and_is_monotone(capsys):
    from tests.planner.test_fit import assert_monotone  # noqa: PLC0415

    assert main([*GPT2, "--time_budget_s", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    table = table_from_json(data)
    assert table.gpu_counts == (1, 2, 4, 8) and [c.budget_gb for c in table.columns] == [3, 6, 24]
    assert len(table.cells) == 12 and table.time_budget_s is None  # 0: every search ran to the end
    assert_monotone(table)
    assert data["cheapest"] == json.loads(json.dumps(table.to_dict()))["cheapest"]
    assert data["cheapest"]["fits"] and data["seconds"] > 0


def test_text_table_names_every_column_and_the_cheapest(capsys):
    assert main([*GPT2[:5], "--memory_gb", "6", "24"]) == 0
    out = capsys.readouterr().out
    assert "6 GB budget" in out and "24 GB budget" in out
    assert "cheapest that fits" in out and "plan: pp" in out
    assert "2 searches in" in out and "time budget 2 s per search" in out


def test_default_columns_are_cards_with_headroom(capsys):
    assert main(["fit", "--model_name_or_path", "gpt2", "--num_gpus", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in data["columns"]] == [f"{gb} GB card" for gb in (24, 40, 48, 80, 141)]
    assert data["columns"][3]["budget_gb"] == 73.6


def test_nothing_fits_exits_3_and_bad_input_exits_2(capsys):
    assert main(["fit", "--model_name_or_path", "gpt2", "--num_gpus", "1", "--memory_gb", "0.5"]) == 3
    assert "nothing in this table fits" in capsys.readouterr().out
    assert main(["fit", "--model_name_or_path", "gpt2", "--num_gpus", "0", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2
