"""The demo's pieces that need no training: argument and input errors, the manifest it applies,
the progress line, signal handling and process-group cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_devkit.demo import main, workspace
from lora_devkit.demo.children import (
    Interrupted,
    signals_raise,
    stop_process_group,
)
from lora_devkit.demo.follow import format_eta, progress_line
from lora_devkit.demo.summary import inference_service, render
from lora_devkit.emulator import EmulatedCluster


def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--steps", "1"]) == 2
    assert "--steps must be between 2 and 10000" in capsys.readouterr().err
    assert main(["--timeout", "0"]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err


def test_missing_kubectl_says_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(workspace, "REPO", tmp_path / "checkout")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["--workdir", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "kubectl not found" in err and "make setup" in err
    assert "Traceback" not in err


def test_refuses_to_wipe_a_folder_it_did_not_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    assert main(["--workdir", str(precious)]) == 1
    assert "was not created by `lorajob-demo`" in capsys.readouterr().err
    assert (precious / "thesis.tex").exists()
    workspace.prepare_workdir(tmp_path / "demo")
    (tmp_path / "demo" / "old.log").write_text("previous run")
    workspace.prepare_workdir(tmp_path / "demo")  # its own folder: emptied and reused
    assert not (tmp_path / "demo" / "old.log").exists()


def test_steps_scale_the_intervals_and_the_manifest_validates(tmp_path: Path) -> None:
    manifest = workspace.demo_manifest(workspace.EXAMPLE, 12)
    training = manifest["spec"]["training"]
    assert training["maxSteps"] == 12
    assert training["checkpointInterval"] == training["evalInterval"] == 6
    assert training["logInterval"] == 2
    job = workspace.write_manifest(manifest, tmp_path / "job.yaml")
    assert job.spec.distributed.nodes == 2  # two local "nodes" over gloo
    tiny = workspace.demo_manifest(workspace.EXAMPLE, 2)["spec"]["training"]
    assert tiny["checkpointInterval"] == tiny["evalInterval"] == tiny["logInterval"] == 1
    assert workspace.demo_manifest(workspace.EXAMPLE, None)["spec"]["training"]["maxSteps"] == 40


def test_an_invalid_example_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    manifest = workspace.demo_manifest(workspace.EXAMPLE, None)
    manifest["spec"]["lora"]["r"] = 0
    with pytest.raises(workspace.DemoError, match=r"lora\.r"):
        workspace.write_manifest(manifest, bad)
    bad.write_text("kind: [unclosed")
    with pytest.raises(workspace.DemoError, match="malformed YAML"):
        workspace.demo_manifest(bad, None)


def test_progress_line() -> None:
    running = {"state": "running", "step": 12, "totalSteps": 40, "loss": 5.81234}
    running |= {"evalLoss": 5.9, "etaSeconds": 75.4}
    assert progress_line(running) == "step 12/40 (30%)  loss 5.8123  eval 5.9000  ETA 1m15s"
    assert progress_line({"state": "starting"}).startswith("trainer starting")
    assert progress_line({"state": "succeeded", "step": 40, "totalSteps": 40}) == (
        "step 40/40 (100%)"
    )
    assert format_eta(None) == "?" and format_eta(9.6) == "10s"


def test_inference_service_and_summary_rendering(tmp_path: Path) -> None:
    with EmulatedCluster(tmp_path / "k8s") as cluster:
        client = cluster.client()
        isvc = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "tiny-cpu", "namespace": "default"},
            "spec": {
                "predictor": {
                    "model": {
                        "args": ["--enable-lora", "--lora-modules", "tiny=/mnt/models/adapter"],
                        "storageUris": [{"uri": "s3://b/final", "mountPath": "/mnt/models"}],
                    }
                }
            },
        }
        client.create("serving.kserve.io/v1beta1/inferenceservices", "default", isvc)
        found = inference_service(client, "default", "tiny-cpu")
        assert inference_service(client, "default", None) == {}
        assert inference_service(client, "default", "absent") == {}
    assert found["loraModules"] == "tiny=/mnt/models/adapter"
    assert found["storageUris"] == ["s3://b/final"]
    summary = {
        "name": "tiny-cpu",
        "namespace": "default",
        "phase": "Succeeded",
        "steps": 12,
        "totalSteps": 12,
        "losses": [[2, 6.0], [12, 5.5]],
        "firstLoss": 6.0,
        "finalLoss": 5.5,
        "restarts": 1,
        "resumedFrom": [6],
        "adapterURI": "s3://b/final",
        "adapterFiles": ["adapter_config.json", "adapter_model.safetensors"],
        "adapterDir": "/x/adapter",
        "lossPlot": "/x/loss.png",
        "inferenceService": found,
    }
    text = render(summary, "PLAN TABLE", "NAME PHASE\ntiny-cpu Succeeded\n")
    assert "6.0000 at step 2 -> 5.5000 at step 12 (down)" in text
    assert "resumed from checkpoint-6" in text
    assert "--lora-modules tiny=/mnt/models/adapter" in text
    assert "PLAN TABLE" in text and "tiny-cpu Succeeded" in text
    assert "shared server" not in text  # no --pipeline: nothing of it printed

    # --pipeline: a shared server (no --lora-modules) and the pipeline's outcome
    r1, r2 = "s3://b/demo/default/tiny-cpu/r1/final", "s3://b/demo/default/tiny-cpu/r2/final"
    summary["inferenceService"] = {"name": "lora-server-1", "loraModules": None, "args": []}
    summary["pipeline"] = {
        "server": "lora-server-1",
        "serverURL": "http://127.0.0.1:9",
        "models": ["base", "tiny", "tiny-dpo"],
        "secondJob": "sft-then-dpo-tiny-cpu",
        "secondMethod": "dpo",
        "secondStartedFrom": {"job": "tiny-cpu", "run": "r1", "uri": r1},
        "retrain": {"servingRun": "r2", "entryURI": r2, "entryRun": "r2"},
        "rollback": {"servingRun": "r1", "entryURI": r1, "syncedURI": r1},
    }
    lines = render(summary, "PLAN TABLE", "NAME PHASE\n").splitlines()
    shared_line = (
        "  serving:      InferenceService lora-server-1 (shared: its adapters from its registry)"
    )
    assert shared_line in lines
    assert lines[-5:] == [
        "  shared server: lora-server-1 at http://127.0.0.1:9",
        "  /v1/models:    base, tiny, tiny-dpo",
        "  second job:    sft-then-dpo-tiny-cpu (dpo, from r1)",
        f"  retrain:       r2 promoted, entry {r2}",
        f"  rollback:      servingRun r1, entry {r1}, synced {r1}",
    ]


def test_sigterm_becomes_interrupted_and_a_second_one_is_ignored() -> None:
    # What the process inherited (a background shell job starts with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted), signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    with signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except Interrupted:
            os.kill(os.getpid(), signal.SIGINT)  # during cleanup: ignored
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before  # restored, whatever it was


def test_stop_process_group_kills_the_whole_group() -> None:
    script = "import subprocess, sys, time; "
    script += "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    script += "print(c.pid, flush=True); time.sleep(60)"
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    stop_process_group(parent, grace_seconds=5)
    assert parent.returncode is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
