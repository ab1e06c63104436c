"""The GPU calibration script (`make gpu-check`): its dry run on the CPU through the same code
path (real child processes, the real trainer functions, the real plan), its case order, and its
time-budget scheduling under a fake clock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_devkit.bench.memory import estimate_case, load_cases
from lora_devkit.gpu_check.__main__ import CASES_PATH, DOCS_PATH, main
from lora_devkit.gpu_check.cases import Case, default_cases
from lora_devkit.gpu_check.planned import catalog_gpu, planned
from lora_devkit.gpu_check.report import CASES_MARKER, write_cases
from lora_devkit.gpu_check.schedule import CostModel, run_within_budget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CPU dry run of the quick cases (one tiny-llama LoRA case) with the docs and the case
    file written to copies."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    docs, cases = tmp / "benchmarks.md", tmp / "memory_cases.yaml"
    shutil.copy(DOCS_PATH, docs)
    shutil.copy(CASES_PATH, cases)
    out = tmp / "results.json"
    with pytest.MonkeyPatch.context() as patch:
        printed: list[str] = []
        patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        args = ["--device", "cpu", "--cases", "quick", "--out", str(out), "--write-docs"]
        args += ["--docs-path", str(docs), "--write-cases", "--cases-path", str(cases)]
        code = main(args)
    return {
        "code": code,
        "document": json.loads(out.read_text()),
        "stdout": "\n".join(printed),
        "docs": docs.read_text(),
        "cases": cases.read_text(),
    }


def test_dry_run_measures_the_tiny_case_beside_the_plan(dry_run: dict[str, Any]) -> None:
    assert dry_run["code"] == 0, dry_run["stdout"]
    document = dry_run["document"]
    assert document["device"]["cuda"] is False
    assert document["device"]["versions"]["torch"]
    assert document["gpu_type"] == "cpu" and document["measured"] == 1
    [result] = document["results"]
    assert result["case"]["id"] == "tiny-llama-lora-s128-b1"
    assert result["status"] == "measured", result
    assert result["step_s"] > 0 and result["tokens_per_s"] > 0
    assert result["loss_path"] in ("chunked", "standard")
    assert result["host_peak_rss_gib"] > 0
    assert "peak_allocated_gib" not in result  # torch.cuda's peaks exist only on a GPU
    plan = result["plan"]
    assert plan["strategy"] == "ddp" and plan["total_gpus"] == 1
    assert plan["peak_allocated_gib"] > 0 and "activations" in plan["breakdown_gib"]
    assert result["allocated_error"] is None  # no GPU peak to compare on a CPU


def test_dry_run_prints_the_table_and_writes_the_docs(dry_run: dict[str, Any]) -> None:
    stdout = dry_run["stdout"]
    assert "case" in stdout and "allocated" in stdout and "reserved" in stdout
    assert "tiny-llama-lora-s128-b1" in stdout and "CPU (dry run" in stdout
    docs = dry_run["docs"]
    section = docs[docs.index("<!-- gpu-check:begin") : docs.index("<!-- gpu-check:end -->")]
    assert "Last run:" in section and "| tiny-llama-lora-s128-b1 |" in section
    assert "Not yet run on a GPU" not in section
    assert docs.startswith("# Benchmarks")  # the rest of the file is kept
    assert CASES_MARKER not in dry_run["cases"]  # a CPU run has no GPU peak to add


def test_cuda_asked_without_a_gpu_stops_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["--device", "cuda", "--cases", "quick", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "sees no CUDA GPU. Install a CUDA build of torch" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_default_order_puts_the_flagship_and_the_cheap_slope_first() -> None:
    cases = default_cases()
    assert len({c.id for c in cases}) == len(cases) == 4 * 2 * 3 * 2
    assert [c.id for c in cases[:2]] == [
        "llama-3.1-8b-qlora-s2048-b1",
        "llama-3.1-8b-lora-s2048-b1",
    ]
    assert {c.model for c in cases[2:8]} == {"llama-3.2-1b"}
    assert {(c.seq_len, c.micro_batch) for c in cases[2:8]} == {(2048, 1), (4096, 2), (512, 1)}
    first_7b = next(i for i, c in enumerate(cases) if c.model in ("qwen2.5-7b", "mistral-7b-v0.3"))
    assert first_7b == 12 and cases[first_7b].shape == (2048, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def case(model: str, method: str, seq: int, batch: int) -> Case:
    return Case(model, model, method, seq, batch)


def test_budget_starts_only_what_fits_and_learns_from_what_ran() -> None:
    clock = FakeClock()
    built: list[str] = []

    def build(model: str, timeout: float) -> str | None:
        clock.now += 40
        built.append(model)
        return None

    def run(c: Case, timeout: float) -> dict[str, Any]:
        clock.now += {"big": 50, "small": 10}[c.model]
        return {"case": c.to_dict(), "status": "measured"}

    costs = CostModel({"big": 8.0, "small": 1.0})
    cases = [
        case("big", "lora", 2048, 1),  # prior 20 + 2.5 * 8 = 40 s, + build 15 + 6 * 8 = 63 s
        case("small", "lora", 2048, 1),  # build measured at 5 s/B: 5 + 22.5 = 27.5 s
        case("big", "lora", 4096, 2),  # measured 50 s
        case("big", "qlora", 2048, 1),  # prior 20 + 32 = 52 s
        case("small", "qlora", 512, 1),  # prior 24 s
    ]
    results = run_within_budget(cases, costs, build, run, 200.0, clock)
    statuses = [r["status"] for r in results]
    # big: 40 + 50 = 90; small: 40 + 10 = 140; big 4096 needs 50, 60 left: 190;
    # big qlora needs 52, 10 left: skipped; small qlora needs 24: skipped
    assert statuses == ["measured", "measured", "measured", "skipped", "skipped"]
    assert built == ["big", "small"]
    assert results[3]["reason"] == "time budget: needs ~52 s, 10 s left"
    assert results[2]["wall_s"] == 50
    assert costs.runs[("big", "lora")] == 50
    assert costs.build_rate == 40.0  # the last build: 40 s for 1e9 parameters


def test_out_of_memory_rules_out_larger_shapes_and_a_failed_build_its_model() -> None:
    clock = FakeClock()

    def build(model: str, timeout: float) -> str | None:
        return "disk full" if model == "broken" else None

    def run(c: Case, timeout: float) -> dict[str, Any]:
        oom = c.seq_len >= 2048
        return {"case": c.to_dict(), "status": "oom" if oom else "measured"}

    cases = [
        case("m", "lora", 2048, 1),
        case("m", "lora", 4096, 2),
        case("m", "qlora", 4096, 1),
        case("m", "lora", 512, 2),
        case("broken", "lora", 512, 1),
        case("broken", "qlora", 512, 1),
    ]
    results = run_within_budget(cases, CostModel({}), build, run, 10_000.0, clock)
    assert [r["status"] for r in results] == [
        "oom", "skipped", "oom", "measured", "error", "skipped"
    ]  # fmt: skip
    assert results[1]["reason"] == "m-lora-s2048-b1 already ran out of memory"
    assert results[5]["reason"] == "building broken failed: disk full"


def test_measured_gpu_cases_become_memory_benchmark_rows(tmp_path: Path) -> None:
    path = tmp_path / "memory_cases.yaml"
    shutil.copy(CASES_PATH, path)
    published = load_cases(path)
    measured = Case("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "qlora", 2048, 1).to_dict()
    document = {
        "finished": "2026-12-01T02:00:00+00:00",
        "device": {"cuda": True, "device": "NVIDIA H200", "versions": {"torch": "2.13.0"}},
        "results": [
            {"case": measured, "status": "measured", "peak_allocated_gib": 4.0, "loss_path": "x"},
            {"case": measured, "status": "oom", "peak_allocated_gib": 9.0},
        ],
    }
    assert write_cases(path, document) == 1
    assert write_cases(path, document) == 1  # a second run replaces, never duplicates
    cases = load_cases(path)
    assert cases[: len(published)] == published
    [row] = cases[len(published) :]
    assert row["id"] == "gpu-check-llama-3.2-1b-qlora-s2048-b1"
    assert row["trainer"] == "lora-operator" and row["quantization"] == "nf4"
    assert row["measured_gb"] == round(4.0 * 1024**3 / 1e9, 2)
    ours_gb, _ = estimate_case(row)  # the benchmark estimates it exactly as the plan does
    plan_gib = planned(Case.from_dict(measured), "H200-141GB")["peak_allocated_gib"]
    assert ours_gb * 1e9 / 1024**3 == pytest.approx(plan_gib, abs=1e-3)
    assert yaml.safe_load(path.read_text().split(CASES_MARKER)[0]) == published


@pytest.mark.gpu
def test_quick_gpu_run_records_the_device_peaks(tmp_path: Path) -> None:
    """On a CUDA machine (`pytest -m gpu`): the quick cases measure real peaks and the total."""
    out = tmp_path / "results.json"
    code = main(["--cases", "quick", "--time-budget", "300", "--out", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    measured = [r for r in document["results"] if r["status"] == "measured"]
    assert measured, document["results"]
    for result in measured:
        assert 0 < result["peak_allocated_gib"] <= result["peak_reserved_gib"]
        assert result["device_total_gib"] > result["peak_reserved_gib"]
        assert result["allocated_error"] is not None


def test_unknown_models_and_budgets_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match=r"--models: \['nope'\] not in the default cases"):
        main(["--models", "nope"])
    with pytest.raises(SystemExit):
        main(["--time-budget", "0"])
    assert "--time-budget must be a positive number of seconds" in capsys.readouterr().err


def test_the_plan_uses_the_catalog_card_nearest_the_device() -> None:
    assert catalog_gpu(True, 139.8) == "H200-141GB"
    assert catalog_gpu(True, 79.6) == "H100-80GB"
    assert catalog_gpu(True, None) == "H200-141GB"
    assert catalog_gpu(False, None) == "cpu"
