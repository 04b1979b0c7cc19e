"""Compiling blocks in place: one graph for all blocks of a family, names and hooks unchanged, time counted."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.parallel.compile import CompileClock, CompileConfig, compile_block


def test_blocks_share_one_graph_and_keep_names_and_hooks():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = rc.make_model("llama")
    model.config.use_cache = False
    names = [n for n, _ in model.named_parameters()]
    calls = []
    for block in model.model.layers:
        block.register_forward_pre_hook(lambda module, args: calls.append(module))
    clock = CompileClock()
    for block in model.model.layers:
        compile_block(block, CompileConfig(backend="eager"))
        compile_block(block, CompileConfig(backend="eager"))  # idempotent
    batch = rc.make_batch("llama", 0)
    loss = model(**batch).loss
    reference = rc.make_model("llama")(**batch).loss
    assert loss.item() == reference.item()
    assert counters["stats"]["unique_graphs"] == 1  # not one per block: the compile is paid once
    assert [n for n, _ in model.named_parameters()] == names
    assert len(calls) == len(model.model.layers)  # module hooks still run, outside the graph
    assert clock.compiles >= 1 and clock.seconds > 0
