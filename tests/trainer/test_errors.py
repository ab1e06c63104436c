"""Bad inputs: each gives its clear message, the right exit code, and (when S3 is reachable)
state=failed with lastError in progress.json and the pod's termination message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT
from lora_contract.storage import S3Store
from lora_contract.types import Progress
from lora_devkit.s3server import free_port
from lora_trainer.main import main

from .conftest import BUCKET


def run_in_process(run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[int, str]:
    """Call `main()` here (fast: the failure comes before any training) with the run's env."""
    code, message = run.run_here(monkeypatch)
    return int(code), str(message)


def failed_progress(store: S3Store, run: Any) -> Progress:
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "failed"
    return progress


def test_missing_dataset(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = make_run(spec={"dataset": {"source": str(tmp_path / "nope.jsonl")}})
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_INVALID_CONFIG
    assert "dataset.source" in message and "file not found" in message
    assert failed_progress(store, run).last_error == message


def test_empty_dataset(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    run = make_run(spec={"dataset": {"source": str(empty)}})
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_INVALID_CONFIG
    assert "the dataset is empty" in message
    assert failed_progress(store, run).last_error == message


def test_all_rows_malformed(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\nnot json\n{"prompt": 5, "completion": "y"}\n')
    run = make_run(spec={"dataset": {"source": str(bad)}})
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_INVALID_CONFIG
    assert "no usable rows for format prompt-completion: 3 of 3 rows are bad" in message
    assert "row 1: missing field 'prompt'" in message
    assert "prompt-completion" in failed_progress(store, run).last_error  # type: ignore[operator]


def test_unknown_format_is_rejected_by_the_types(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = make_run()
    raw = json.loads(json.dumps(good.config.to_wire()))
    raw["spec"]["dataset"]["format"] = "alpaca"
    run = make_run(raw=raw)
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_INVALID_CONFIG
    assert "spec.dataset.format" in message and "alpaca" in message
    # The config is invalid, yet its outputUri is readable: the operator sees why in S3 too.
    location = S3Location.parse(raw["outputUri"])
    progress = Progress.model_validate(store.get_json(location.child("progress.json")))
    assert progress.state == "failed" and progress.last_error == message


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAJOB_CONFIG", str(tmp_path / "missing.yaml"))
    assert main([]) == EXIT_INVALID_CONFIG


def test_unreachable_s3_is_transient(
    make_run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = make_run()
    run.env["S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    run.env["LORAJOB_S3_RETRIES"] = "2"
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_TRANSIENT
    assert "127.0.0.1" in message and "lorajobs-test" in message
    assert "Connection refused" in message or "connect" in message.lower()


def test_nf4_without_cuda(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A GPU type passes the API's own check; the trainer finds no CUDA at run time.
    run = make_run(spec={"resources": {"gpuType": "A100-80GB"}, "quantization": {"mode": "nf4"}})
    code, message = run_in_process(run, monkeypatch, tmp_path)
    assert code == EXIT_INVALID_CONFIG
    assert "quantization.mode nf4 needs a CUDA GPU" in message
    assert failed_progress(store, run).last_error == message


def test_malformed_rows_are_counted_and_training_continues(
    make_run: Any,
    store: S3Store,
    datasets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    mixed = tmp_path / "mixed.jsonl"
    good = datasets["prompt-completion"].read_text().splitlines()[:40]
    mixed.write_text("\n".join([*good[:5], "{broken", '{"prompt": "only"}', *good[5:]]) + "\n")
    run = make_run(spec={"dataset": {"source": str(mixed)}, "training": {"maxSteps": 2}})
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "40 of 42 rows usable; 2 bad rows skipped (first: row 6: invalid JSON" in output
    assert Progress.model_validate(store.get_json(run.location.child("progress.json"))).step == 2


def test_missing_s3_dataset_and_model(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_run(spec={"dataset": {"source": f"s3://{BUCKET}/nowhere/train.jsonl"}})
    code, message = data.run_here(monkeypatch)
    assert code == EXIT_INVALID_CONFIG
    assert message == f"dataset.source s3://{BUCKET}/nowhere/train.jsonl does not exist"
    assert failed_progress(store, data).last_error == message

    model = make_run(spec={"baseModel": {"source": f"s3://{BUCKET}/no-models/tiny"}})
    code, message = model.run_here(monkeypatch)
    assert code == EXIT_INVALID_CONFIG
    assert "baseModel.source" in message and "no objects under this S3 prefix" in message
