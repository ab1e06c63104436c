"""`lorajob plan` as users run it: a real subprocess, good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

LORAJOB = str(Path(sys.executable).with_name("lorajob"))

GOOD = """\
apiVersion: finetune.lora-operator.io/v1alpha1
kind: LoRAJob
metadata: {name: qlora-8b}
spec:
  baseModel: {name: meta-llama/Llama-3.1-8B-Instruct, source: hf://meta-llama/Llama-3.1-8B}
  quantization: {mode: nf4}
  dataset: {source: s3://data/train.jsonl, format: chat, numExamples: 100}
  lora: {r: 64, alpha: 128}
  resources: {gpuType: L4-24GB}
  output: {bucket: results}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LORAJOB, "plan", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


def test_table_json_yaml_and_gpu_override(good: Path) -> None:
    table = run(str(good))
    assert table.returncode == 0, table.stderr
    for text in ("weights", "logits", "placement: 1 node(s) x 1 GPU(s) of L4-24GB", "why:"):
        assert text in table.stdout
    assert "spec.lora.r: rank 64 is high for 100 examples" in table.stdout
    as_json = run(str(good), "--output", "json")
    plan = json.loads(as_json.stdout)["plan"]
    assert plan["gpuType"] == "L4-24GB" and plan["strategy"] == "ddp"
    as_yaml = run(str(good), "-o", "yaml", "--gpu-type", "H100-80GB")
    assert yaml.safe_load(as_yaml.stdout)["plan"]["gpuType"] == "H100-80GB"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("meta-llama/Llama-3.1-8B-Instruct", "foo/bar"), "unknown model 'foo/bar'"),
        (GOOD.replace("r: 64", "r: 0"), "spec.lora.r:"),
        (GOOD.replace("{mode: nf4}", "{mode: nf4"), "malformed YAML"),
        (GOOD.replace("gpuType: L4-24GB", "gpuType: B300"), "spec.resources.gpuType: unknown"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run(str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = run(str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_a_config_map_config_is_planned_from_a_file_given_on_the_command_line(
    tmp_path: Path,
) -> None:
    """The CLI cannot read the cluster: a configMapRef job names the flag to use instead."""
    from_config_map = tmp_path / "cm.yaml"
    from_config_map.write_text(
        GOOD.replace(
            "source: hf://meta-llama/Llama-3.1-8B}",
            "source: hf://my-org/custom, configMapRef: {name: custom-config}}",
        ).replace("meta-llama/Llama-3.1-8B-Instruct", "my-org/custom")
    )
    refused = run(str(from_config_map))
    assert refused.returncode == 2
    assert "spec.baseModel.configMapRef: `lorajob plan` does not read the cluster" in refused.stderr
    shipped = Path(__file__).parents[2] / "operator/lora_operator/memory/configs/llama-3.1-8b.json"
    planned = run(str(from_config_map), "--model-config", str(shipped), "-o", "json")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["plan"]["totalParams"] == 8_030_261_248
