"""`lorajob plan` shows the forecast and `lorajob calibrate` refits efficiencies: real
subprocesses, as users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lora_operator.api.operator_config import OperatorConfig
from lora_operator.memory import GpuCatalog

LORAJOB = str(Path(sys.executable).with_name("lorajob"))
EXAMPLE = str(Path(__file__).parents[2] / "examples" / "qlora-llama3-8b-24gb.yaml")


def lorajob(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LORAJOB, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_plan_shows_a_forecast_in_table_and_json() -> None:
    table = lorajob("plan", EXAMPLE)
    assert table.returncode == 0, table.stderr
    assert "  forecast\n" in table.stdout
    assert "tokens              46,694,400 (numExamples x maxSeqLength x 2 epoch(s))" in (
        table.stdout
    )
    assert "GPU-hours" in table.stdout and "with recomputation" in table.stdout
    as_json = json.loads(lorajob("plan", EXAMPLE, "-o", "json").stdout)
    forecast = as_json["plan"]["forecast"]
    assert forecast["tokens"] == 46_694_400 and forecast["hours"] > 0
    assert "cost" not in forecast  # no price in the shipped catalog


def test_plan_reads_a_local_dataset_for_the_token_count(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    row = json.dumps({"prompt": "p" * 300, "completion": "c" * 500}) + "\n"
    data.write_text(row * 10)  # 10 rows of ~200 tokens (800 characters / 4)
    job = yaml.safe_load(Path(EXAMPLE).read_text())
    job["spec"]["dataset"]["source"] = str(data)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    table = lorajob("plan", str(path))
    assert table.returncode == 0, table.stderr
    assert "(dataset: 10 rows x 200 tokens/row (~characters/4) x 2 epoch(s))" in table.stdout


def _run(run_id: str, gpu: str, efficiency: float, hours: float, actual: float) -> dict[str, Any]:
    return {
        "id": run_id,
        "specHash": "h",
        "outputURI": f"s3://b/{run_id}",
        "phase": "Succeeded",
        "forecast": {
            "gpuType": gpu,
            "gpus": 1,
            "efficiency": efficiency,
            "hours": hours,
            "gpuHours": hours,
            "actualHours": actual,
            "actualGpuHours": actual,
            "forecastRatio": actual / hours,
        },
    }


DUMP = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "metadata": {"name": "a"},
            "status": {
                "runs": [
                    _run("r1", "L4-24GB", 0.4, 1.0, 2.0),  # needed 0.2
                    _run("r2", "L4-24GB", 0.4, 1.0, 0.8),  # needed 0.5
                    _run("r3", "L4-24GB", 0.4, 1.0, 0.1),  # 6 minutes: start-up dominates
                ]
            },
        },
        {
            "metadata": {"name": "b"},
            "status": {
                "runs": [
                    _run("r1", "H100-80GB", 0.4, 2.0, 1.0),  # needed 0.8
                    {"id": "r2", "specHash": "h", "outputURI": "s3://b/x", "phase": "Failed"},
                ]
            },
        },
        {"metadata": {"name": "never-ran"}, "spec": {}},
    ],
}


def test_calibrate_prints_median_efficiencies_as_catalog_yaml() -> None:
    result = lorajob("calibrate", "-", stdin=json.dumps(DUMP))
    assert result.returncode == 0, result.stderr
    assert "a/r3: 6.0 min is too short" in result.stderr
    fitted = yaml.safe_load(result.stdout)
    assert fitted == {
        "gpuCatalog": [
            {"name": "H100-80GB", "memoryGib": 79.6, "efficiency": 0.8},
            {"name": "L4-24GB", "memoryGib": 22, "efficiency": 0.35},
        ]
    }
    config = OperatorConfig.model_validate(fitted)  # pastes into the operator config as is
    merged = GpuCatalog.default().merged(config.gpu_catalog)
    assert merged.get("L4-24GB").efficiency == 0.35
    assert merged.get("L4-24GB").peak_tflops == 121


def test_calibrate_explains_bad_or_empty_input(tmp_path: Path) -> None:
    bad = tmp_path / "dump.json"
    bad.write_text("{not: [json")
    broken = lorajob("calibrate", str(bad))
    assert broken.returncode == 2 and "cannot read a LoRAJob list" in broken.stderr
    assert "Traceback" not in broken.stderr
    empty = lorajob("calibrate", "-", stdin='{"items": []}')
    assert empty.returncode == 1 and "no succeeded run" in empty.stderr
