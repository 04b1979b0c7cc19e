"""The search's progress lines say what it is doing: which step config it bounds or solves, and the best plan
so far (or that none fits yet), never a placeholder best of 0.00 samples/s."""

from __future__ import annotations

import itertools
import types

from galvatron_hf.planner.search import driver as search
from galvatron_hf.profiler.builtin_hardware import builtin_hardware


def test_progress_names_the_config_and_the_best_so_far(spec_factory, monkeypatch):
    ticks = itertools.count()
    # a clock that moves 0.6 s per reading: every line passes the reporter's once-per-0.5-s throttle
    monkeypatch.setattr(search, "time", types.SimpleNamespace(perf_counter=lambda: 0.6 * next(ticks)))
    lines: list[str] = []
    spec = spec_factory(num_blocks=8, ffn_pattern=(4096, 8192))
    search.search_plan(spec, builtin_hardware("h100", 1), 8, 20.0, progress=lines.append)
    assert not any("0.00 samples/s" in line for line in lines)
    bounding = [line for line in lines if "bounding step config" in line]
    solving = [line for line in lines if line.split("] ", 1)[1].startswith("solving pp=")]
    assert bounding and solving
    assert "no plan fits yet" in bounding[0] and "no plan fits yet" in solving[0]  # nothing solved before them
    assert all("pp=" in line and "batch " in line for line in bounding + solving)
    after_first_plan = lines[lines.index(solving[0]) + 1 :]
    assert after_first_plan and all("no plan fits yet" not in line for line in after_first_plan)
    assert any("best so far" in line for line in after_first_plan)
