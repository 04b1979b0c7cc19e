"""The one versioned-JSON base: plans, hardware profiles and model profiles follow the same rules.

Each rule is checked on each of the three file types: header keys first, other schema or version refused,
unknown keys refused by name at the top level and inside nested objects, missing required keys named, and
files that are absent, not JSON or not a JSON object refused with the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from galvatron_hf.jsonfile import VersionedJson, read_dataclass
from galvatron_hf.planner.plan import Plan, PlanError
from galvatron_hf.profiler.hardware_schema import HardwareProfile, HardwareProfileError
from galvatron_hf.profiler.model_schema import ModelProfile, ModelProfileError
from tests.planner.test_plan import make_plan
from tests.profiler.test_hardware_schema import make_profile as make_hardware
from tests.profiler.test_model_schema import make_profile as make_model_profile


@dataclass(frozen=True)
class FileType:
    """One versioned JSON type, an instance of it, and where a nested object sits in its JSON."""

    cls: type[VersionedJson]
    error: type[ValueError]
    make: Any
    nested: tuple[Any, ...]  # keys from the top level down to a nested object
    nested_place: str  # how messages name that object
    header: tuple[str, ...]
    write_command: str


TYPES = [
    FileType(Plan, PlanError, make_plan, ("layers", 1), "plan.layers[1]", ("version",), "galvatron-hf search"),
    FileType(
        HardwareProfile,
        HardwareProfileError,
        make_hardware,
        ("collectives", 2),
        "hardware.collectives[2]",
        ("schema", "version"),
        "galvatron-hf profile hardware",
    ),
    FileType(
        ModelProfile,
        ModelProfileError,
        make_model_profile,
        ("layers", "decoder_block", "forward"),
        "model profile.layers['decoder_block'].forward",
        ("schema", "version"),
        "galvatron-hf profile model",
    ),
]
IDS = ["plan", "hardware", "model_profile"]


def nested_object(data: dict[str, Any], keys: tuple[Any, ...]) -> dict[str, Any]:
    for key in keys:
        data = data[key]
    return data


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_round_trip_writes_the_header_first(kind, tmp_path):
    record = kind.make()
    path = record.save(tmp_path / "file.json")
    data = json.loads(path.read_text())
    assert tuple(data)[: len(kind.header)] == kind.header
    assert ("schema" in data) == ("schema" in kind.header)
    assert kind.cls.load(path) == record
    assert kind.cls.from_json(record.to_json()) == record


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_unknown_keys_are_refused_by_name_at_every_level(kind):
    data = kind.make().to_dict()
    with pytest.raises(kind.error, match=r"has unknown keys \['colour'\]; known keys are \[") as raised:
        kind.cls.from_dict({**data, "colour": "blue"})
    assert str(raised.value).startswith(f"{kind.cls.JSON_KIND} has unknown keys")
    nested_object(data, kind.nested)["colour"] = "blue"
    with pytest.raises(kind.error) as raised:
        kind.cls.from_dict(data)
    assert str(raised.value).startswith(f"{kind.nested_place} has unknown keys ['colour']")


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_missing_required_keys_are_named(kind):
    data = kind.make().to_dict()
    first_field = next(key for key in data if key not in kind.header)
    del data[first_field]
    with pytest.raises(kind.error, match=rf"{kind.cls.JSON_KIND} is missing required keys \['{first_field}'\]"):
        kind.cls.from_dict(data)
    data = kind.make().to_dict()
    inner = nested_object(data, kind.nested)
    removed = next(iter(inner))
    del inner[removed]
    with pytest.raises(kind.error, match=rf"is missing required keys \['{removed}'\]"):
        kind.cls.from_dict(data)


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_other_versions_and_schemas_are_refused_with_the_command_that_writes_a_current_file(kind):
    data = kind.make().to_dict()
    current = kind.cls.JSON_VERSION
    with pytest.raises(kind.error, match=f"has version {current + 1}; this galvatron_hf reads version {current}") as raised:
        kind.cls.from_dict({**data, "version": current + 1})
    assert kind.write_command in str(raised.value)
    if "schema" in kind.header:
        with pytest.raises(kind.error, match="schema 'other'"):
            kind.cls.from_dict({**data, "schema": "other"})


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_bad_files_name_the_path(kind, tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(kind.error, match=f"no {kind.cls.JSON_KIND} file at {missing}; write one with") as raised:
        kind.cls.load(missing)
    assert kind.write_command in str(raised.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(kind.error, match=f"{broken} is not valid JSON"):
        kind.cls.load(broken)
    a_list = tmp_path / "list.json"
    a_list.write_text("[]")
    with pytest.raises(kind.error, match="must hold a JSON object, got list"):
        kind.cls.load(a_list)


@pytest.mark.parametrize("kind", TYPES, ids=IDS)
def test_a_nested_object_of_the_wrong_shape_is_named(kind):
    data = kind.make().to_dict()
    parent = nested_object(data, kind.nested[:-1])
    parent[kind.nested[-1]] = ["not", "an", "object"]
    with pytest.raises(kind.error, match=r"must be an object, got list"):
        kind.cls.from_dict(data)


@dataclass(frozen=True)
class Leaf:
    x: int


@dataclass(frozen=True)
class Tree:
    one: Leaf
    maybe: Leaf | None
    many: list[Leaf]
    named: dict[str, Leaf]
    plain: list[int]


def test_read_dataclass_builds_optional_list_and_dict_fields():
    data = {"one": {"x": 1}, "maybe": None, "many": [{"x": 2}], "named": {"a": {"x": 3}}, "plain": [4]}
    tree = read_dataclass(Tree, data, "tree", ValueError)
    assert tree == Tree(Leaf(1), None, [Leaf(2)], {"a": Leaf(3)}, [4])
    with pytest.raises(ValueError, match=r"tree.many must be a list, got dict"):
        read_dataclass(Tree, {**data, "many": {"x": 2}}, "tree", ValueError)
    with pytest.raises(ValueError, match=r"tree.named\['a'\] has unknown keys \['y'\]"):
        read_dataclass(Tree, {**data, "named": {"a": {"x": 3, "y": 0}}}, "tree", ValueError)
