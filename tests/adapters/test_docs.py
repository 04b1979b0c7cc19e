"""The code docs/adapters.md shows as excerpts of the package's files is what those files hold."""

from __future__ import annotations

import re
from pathlib import Path

import galvatron_hf

REPO = Path(galvatron_hf.__file__).parent.parent
EXCERPT = re.compile(r"```python\n# (galvatron_hf/\S+\.py)\n(.*?)```", re.DOTALL)


def excerpts(doc: Path) -> list[tuple[str, list[str]]]:
    """(file, runs of consecutive lines) of every code block that starts with a ``# galvatron_hf/...`` line;
    a line ``...`` separates runs (lines of the file left out)."""
    found = []
    for path, body in EXCERPT.findall(doc.read_text(encoding="utf-8")):
        runs = [run.strip("\n") for run in re.split(r"^\.\.\.$", body, flags=re.MULTILINE)]
        found.append((path, [run for run in runs if run]))
    return found


def test_the_worked_example_of_adding_a_family_is_the_package_code():
    blocks = excerpts(REPO / "docs" / "adapters.md")
    files = {path for path, _ in blocks}
    assert {"galvatron_hf/adapters/gpt2.py", "galvatron_hf/adapters/registry.py",
            "galvatron_hf/parallel/families/gpt2.py"} <= files  # fmt: skip
    for path, runs in blocks:
        source = (REPO / path).read_text(encoding="utf-8")
        position = 0
        for run in runs:
            found = source.find(run, position)
            assert found >= 0, f"docs/adapters.md shows lines of {path} that it does not hold (in this order):\n{run}"
            position = found + len(run)
    whole = dict(blocks)["galvatron_hf/parallel/families/gpt2.py"]  # shown as "the whole file"
    assert whole == [(REPO / "galvatron_hf/parallel/families/gpt2.py").read_text(encoding="utf-8").strip("\n")]
