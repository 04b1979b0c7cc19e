"""The HTML plan report: its numbers are the cost model's, the page is self-contained, the module needs no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from galvatron_hf.adapters import describe_model
from galvatron_hf.planner.cost_model import estimate_plan
from galvatron_hf.planner.search import search_plan, uniform_plan
from galvatron_hf.profiler.builtin_hardware import load_hardware
from galvatron_hf.report import gather_plan_report, render_plan_html
from galvatron_hf.report.plan_data import MEMORY_PARTS
from galvatron_hf.report.svg import count, gigabytes


@pytest.fixture(scope="module")
def llama_70b():
    """Llama-2-70b on 64 GPUs (8 nodes of 8 H100) searched at a fixed batch (fewer step configs: seconds)."""
    spec = describe_model("meta-llama/Llama-2-70b")
    hardware = load_hardware("h100", 8)
    result = search_plan(spec, hardware, 64, 73.6, global_batch_size=512)
    report = gather_plan_report(spec, hardware, result.best.plan, result.best.report, 73.6, result)
    return spec, result, report


def test_memory_bars_are_the_cost_models_two_moments(llama_70b):
    _, result, report = llama_70b
    stages = result.best.report.stages
    assert len(report.memory) == result.best.plan.pp > 1
    for gathered, stage in zip(report.memory, stages):
        backward, optimizer = gathered.moments
        assert backward.total_gb == stage.backward_start_gb and optimizer.total_gb == stage.optimizer_step_gb
        for moment in gathered.moments:
            assert [name for name, _ in moment.parts] == list(MEMORY_PARTS)
            assert sum(gb for _, gb in moment.parts) == pytest.approx(moment.total_gb, rel=1e-9)
        peak = next(m for m in gathered.moments if m.is_peak)
        assert peak.total_gb == pytest.approx(stage.peak_memory_gb) == pytest.approx(gathered.peak_gb)
        parts = dict(backward.parts)
        assert parts["optimizer states"] > 0 and parts["parameters"] > 0 and parts["activations"] > 0


def test_timeline_rows_add_up_to_the_predicted_step(llama_70b):
    _, result, report = llama_70b
    timeline, cost = report.timeline, result.best.report
    assert timeline.step_s == cost.step_time_s and timeline.bubble_s == cost.bubble_time_s
    for row, stage in zip(timeline.stages, cost.stages):
        total = row.fill_s + row.busy_s + row.waiting_s + row.drain_s
        assert total == pytest.approx(cost.step_time_s, rel=1e-9)
        assert row.busy_s == pytest.approx(result.best.plan.num_micro_batches * stage.time_per_micro_batch_s)
        assert all(seconds >= 0 for _, seconds in row.parts)
        assert dict(row.parts)["communication"] > 0  # 64 GPUs over 8 nodes do communicate
    slowest = timeline.stages[timeline.bottleneck]
    assert slowest.waiting_s == pytest.approx(0, abs=1e-12)
    assert slowest.fill_s + slowest.drain_s == pytest.approx(cost.bubble_time_s, rel=1e-9)


def test_comparison_rows_are_the_searchs_evaluated_plans(llama_70b):
    _, result, report = llama_70b
    rows = {row.label: row for row in report.comparison}
    assert set(rows) == {"searched plan", "best uniform plan", "plain DDP", "plain ZeRO-3"}
    assert rows["searched plan"].tokens_per_s == result.best.report.predicted.tokens_per_s
    assert rows["best uniform plan"].tokens_per_s == result.best_uniform.report.predicted.tokens_per_s
    ddp = result.baselines["ddp"]
    assert rows["plain DDP"].fits is False and rows["plain DDP"].peak_gb == ddp.report.peak_memory_gb
    assert rows["plain DDP"].tokens_per_s is None  # a plan that does not fit has no speed to compare


def test_page_shows_the_numbers_and_every_block(llama_70b):
    spec, result, report = llama_70b
    page = render_plan_html(report)
    assert "<title>Plan: meta-llama/Llama-2-70b on 64 GPUs</title>" in page
    assert "<h1>meta-llama/Llama-2-70b on 64 GPUs</h1>" in page
    assert count(result.best.report.predicted.tokens_per_s) in page
    assert gigabytes(result.baselines["ddp"].report.peak_memory_gb) in page
    for index in range(spec.num_blocks):  # every block has a cell with its hover text
        assert f"<title>block {index} (" in page
    for part in MEMORY_PARTS:
        assert part in page


def test_page_is_self_contained(llama_70b):
    page = render_plan_html(llama_70b[2])
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert re.findall(r"https?://[^\"' )]+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg ")
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {"#ckpt", "#idle"}  # in-page patterns only


def test_priced_plan_without_a_search_has_no_comparison():
    spec = describe_model("t5-small")
    hardware = load_hardware("h100", 1)
    plan = uniform_plan(spec, 4, global_batch_size=16, pp=2, tp=2, num_micro_batches=4, dp_type="zero2")
    cost = estimate_plan(plan, spec, hardware, memory_gb=40)
    report = gather_plan_report(spec, hardware, plan.with_predicted(cost.predicted), cost, 40)
    assert report.comparison == ()
    assert [span.label for span in report.kind_spans] == ["encoder", "decoder"]
    page = render_plan_html(report)
    assert "Compared with simpler plans" not in page and "stage 1" in page


def test_report_modules_import_no_torch():
    code = (
        "import sys, galvatron_hf.report.plan_html, galvatron_hf.report.plan_data; "
        "sys.exit(1 if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_search_command_writes_the_report(tmp_path, capsys):
    from galvatron_hf.cli import main

    searched, uniform = tmp_path / "searched.html", tmp_path / "uniform.html"
    gpt2 = ["search", "--model_name_or_path", "gpt2", "--num_gpus", "4", "--memory_gb", "20"]
    assert main([*gpt2, "--global_batch_size", "64", "--json", "--report", str(searched)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["best"]["fits"] and f"plan report written to {searched}" in captured.err
    assert "<h1>gpt2 on 4 GPUs</h1>" in searched.read_text() and "plain ZeRO-3" in searched.read_text()
    assert main([*gpt2, "--pp", "2", "--tp", "2", "--report", str(uniform)]) == 0
    assert "stage 1" in uniform.read_text() and "Compared with simpler plans" not in uniform.read_text()
