"""Examples are valid; bad objects are rejected the same way by pydantic and by the CRD's CEL."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from apidata import EXAMPLES, MINIMAL

from lora_operator.api.loading import SpecError, load_lorajobs, parse_lorajob
from lora_operator.api.schema_check import check_against_crd


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_for_pydantic_and_crd(path: Path) -> None:
    for job in load_lorajobs(path):
        assert check_against_crd(job.to_wire()) == []
    import yaml

    raw = yaml.safe_load(path.read_text())
    assert check_against_crd(raw) == [], "the file as written (server applies defaults)"


def test_examples_cover_the_documented_cases() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "qlora-llama3-8b-24gb.yaml",
        "lora-llama3-8b-a100.yaml",
        "lora-llama3-70b-zero3.yaml",
        "tiny-cpu.yaml",
    } <= names


def _with(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(MINIMAL)
    node = obj["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return obj


def _merge(*objs: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(MINIMAL)
    for obj in objs:
        for key, value in obj["spec"].items():
            if isinstance(value, dict):
                out["spec"].setdefault(key, {}).update(value)
            else:
                out["spec"][key] = value
    return out


# (object, substring that both the pydantic error and the CEL/CRD error must contain)
CROSS_FIELD = [
    (
        _merge(_with("quantization.mode", "nf4"), _with("resources.gpuType", "cpu")),
        "needs a CUDA GPU",
    ),
    (
        _merge(_with("training.optimizer", "paged_adamw_8bit"), _with("resources.gpuType", "cpu")),
        "need a CUDA GPU",
    ),
    (
        _merge(_with("training.earlyStoppingPatience", 2), _with("dataset.evalSplit", 0)),
        "earlyStoppingPatience needs eval data",
    ),
    (_with("distributed.nodes", 2), "set both nodes and gpusPerNode"),
    (_with("distributed", {"nodes": 128, "gpusPerNode": 64}), "at most 4096"),
    (_with("distributed", {"strategy": "ddp", "offload": "cpu"}), "needs a DeepSpeed strategy"),
    (_with("lora.targetModules", ["all-linear", "q_proj"]), "'all-linear' must be the only"),
    (
        _merge(_with("serving.enabled", True), _with("lora", {"r": 1024, "alpha": 2048})),
        "vLLM serves LoRA ranks up to 512",
    ),
    (
        _merge(
            _with("baseModel.config", "https://models.example/config.json"),
            _with("baseModel.configMapRef", {"name": "model-config"}),
        ),
        "set config or configMapRef, not both",
    ),
    (_with("dpo", {"beta": 0.2}), "dpo: set only with method dpo"),
    (
        _merge(_with("method", "dpo"), _with("dataset.format", "instruction")),
        "dataset.format holds no preference pairs with method dpo",
    ),
    (
        _merge(_with("method", "dpo"), _with("dataset.packing", True)),
        "dataset.packing: method dpo keeps each pair whole",
    ),
    (
        _merge(_with("method", "dpo"), _with("dpo", {"maxPromptLength": 2048})),
        "must be below dataset.maxSeqLength",
    ),
]


@pytest.mark.parametrize("obj, message", CROSS_FIELD, ids=[m for _, m in CROSS_FIELD])
def test_cross_field_rules_agree(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_lorajob(obj)
    assert any(message in p for p in exc.value.problems), exc.value.problems
    crd_errors = check_against_crd(obj)
    assert any(message in e for e in crd_errors), crd_errors


FIELD_ERRORS = [
    (_with("lora.r", 0), "spec.lora.r"),
    (_with("lora.alpha", 0), "spec.lora.alpha"),
    (_with("lora.dropout", 1.5), "spec.lora.dropout"),
    (_with("quantization.mode", "fp8"), "spec.quantization.mode"),
    (_with("dataset.format", "csv"), "spec.dataset.format"),
    (_with("dataset.maxSeqLength", 4), "spec.dataset.maxSeqLength"),
    (_with("training.optimizer", "sgd"), "spec.training.optimizer"),
    (_with("training.learningRate", -1), "spec.training.learningRate"),
    (_with("distributed.strategy", "fsdp"), "spec.distributed.strategy"),
    (_with("output.bucket", "Not_A_Bucket"), "spec.output.bucket"),
    (_with("baseModel.source", "ftp://x"), "spec.baseModel.source"),
    (_with("resources.requests", {"memory": "lots"}), "spec.resources.requests.memory"),
    # hostile input: out of the mount or bucket, negative requests, header-injection names
    (_with("baseModel.source", "pvc://models/../other-claim/x"), "spec.baseModel.source"),
    (_with("dataset.source", "/data/../etc/passwd"), "spec.dataset.source"),
    (_with("dataset.evalSource", "pvc://data/a/../../b"), "spec.dataset.evalSource"),
    (_with("output.prefix", "../other-team"), "spec.output.prefix"),
    (_with("output.prefix", "/absolute"), "spec.output.prefix"),
    (_with("resources.requests", {"memory": "-8Gi"}), "spec.resources.requests.memory"),
    (_with("resources.gpuResourceName", "nvidia.com/gpu\nx"), "spec.resources.gpuResourceName"),
    (_with("baseModel.configMapRef", {"name": "Bad_Name"}), "spec.baseModel.configMapRef.name"),
    (
        _with("baseModel.configMapRef", {"name": "cfg", "key": "../config.json"}),
        "spec.baseModel.configMapRef.key",
    ),
]


@pytest.mark.parametrize("obj, field", FIELD_ERRORS, ids=[f for _, f in FIELD_ERRORS])
def test_field_errors_name_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_lorajob(obj)
    assert any(p.startswith(field + ":") for p in exc.value.problems), exc.value.problems
    crd_path = field.removeprefix("spec.")
    assert any(crd_path in e for e in check_against_crd(obj)), check_against_crd(obj)


def test_unknown_field_is_an_error_not_ignored(minimal: dict[str, Any]) -> None:
    minimal["spec"]["lora"] = {"rank": 8}
    with pytest.raises(SpecError) as exc:
        parse_lorajob(minimal)
    assert exc.value.problems == ["spec.lora.rank: unknown field"]


def test_missing_required_fields_are_listed() -> None:
    obj = copy.deepcopy(MINIMAL)
    del obj["spec"]["dataset"], obj["spec"]["output"]
    with pytest.raises(SpecError) as exc:
        parse_lorajob(obj)
    assert sorted(exc.value.problems) == [
        "spec.dataset: Field required",
        "spec.output: Field required",
    ]
    assert any("dataset" in e for e in check_against_crd(obj))


def test_wrong_kind_or_version(minimal: dict[str, Any]) -> None:
    minimal["apiVersion"] = "finetune.lora-operator.io/v1"
    with pytest.raises(
        SpecError, match=r"apiVersion: must be finetune\.lora-operator\.io/v1alpha1"
    ):
        parse_lorajob(minimal)
