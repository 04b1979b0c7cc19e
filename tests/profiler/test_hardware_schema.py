import pytest

from galvatron_hf.profiler.hardware_schema import (
    CollectiveFit,
    DeviceSpec,
    HardwareProfile,
    HardwareProfileError,
    P2PFit,
    bus_factor,
)


def make_profile():
    return HardwareProfile(
        name="test",
        num_nodes=2,
        gpus_per_node=4,
        device=DeviceSpec(name="gpu", memory_gb=80, matmul_tflops={"bf16": 600}, peak_tflops={"bf16": 989}),
        collectives=[
            CollectiveFit("all_reduce", 2, "intra_node", 1e-5, 100.0),
            CollectiveFit("all_reduce", 4, "intra_node", 2e-5, 150.0),
            CollectiveFit("all_reduce", 8, "inter_node", 5e-5, 40.0),
            CollectiveFit("all_gather", 4, "intra_node", 2e-5, 150.0),
        ],
        p2p=[P2PFit("intra_node", 1e-5, 200.0), P2PFit("inter_node", 2e-5, 25.0)],
    )


def test_bus_factors_follow_nccl_tests():
    assert bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert bus_factor("all_gather", 4) == pytest.approx(0.75)
    assert bus_factor("all_reduce", 1) == 0.0


def test_collective_time_uses_algbw_and_nearest_group():
    hw = make_profile()
    nbytes = 1e9
    # all-reduce over 4 ranks: algbw = 150 / 1.5 = 100 GB/s
    assert hw.collective_time("all_reduce", nbytes, 4) == pytest.approx(2e-5 + 0.01)
    # group of 3 was not measured: nearest measured size (2 or 4, larger wins the tie) gives the busbw
    assert hw.collective_time("all_reduce", nbytes, 3) > 0
    # 4 ranks strided by 2 span 7 GPUs: still one node of 4? no -> inter-node
    assert hw.placement_of(4, stride=2) == "inter_node"
    assert hw.placement_of(4, stride=1) == "intra_node"
    assert hw.collective_time("all_reduce", nbytes, 1) == 0.0


def test_missing_placement_is_a_clear_error():
    hw = make_profile()
    with pytest.raises(HardwareProfileError, match="no inter_node all_gather"):
        hw.collective_time("all_gather", 1e6, 8, placement="inter_node")


def test_round_trip_and_rejects_bad_numbers(tmp_path):
    hw = make_profile()
    path = hw.save(tmp_path / "hw.json")
    assert HardwareProfile.load(path) == hw
    data = hw.to_dict()
    data["collectives"][0]["busbw_GBps"] = -1
    with pytest.raises(HardwareProfileError, match="busbw > 0"):
        HardwareProfile.from_dict(data)
    with pytest.raises(HardwareProfileError, match="schema"):
        HardwareProfile.from_dict({**hw.to_dict(), "schema": "other"})
