import os

import pytest
import torch
import torch.distributed as dist

from galvatron_hf.testing.distributed import DistributedRunError, run_distributed


def _all_reduce_rank(rank, world_size, scale):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item() * scale, "marker": os.environ.get("GALVATRON_TEST_MARKER")}


def _fails_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank one")
    dist.barrier()
    return rank


def test_results_come_back_by_rank_and_ranks_see_the_callers_environment(monkeypatch):
    monkeypatch.setenv("GALVATRON_TEST_MARKER", "set after the fork server started")
    results = run_distributed(_all_reduce_rank, 3, 2.0)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["sum"] == 6.0 for r in results)
    assert {r["marker"] for r in results} == {"set after the fork server started"}


def test_a_failing_rank_reports_its_traceback_from_spawned_ranks():
    with pytest.raises(DistributedRunError, match="boom on rank one"):
        run_distributed(_fails_on_rank_one, 2, timeout_s=60, start_method="spawn")


def test_an_unknown_start_method_is_refused():
    with pytest.raises(ValueError, match="'forkserver' or 'spawn'"):
        run_distributed(_fails_on_rank_one, 2, start_method="fork")
