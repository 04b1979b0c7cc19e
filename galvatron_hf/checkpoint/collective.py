"""How the ranks of a checkpoint save or load agree, so that a failure on one rank never leaves others waiting.

Every function also works without a process group (one process: export, single-GPU training, tests), in which
case the agreement is trivial.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def max_over_ranks(value: int) -> int:
    """The largest ``value`` any rank holds (a collective)."""
    if not distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    count = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())


def checked_on_all_ranks(
    action: Callable[[], None], what: str, error_type: type[Exception], *, only_rank0: bool = False
) -> None:
    """Run ``action`` (on each rank, or on rank 0 only); if it fails anywhere, raise ``error_type`` on every rank.

    The agreement is a collective, so it also orders the save's phases: no rank goes on before all are done.
    """
    error: BaseException | None = None
    if not only_rank0 or rank() == 0:
        try:
            action()
        except Exception as err:
            error = err
    if max_over_ranks(1 if error is not None else 0) > 0:  # doubles as the barrier between phases
        raise error_type(f"{what} failed: {error or 'see the failing rank'}") from error


def decided_by_rank0(decide: Callable[[], Any], error_type: type[Exception], what: str) -> Any:
    """Rank 0 runs ``decide``; every rank gets its result, or raises ``error_type`` if rank 0 failed."""
    decision: list[Any] = [None]
    if rank() == 0:
        try:
            decision = [decide()]
        except Exception as err:  # every rank must learn of it, or the others would wait forever
            decision = [error_type(f"{what}: {err}")]
    if distributed():
        dist.broadcast_object_list(decision, src=0)
    if isinstance(decision[0], Exception):
        raise decision[0]
    return decision[0]


def raise_on_every_rank_if_any(error: BaseException | None, error_type: type[Exception]) -> None:
    """Before a collective load: if any rank found a problem, every rank raises (none waits forever).

    Ranks may disagree (a pipeline stage misses a key the other stages do not hold), so the errors are
    exchanged; a rank without one raises the first rank's message.
    """
    if not distributed():
        if error is not None:
            raise error
        return
    messages: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(index, text) for index, text in enumerate(messages) if text is not None]
    if failed:
        index, text = failed[0]
        raise error_type(f"rank {index} cannot load: {text}")


@contextlib.contextmanager
def single_process_dcp_is_intended() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group: for us that is a deliberate mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
