"""spec.baseAdapter in the trainer: a run starts from an earlier run's adapter (SFT, then DPO from
it), trainable, instead of a fresh one; a bad adapter folder is a bad config naming the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_contract.storage import S3Store
from lora_contract.types import LoRAJobSpec
from lora_trainer.errors import InvalidConfigError
from lora_trainer.model import apply_lora, load_base_model

from .conftest import base_spec
from .test_dpo import dpo_spec, records, text_rows, write


def lora_weights(model: Any) -> dict[str, Any]:
    """The `default` adapter's tensors, named as in adapter_model.safetensors."""
    return {
        name.replace(".default", ""): param.detach().clone()
        for name, param in model.named_parameters()
        if "lora_" in name and ".default." in name
    }


def _train_sft(make_run: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = {
        "training": {"maxSteps": 4, "checkpointInterval": 4, "evalInterval": 4},
        "dataset": {"evalSplit": 0.0},
    }
    run = make_run(spec=spec)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    return run


def with_base_adapter(run: Any, uri: str) -> None:
    """What the operator renders for a resolved spec.baseAdapter: TrainerConfig.baseAdapterURI."""
    document = yaml.safe_load(run.config_path.read_text())
    document["baseAdapterURI"] = uri
    run.config_path.write_text(yaml.safe_dump(document))


def test_dpo_starts_from_the_sft_adapter_and_trains(
    make_run: Any,
    store: S3Store,
    tmp_path: Path,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sft = _train_sft(make_run, monkeypatch)
    final = sft.location.child("final")
    local = tmp_path / "sft-final"
    store.download_prefix(final, local)
    from safetensors.torch import load_file

    saved = load_file(str(local / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())  # not B = 0

    # step 0 of the DPO run: the model apply_lora builds holds the SFT adapter's weights,
    # trainable (a fresh adapter would have every lora_B zero and other A matrices)
    data = write(tmp_path / "pref.jsonl", text_rows(32))
    spec = LoRAJobSpec.model_validate(dpo_spec(data))
    model = apply_lora(load_base_model(model_dir, spec, local_rank=0), spec, local)
    loaded = lora_weights(model)
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert loaded[name].equal(tensor), name
    assert all(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    fresh = lora_weights(apply_lora(load_base_model(model_dir, spec, local_rank=0), spec))
    assert all(t.abs().sum() == 0 for n, t in fresh.items() if "lora_B" in n)

    # the DPO run itself, from the adapter in S3: it trains and says where it started from
    dpo = dpo_spec(data)
    dpo["training"].update(maxSteps=4, checkpointInterval=2, logInterval=2)
    run = make_run(spec=dpo)
    with_base_adapter(run, final.uri)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    whole = {r["step"]: r for r in records(store, run) if "loss" in r}
    assert sorted(whole) == [2, 4]
    # as if the pod died after checkpoint-2: the run resumes from its own checkpoint (not from
    # the SFT adapter again) with the same reference (the SFT adapter): the same step 4
    saved_final = _download(store, run.location.child("final"), tmp_path / "dpo-whole")
    store.delete_prefix(run.location.child("checkpoint-4"))
    store.delete_prefix(run.location.child("final"))
    capfd.readouterr()
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    assert "resuming from checkpoint-2" in capfd.readouterr().err
    resumed = {r["step"]: r for r in records(store, run) if "loss" in r}
    for key in ("loss", "reward_margin"):
        assert resumed[4][key] == pytest.approx(whole[4][key], rel=1e-4), (key, resumed, whole)
    manifest = store.get_json(run.location.child("final", "MANIFEST.json"))
    assert isinstance(manifest, dict)
    assert manifest["lineage"]["baseAdapterURI"] == final.uri
    card = store.get_bytes(run.location.child("final", "README.md"))
    assert card is not None and f"| baseAdapterURI | {final.uri} |" in card.decode()
    trained = load_file(str(_download(store, run.location.child("final"), tmp_path / "dpo")))
    assert any(not trained[k].equal(saved[k]) for k in saved)  # DPO moved the SFT adapter
    first = load_file(str(saved_final))
    assert all(trained[k].allclose(first[k], rtol=1e-4, atol=1e-6) for k in first)


def _download(store: S3Store, where: Any, dest: Path) -> Path:
    store.download_prefix(where, dest)
    return dest / "adapter_model.safetensors"


def test_a_folder_without_adapter_config_is_a_bad_config(tmp_path: Path, model_dir: Path) -> None:
    spec = LoRAJobSpec.model_validate(base_spec(tmp_path / "d.jsonl", "prompt-completion"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidConfigError) as caught:
        apply_lora(load_base_model(model_dir, spec, local_rank=0), spec, empty)
    assert str(caught.value) == f"spec.baseAdapter: {empty} holds no adapter_config.json"


def test_a_rank_other_than_the_specs_is_a_bad_config(tmp_path: Path, model_dir: Path) -> None:
    spec = LoRAJobSpec.model_validate(base_spec(tmp_path / "d.jsonl", "prompt-completion"))
    folder = tmp_path / "adapter"
    apply_lora(load_base_model(model_dir, spec, local_rank=0), spec).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8
    config["r"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError) as caught:
        apply_lora(load_base_model(model_dir, spec, local_rank=0), spec, folder)
    assert str(caught.value) == "spec.baseAdapter: the adapter has rank 4, spec.lora.r is 8"
    shutil.rmtree(folder)
