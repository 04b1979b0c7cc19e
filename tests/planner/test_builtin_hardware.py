"""Built-in hardware profiles (galvatron_hf/profiler/builtin_hardware.py): cited figures, names, node counts."""

from __future__ import annotations

import pytest

from galvatron_hf.profiler.builtin_hardware import (
    ACHIEVED_FRACTION,
    BUILTIN_NODES,
    builtin_hardware,
    builtin_names,
    load_hardware,
)
from galvatron_hf.profiler.hardware_schema import HardwareProfile, HardwareProfileError


@pytest.mark.parametrize("name", ["h100", "h200", "a100"])
def test_every_figure_has_a_source(name):
    hw = builtin_hardware(name, 2)
    for figure in (
        "peak_tflops",
        "memory",
        "nvlink",
        "all_reduce_8",
        "nic",
        "matmul_tflops",
        "inter_node_busbw",
        "latency",
        "reserved_memory_gb",
        "overlap",
    ):
        assert hw.sources.get(figure), f"{name}: no source for {figure}"
    node = BUILTIN_NODES[name]
    assert hw.device.matmul_tflops["bf16"] == pytest.approx(node.peak_tflops["bf16"] * ACHIEVED_FRACTION, abs=0.1)
    assert hw.device.memory_gb == node.memory_gb and hw.world_size == 16
    hw.check()


def test_figures_match_the_datasheets():
    assert builtin_hardware("h100").device.peak_tflops["bf16"] == pytest.approx(989.4)
    assert builtin_hardware("a100").device.peak_tflops["bf16"] == pytest.approx(312.0)
    assert builtin_hardware("h200").device.memory_gb == 141.0
    # one 400 Gb/s NDR NIC per H100 = 50 GB/s, 200 Gb/s HDR per A100 = 25 GB/s, at 90% for nccl-tests busbw
    h100, a100 = builtin_hardware("h100", 2), builtin_hardware("a100", 2)
    assert h100.p2p_time(1e9, "inter_node") == pytest.approx(40e-6 + 1e9 / 45e9)
    assert a100.p2p_time(1e9, "inter_node") == pytest.approx(40e-6 + 1e9 / 22.5e9)


def test_inter_node_bandwidth_follows_the_nics_a_group_drives():
    hw = builtin_hardware("h100", 8)  # 64 GPUs
    full = hw.collective("all_reduce", 64, "inter_node", "consecutive")
    one_per_node = hw.collective("all_reduce", 8, "inter_node", "strided")  # stride 8: one GPU per node
    assert full.busbw_GBps == pytest.approx(8 * one_per_node.busbw_GBps)
    assert hw.collective("all_reduce", 8, "intra_node").busbw_GBps == 460.0  # NVLS all-reduce on 8 GPUs
    assert not [c for c in builtin_hardware("h100", 1).collectives if c.placement == "inter_node"]


def test_names_paths_and_node_counts(tmp_path):
    assert builtin_names() == ["a100", "h100", "h200"]
    assert load_hardware("H100-SXM", 4).num_nodes == 4
    path = builtin_hardware("a100", 1).save(tmp_path / "cluster.json")
    loaded = load_hardware(str(path), 3)
    assert isinstance(loaded, HardwareProfile) and loaded.num_nodes == 3 and loaded.name == "builtin:a100"
    with pytest.raises(HardwareProfileError, match="use one of"):
        load_hardware("v100")
    with pytest.raises(HardwareProfileError, match="no hardware file"):
        load_hardware(str(tmp_path / "missing.json"))
    with pytest.raises(HardwareProfileError, match="num_nodes"):
        builtin_hardware("h100", 0)
