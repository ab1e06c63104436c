"""How crd.py turns pydantic's JSON Schema into a Kubernetes structural schema, rule by rule on
small hand-made models, and what `lorajob crds` (print / --write / --check) does and returns."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, computed_field

from lora_operator.api import crd
from lora_operator.api.crd import CRD_FILENAME, render_crd_yaml


class Inner(BaseModel):
    """An inner object."""

    a: int = 1


class Other(BaseModel):
    b: str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false

    s: str = "x"


class Sample(BaseModel):
    opt: int | None = None
    either: int | str | None = None
    union: Inner | Other | None = None
    inner: Inner = Field(default_factory=Inner, description="the field's own words")
    typed: dict[str, Inner] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    anything: dict[str, Any] = Field(default_factory=dict)
    items: list[Inner] = Field(default_factory=list)
    strict: Strict = Field(default_factory=Strict)
    lit: Literal["x"] = "x"
    ratio: float = Field(default=1, gt=0, lt=10)
    title: str = "t"  # a property named like a keyword that is dropped


INNER = {
    "type": "object",
    "description": "An inner object.",
    "properties": {"a": {"type": "integer", "default": 1}},
}
OTHER = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}


def structural(model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
    raw = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
    result: dict[str, Any] = crd._structural(raw, raw.get("$defs", {}))
    return result


@pytest.fixture  # per test: mutmut credits a shared fixture's calls to the first test only
def sample() -> dict[str, Any]:
    return structural(Sample)


def test_no_titles_defs_or_refs_remain(sample: dict[str, Any]) -> None:
    assert set(sample) == {"type", "properties"}
    assert sample["type"] == "object"


def test_nullable_unions_are_flattened_and_default_none_dropped(sample: dict[str, Any]) -> None:
    assert sample["properties"]["opt"] == {"type": "integer"}
    # Two real options stay a union, without the null.
    assert sample["properties"]["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def test_refs_are_inlined_everywhere_and_the_fields_own_keys_win(sample: dict[str, Any]) -> None:
    props = sample["properties"]
    assert props["inner"] == {**INNER, "description": "the field's own words"}
    assert props["union"] == {"anyOf": [INNER, OTHER]}  # refs inside a list
    assert props["items"] == {"type": "array", "items": INNER}


def test_maps_typed_or_free_form(sample: dict[str, Any]) -> None:
    props = sample["properties"]
    assert props["typed"] == {"type": "object", "additionalProperties": INNER}
    assert props["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    # dict[str, Any]: Kubernetes would prune every key without preserve-unknown-fields.
    assert props["anything"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_additional_properties_false_is_dropped(sample: dict[str, Any]) -> None:
    assert sample["properties"]["strict"] == {
        "type": "object",
        "properties": {"s": {"type": "string", "default": "x"}},
    }


def test_const_becomes_a_one_value_enum(sample: dict[str, Any]) -> None:
    assert sample["properties"]["lit"] == {"type": "string", "enum": ["x"], "default": "x"}


def test_exclusive_bounds_are_rewritten_to_openapi_v3(sample: dict[str, Any]) -> None:
    assert sample["properties"]["ratio"] == {
        "type": "number",
        "default": 1,
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 10,
        "exclusiveMaximum": True,
    }
    # Already in the OpenAPI v3 (boolean) form: left alone.
    openapi = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert crd._structural(openapi, {}) == openapi


def test_property_names_are_not_keywords(sample: dict[str, Any]) -> None:
    assert sample["properties"]["title"] == {"type": "string", "default": "t"}
    node = {"type": "object", "properties": {"const": {"type": "string"}, "default": {}}}
    assert crd._structural(node, {})["properties"] == {"const": {"type": "string"}, "default": {}}


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"type": "object"}, {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        (
            {"type": "object", "additionalProperties": {}},
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        ),
        ({"additionalProperties": {}}, {"x-kubernetes-preserve-unknown-fields": True}),
        ({"additionalProperties": True}, {"x-kubernetes-preserve-unknown-fields": True}),
        ({"type": "string"}, {"type": "string"}),
        ({"type": "object", "properties": {}}, {"type": "object", "properties": {}}),
    ],
    ids=[
        "bare-object",
        "empty-schema-map",
        "untyped-empty-map",
        "untyped-true-map",
        "string",
        "no-fields",
    ],
)
def test_objects_without_a_schema_keep_unknown_fields(
    node: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert crd._structural(node, {}) == expected


def test_json_schema_mode_is_honoured() -> None:
    """Status is generated in serialization mode: computed fields the operator writes appear."""

    class WithComputed(BaseModel):
        n: int = 0

        @computed_field  # type: ignore[prop-decorator]
        @property
        def doubled(self) -> int:
            return 2 * self.n

    build: Any = crd._json_schema
    assert "doubled" in build(WithComputed, "serialization")["properties"]
    assert "doubled" not in build(WithComputed, "validation")["properties"]


def test_rules_attach_at_dotted_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = [
        {"path": "", "rule": "has(self.a)", "message": "top"},
        {"path": "a.b", "rule": "self.c > 0", "message": "nested", "fieldPath": ".c"},
    ]
    monkeypatch.setattr(crd, "CEL_RULES", rules)
    schema: dict[str, Any] = {"properties": {"a": {"properties": {"b": {"type": "object"}}}}}
    crd._attach_rules(schema)
    assert schema["x-kubernetes-validations"] == [{"rule": "has(self.a)", "message": "top"}]
    assert schema["properties"]["a"]["properties"]["b"]["x-kubernetes-validations"] == [
        {"rule": "self.c > 0", "message": "nested", "fieldPath": ".c"}
    ]
    assert "x-kubernetes-validations" not in schema["properties"]["a"]


# ------------------------------------------------------------------------------------ main()


@pytest.fixture
def empty_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """crd.main() pointed at an empty folder: no crds/ and no chart yet."""
    targets = [tmp_path / t.relative_to(crd.REPO_ROOT) for t in crd.CRD_TARGETS]
    monkeypatch.setattr(crd, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(crd, "CRD_TARGETS", targets)
    return targets


def test_without_options_the_crd_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main([]) == 0
    out = capsys.readouterr()
    assert out.out == render_crd_yaml()
    assert out.err == ""


def test_write_creates_the_folders_and_names_each_file(
    empty_repo: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert not any(t.parent.exists() for t in empty_repo)
    assert crd.main(["--write"]) == 0
    assert all(t.read_text() == render_crd_yaml() for t in empty_repo)
    assert capsys.readouterr().out.splitlines() == [
        f"wrote crds/{CRD_FILENAME}",
        f"wrote charts/lora-operator/crds/{CRD_FILENAME}",
    ]


def test_check_names_every_stale_file(
    empty_repo: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert crd.main(["--check"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"CRD out of date: crds/{CRD_FILENAME}, charts/lora-operator/crds/{CRD_FILENAME}; "
        "run `make crds`\n"
    )
    assert not any(t.exists() for t in empty_repo)  # --check writes nothing


def test_write_and_check_exclude_each_other(
    empty_repo: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        crd.main(["--write", "--check"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
    assert not any(t.exists() for t in empty_repo)


def test_help_describes_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        crd.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lorajob crds [-h] [--write | --check]\n")
    assert "\nGenerate the LoRAJob CustomResourceDefinition from the pydantic types.\n" in text
    assert re.search(r"^\s+--write\s+write crds/ and the chart's copy$", text, re.MULTILINE)
    assert re.search(r"^\s+--check\s+exit 1 if the committed files drift$", text, re.MULTILINE)
