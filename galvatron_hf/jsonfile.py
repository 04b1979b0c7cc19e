"""JSON files galvatron_hf writes (plans, hardware and model profiles): identifying keys first, atomic writes.

Pure Python, importable by every part.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


def ordered_dict(record: Any, first: tuple[str, ...]) -> dict[str, Any]:
    """``asdict(record)`` with the ``first`` keys (e.g. schema, version) leading, so a reader sees them at once."""
    data = asdict(record)
    ordered = {key: data.pop(key) for key in first}
    ordered.update(data)
    return ordered


def write_json_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def to_json(data: dict[str, Any], indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent)
