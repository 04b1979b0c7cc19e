"""Atomic checkpoint I/O: files appear whole or not at all, and a directory is replaced by one rename.

A save writes everything into ``.<name>.tmp-<nonce>`` beside ``<dir>``; :func:`publish` seals it with the
manifest, moves an existing ``<dir>`` aside to ``.<name>.old-<nonce>``, renames the staging folder into place
and only then deletes the old one. A crash between the two renames leaves no ``<dir>``:
:func:`recover_interrupted_save` (run before every load and export) puts the newest sealed folder back.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from galvatron_hf.checkpoint.manifest import MANIFEST_NAME

STAGING_MARK = ".tmp-"
ASIDE_MARK = ".old-"
FULL_BELOW_BYTES = 1 << 20  # a file system with less room than this cannot take another checkpoint file


def staging_name(target: Path, mark: str, nonce: str) -> Path:
    """``.<name>.tmp-<nonce>`` beside the target: hidden, so HF Trainer's ``checkpoint-*`` globs (rotation,
    last-checkpoint search) never take a half-written or replaced checkpoint for a real one."""
    return target.with_name(f".{target.name}{mark}{nonce}")


def publish(staging: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Seal the staged checkpoint with its manifest, then swap it into place; the old one goes last."""
    atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    fsync_directory(staging)
    nonce = staging.name.rsplit(STAGING_MARK, 1)[1]
    aside = staging_name(target, ASIDE_MARK, nonce)
    if target.is_dir() and any(target.iterdir()):
        os.rename(target, aside)  # from here until the next rename, recover_interrupted_save can finish the swap
    elif target.is_dir():
        target.rmdir()
    os.rename(staging, target)
    fsync_directory(target.parent)
    _remove_leftovers(target)


def recover_interrupted_save(path: Path) -> bool:
    """If ``path`` is missing because a crash hit between the two renames of a save, put it back.

    A sealed staging folder (it has the manifest) is the newer checkpoint, so it wins over the one that was
    moved aside. Returns True if something was renamed.
    """
    if (path / MANIFEST_NAME).is_file() or (path.exists() and any(path.iterdir())):
        return False
    candidates = [
        p
        for mark in (STAGING_MARK, ASIDE_MARK)
        for p in sorted(_siblings(path, mark), key=lambda p: p.stat().st_mtime, reverse=True)
        if (p / MANIFEST_NAME).is_file()
    ]
    if not candidates:
        return False
    if path.is_dir():
        path.rmdir()
    os.rename(candidates[0], path)
    fsync_directory(path.parent)
    return True


def _siblings(target: Path, mark: str) -> list[Path]:
    return list(target.parent.glob(f".{glob.escape(target.name)}{mark}*"))


def _remove_leftovers(target: Path) -> None:
    """Delete the replaced checkpoint and staging folders of saves that crashed, now that target is good."""
    for leftover in _siblings(target, ASIDE_MARK) + _siblings(target, STAGING_MARK):
        shutil.rmtree(leftover, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def describe_os_error(error: BaseException, where: Path) -> str:
    """``error`` in words, saying so when the disk holding ``where`` is full (torch's own message for a
    failed write, "unexpected pos ...", does not)."""
    text = str(error)
    if disk_full(error, where):
        text += f" -- the disk holding {where} is full ({free_bytes(where):,} bytes free); free space or save elsewhere"
    return text


def disk_full(error: BaseException, where: Path) -> bool:
    """Whether ``error`` (or an error it was raised from) is "no space left", or the disk has no room left."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return free_bytes(where) < FULL_BELOW_BYTES


def free_bytes(where: Path) -> int:
    """Free bytes on the file system holding ``where`` (or its nearest existing parent)."""
    existing = Path(where).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free
