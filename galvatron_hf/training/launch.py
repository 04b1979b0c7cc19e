"""Process-group set-up for the trainer and clean exits for launched workers.

Under ``torchrun`` / ``accelerate launch`` the process group already exists (TrainingArguments' device set-up
creates it). A lone ``python train.py`` gets a one-process group so the same runtime and checkpoint code run.
Gloo workers can abort at interpreter exit after their work is done (see the CPU facts file); ``finish``
ends them after a barrier with ``destroy_process_group`` + ``os._exit``, passing on the real exit code.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable

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
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


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
    """Run a recipe's ``main``; exit 0 on success, print the traceback and exit 1 on failure."""
    try:
        main()
    except BaseException:  # noqa: BLE001 - any failure, interrupts included: print it and exit non-zero
        traceback.print_exc()
        finish(1)
    finish(0)
