"""The CRD is generated from the pydantic types, structural, and valid for Kubernetes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lora_operator.api import crd
from lora_operator.api.crd import CRD_TARGETS, build_crd, render_crd_yaml


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_committed_crds_match_the_types() -> None:
    expected = render_crd_yaml()
    for target in CRD_TARGETS:
        assert target.read_text() == expected, f"{target} drifted from the types: run `make crds`"


def test_crds_check_command_passes_on_the_committed_files() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "lora_operator.cli", "crds", "--check"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr


def test_crds_check_command_detects_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the repository's CRD files: one edited by hand, one deleted, then repaired."""
    targets = [tmp_path / t.relative_to(crd.REPO_ROOT) for t in CRD_TARGETS]
    monkeypatch.setattr(crd, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(crd, "CRD_TARGETS", targets)
    for target in targets:
        target.parent.mkdir(parents=True)
        target.write_text(render_crd_yaml())
    assert crd.main(["--check"]) == 0

    edited, missing = targets
    edited.write_text(render_crd_yaml().replace("LoRA rank.", "LoRA rank (edited by hand)."))
    assert crd.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert str(edited.relative_to(tmp_path)) in err and "make crds" in err
    assert str(missing.relative_to(tmp_path)) not in err  # only the drifted file is named

    missing.unlink()
    assert crd.main(["--check"]) == 1
    assert str(missing.relative_to(tmp_path)) in capsys.readouterr().err

    assert crd.main(["--write"]) == 0
    assert crd.main(["--check"]) == 0
    assert all(t.read_text() == render_crd_yaml() for t in targets)


def test_every_spec_field_is_described() -> None:
    """`kubectl explain lorajob.spec...` shows these descriptions: none may be empty."""
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = []
    for path, node in _walk(spec, "spec"):
        for name, child in node.get("properties", {}).items():
            if not str(child.get("description", "")).strip():
                missing.append(f"{path}.{name}")
    assert not missing, f"fields without a description: {missing}"


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    for path, node in _walk(schema):
        assert node.get("additionalProperties") is not False, path
        assert "title" not in node or not isinstance(node["title"], str), path
        for option in node.get("anyOf", []):
            assert option.get("type") != "null", path
        if node.get("type") == "object":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(build_crd(), "1.33", strict=True)


def test_crd_names_columns_and_subresources() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LoRAJob", "lorajobs", ["lj"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for column in ("Phase", "Model", "Quant", "Placement", "Progress", "Loss", "Age"):
        assert column in columns
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"baseModel", "dataset", "output"}
    assert spec["properties"]["lora"]["properties"]["r"] == {
        "default": 16,
        "description": "LoRA rank.",
        "maximum": 1024,
        "minimum": 1,
        "type": "integer",
    }
    assert spec["properties"]["lora"]["properties"]["alpha"]["exclusiveMinimum"] is True
    assert spec["x-kubernetes-validations"], "cross-field CEL rules are attached to the spec"


def test_crd_yaml_round_trips() -> None:
    docs = list(yaml.safe_load_all(render_crd_yaml()))
    assert docs == [build_crd()]
