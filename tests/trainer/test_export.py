"""The merged export of a finished run (spec.export.merged): the merged tiny model gives the
logits of base + adapter, loads with transformers alone (no PEFT), and its MANIFEST.json's
checksums verify what was downloaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.pod import EXIT_OK, EXIT_TRANSIENT
from lora_contract.storage import S3Store
from lora_trainer.export import main as export_main


def run_export(run: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    termination = run.config_path.with_suffix(".export-termination-log")
    termination.write_text("")
    monkeypatch.setenv("LORAJOB_TERMINATION_LOG", str(termination))
    return export_main([str(run.config_path)]), termination.read_text()


def test_merged_model_matches_base_plus_adapter_and_loads_without_peft(
    make_run: Any, store: S3Store, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {
        "training": {"maxSteps": 2, "checkpointInterval": 2, "learningRate": 0.05},
        "export": {"merged": True, "dtype": "float32", "maxShardSize": "100KB"},
    }
    run = make_run(spec=spec)
    assert run.run_here(monkeypatch)[0] == 0
    code, message = run_export(run, monkeypatch)
    assert (code, message) == (EXIT_OK, "")

    merged = tmp_path / "merged"
    store.download_prefix(run.location.child("merged"), merged)
    manifest = json.loads((merged / "MANIFEST.json").read_text())
    assert manifest["dtype"] == "float32"
    assert manifest["adapter"] == run.location.child("final").uri
    listed = set(manifest["files"])
    on_disk = {p.relative_to(merged).as_posix() for p in merged.rglob("*") if p.is_file()}
    assert on_disk == listed | {"MANIFEST.json"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((merged / name).read_bytes()).hexdigest() == digest, name
        assert (merged / name).stat().st_size == manifest["files"][name]
    shards = sorted(n for n in listed if n.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in listed  # 100KB shards
    assert {"config.json", "tokenizer_config.json"} <= listed

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    store.download_prefix(run.location.child("final"), adapter)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        plain = base(ids).logits
        expected = PeftModel.from_pretrained(base, adapter)(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(merged)  # transformers alone
        got = loaded(ids).logits
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    assert got.dtype == torch.float32
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter does change outputs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_export_without_a_finished_adapter_is_transient_and_leaves_progress_alone(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(spec={"export": {"merged": True}})
    progress = run.location.child("progress.json")
    store.put_json(progress, {"state": "succeeded", "step": 24, "totalSteps": 24})
    code, message = run_export(run, monkeypatch)
    final = run.location.child("final").uri
    assert (code, message) == (
        EXIT_TRANSIENT,
        f"export: no finished adapter at {final} (its MANIFEST.json)",
    )
    assert store.get_json(progress) == {"state": "succeeded", "step": 24, "totalSteps": 24}
    assert store.list(run.location.child("merged")) == []
