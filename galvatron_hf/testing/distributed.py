"""Run a function on N local processes with a real process group, and get every rank's result back.

Used by our tests (CPU, gloo) and handy for users checking a layout on one machine. Each rank initialises
``torch.distributed`` through a file store, runs ``fn(rank, world_size, *args)``, saves what it returns, and
leaves with ``os._exit`` after ``destroy_process_group``: gloo processes sometimes abort in interpreter
teardown after all work is done ("terminate called without an active exception"), which would otherwise
turn a passing run into a failure.

Ranks start from a fork server (``forkserver``, the default on Linux) that imported torch's distributed
packages, transformers and the transformers model modules this process had imported, once: each launch then
costs a fork instead of several seconds of imports per rank, which is most of a small launch's time on a
small CPU machine. ``start_method="spawn"`` starts each rank from a fresh interpreter instead.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


# Imported once by the fork server, before it forks any rank: third-party packages only (found the same way
# whatever the caller's sys.path; the server does not receive it), each importable on its own.
SERVER_IMPORTS = (
    "torch",
    "torch.distributed.checkpoint",
    "torch.distributed.fsdp",
    "torch.distributed.pipelining",
    "torch.distributed.tensor",
    "transformers",
)
# Also imported by the server when this process has already imported them (its ranks most likely need them).
SERVER_IMPORTS_IF_LOADED = ("accelerate", "datasets", "peft", "transformers.trainer", "trl")


class DistributedRunError(RuntimeError):
    """One or more ranks failed; the message holds each failing rank's traceback."""


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 300.0,
    threads_per_rank: int = 1,
    start_method: str | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return the results by rank.

    ``fn`` must be importable (a module-level function): ranks unpickle it by name. Each rank sees this
    process's environment as it is at the call. ``start_method``: ``"forkserver"`` (the default where the
    platform has it) or ``"spawn"``.
    """
    start_method = start_method or _default_start_method()
    if start_method == "forkserver":
        _configure_fork_server()
    elif start_method != "spawn":
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}")
    with tempfile.TemporaryDirectory(prefix="galvatron_dist_") as workdir:
        work = Path(workdir)
        context = mp.start_processes(
            _worker,
            args=(fn, world_size, args, backend, str(work), threads_per_rank, timeout_s, dict(os.environ)),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        _join(context, timeout_s)
        return _collect(work, world_size)


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _configure_fork_server() -> None:
    """Name what the fork server imports before it forks the first rank (a server already running keeps its
    imports: they only save time, the ranks import whatever else they need)."""
    model_modules = [
        name for name in sys.modules if name.startswith("transformers.models.") and ".modeling_" in name
    ]
    loaded = [name for name in SERVER_IMPORTS_IF_LOADED if name in sys.modules]
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        [*SERVER_IMPORTS, *loaded, *sorted(model_modules)]
    )


def _join(context: mp.ProcessContext, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if context.join(timeout=1.0):
                return
        except mp.ProcessExitedException:
            return  # a rank died: _collect reports which one and why
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise DistributedRunError(f"distributed run did not finish within {timeout_s:.0f} s (killed)")


def _collect(work: Path, world_size: int) -> list[Any]:
    results, failures = [], []
    for rank in range(world_size):
        error_file = work / f"rank{rank}.error"
        result_file = work / f"rank{rank}.pt"
        if error_file.exists():
            failures.append(f"--- rank {rank} ---\n{error_file.read_text()}")
        elif not result_file.exists():
            failures.append(f"--- rank {rank} ---\nexited without a result (crashed or was killed)")
        else:
            results.append(torch.load(result_file, weights_only=False))
    if failures:
        raise DistributedRunError("distributed run failed:\n" + "\n".join(failures))
    return results


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    args: tuple,
    backend: str,
    workdir: str,
    threads_per_rank: int,
    timeout_s: float,
    environment: Mapping[str, str],
) -> None:
    import datetime

    torch.set_num_threads(threads_per_rank)
    os.environ.clear()  # a forked rank holds the fork server's environment: take the caller's
    os.environ.update(environment)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(world_size))
    work = Path(workdir)
    try:
        dist.init_process_group(
            backend,
            init_method=f"file://{work / 'store'}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        result = fn(rank, world_size, *args)
        torch.save(result, work / f"rank{rank}.pt.tmp")
        os.replace(work / f"rank{rank}.pt.tmp", work / f"rank{rank}.pt")
        dist.barrier()
        code = 0
    except BaseException:  # report everything, KeyboardInterrupt included, then leave
        (work / f"rank{rank}.error").write_text(traceback.format_exc())
        code = 1
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
