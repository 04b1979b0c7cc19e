"""Process-group set-up for the trainer, clean exits for launched workers, and errors every rank reports.

Under ``torchrun`` / ``accelerate launch`` the process group already exists (TrainingArguments' device set-up
creates it). A lone ``python train.py`` gets a one-process group so the same runtime and checkpoint code run.
Gloo workers can abort at interpreter exit after their work is done (see the CPU facts file); ``finish``
ends them after a barrier with ``destroy_process_group`` + ``os._exit``, passing on the real exit code.

When one rank fails, its peers usually fail next only because it left: they see a gloo "connection closed" in
the collective they were waiting in. :func:`errors_shared_across_ranks` publishes the first failure's message
in the process group's store, so every other rank raises :class:`PeerRankError` with that message (its own error
chained below it); :func:`run_main` also records it where torchrun's failure summary reads it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist


def ensure_process_group(device: torch.device) -> None:
    """Initialise a one-process group when none exists (a plain ``python script.py`` run)."""
    if dist.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "WORLD_SIZE > 1 but no process group exists; launch with torchrun or accelerate launch, which set one up"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    port = _free_port()
    excepthook = sys.excepthook
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    sys.excepthook = excepthook  # one process: no "[rank0]:" before each line of a traceback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finish(exit_code: int = 0) -> None:
    """End a worker: barrier, destroy the process group, flush, ``os._exit`` (skips gloo's exit-time abort)."""
    try:
        if dist.is_initialized():
            if exit_code == 0:
                dist.barrier()
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def run_main(main: Callable[[], object]) -> None:
    """Run a recipe's ``main``; exit 0 on success, print the traceback and exit 1 on failure (and record it
    for torchrun's summary of the first failed rank)."""
    try:
        main()
    except BaseException as error:  # noqa: BLE001 - any failure, interrupts included: print it and exit non-zero
        traceback.print_exc()
        _record_for_torchrun(error)
        finish(1)
    finish(0)


def _record_for_torchrun(error: BaseException) -> None:
    """Write the error where torchrun / accelerate launch print it as the root cause (TORCHELASTIC_ERROR_FILE)."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    with contextlib.suppress(Exception):
        ErrorHandler().record_exception(error)


class PeerRankError(RuntimeError):
    """Another rank failed first; the message is that rank's error (this rank's own is chained below)."""


_FIRST_ERROR_KEY = "galvatron_hf/first_error"
_ERROR_COUNT_KEY = "galvatron_hf/error_count"


@contextlib.contextmanager
def errors_shared_across_ranks(wait_s: float = 5.0) -> Iterator[None]:
    """Run the block; if it fails on several ranks, each one that did not fail first raises the first failure.

    The first rank to fail publishes ``rank N: Type: message`` in the default process group's store and re-raises
    its own error; a later one waits up to ``wait_s`` for that message and raises :class:`PeerRankError` with it.
    One process (or no store) leaves errors as they are.
    """
    try:
        yield
    except BaseException as error:
        if getattr(error, "_galvatron_shared", False) or isinstance(error, KeyboardInterrupt):
            raise
        first = _share_error(error, wait_s)
        error._galvatron_shared = True  # an enclosing block re-raises it as it is
        if first is None:
            raise
        shared = PeerRankError(first)
        shared._galvatron_shared = True
        raise shared from error


def _share_error(error: BaseException, wait_s: float) -> str | None:
    """Publish ``error`` if it is the first; the first failure's message when another rank's came first."""
    store = _default_store()
    if store is None:
        return None
    described = f"{type(error).__name__}: {error}"
    try:
        if store.add(_ERROR_COUNT_KEY, 1) == 1:
            store.set(_FIRST_ERROR_KEY, f"rank {dist.get_rank()}: {described}")
            return None
        store.wait([_FIRST_ERROR_KEY], datetime.timedelta(seconds=wait_s))
        first = store.get(_FIRST_ERROR_KEY).decode()
    except Exception:  # noqa: BLE001 - the store left with the failed rank: keep this rank's own error
        return None
    return None if first.partition(": ")[2] == described else first  # the same error everywhere: keep one's own


def _default_store():
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    from torch.distributed import distributed_c10d

    get_store = getattr(distributed_c10d, "_get_default_store", None)
    if get_store is None:
        return None
    try:
        return get_store()
    except Exception:  # noqa: BLE001 - no store to share through
        return None
