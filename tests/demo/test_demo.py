"""`lorajob-demo` end to end, as `make demo` runs it: a subprocess with the real kubectl, the real
operator, the local executor and real training of the tiny model on two "nodes".

The S3 server belongs to the test (the demo uses it through S3_ENDPOINT), so the adapter is
checked in the bucket itself after the demo has stopped, and loaded with PEFT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_devkit.s3server import S3Server

REPO = Path(__file__).resolve().parents[2]
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json"}


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server(use_env=False) as server:
        yield server


def run_demo(
    tmp_path: Path, s3: S3Server, *args: str, timeout_s: int = 270
) -> tuple[dict[str, Any], str]:
    summary_path = tmp_path / "summary.json"
    env = {
        **os.environ,
        "S3_ENDPOINT": s3.endpoint,
        "S3_ACCESS_KEY": s3.access_key,
        "S3_SECRET_KEY": s3.secret_key,
    }
    command = [sys.executable, "-m", "lora_devkit.demo", "--keep"]
    command += ["--workdir", str(tmp_path / "demo"), "--summary-json", str(summary_path)]
    command += ["--timeout", str(timeout_s), *args]
    result = subprocess.run(
        command,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s + 30,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout[-5000:]}\n{result.stderr[-8000:]}"
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary, result.stdout


def adapter_in_bucket(s3: S3Server, summary: dict[str, Any], dest: Path) -> Path:
    """The final adapter is in S3 under the run's final/ prefix; download it."""
    assert summary["adapterURI"] == summary["finalAdapterURI"]
    final = S3Location.parse(summary["adapterURI"])
    store = s3.store()
    assert set(store.list(final, recursive=True)) >= ADAPTER_FILES
    store.download_prefix(final, dest)
    return dest


def test_demo_pipeline_trains_shares_a_server_promotes_and_rolls_back(
    tmp_path: Path, s3: S3Server
) -> None:
    """`make demo`: the first job trains for real, then a second job joins its shared server,
    the stand-in lists both adapters, a retrain promotes r2 and `lorajob promote` rolls back."""
    summary, stdout = run_demo(tmp_path, s3, "--pipeline", "--steps", "8", timeout_s=420)

    assert summary["phase"] == "Succeeded"
    assert summary["steps"] == summary["totalSteps"] == 8
    assert summary["firstLoss"] > summary["finalLoss"], summary["losses"]
    adapter = adapter_in_bucket(s3, summary, tmp_path / "adapter")
    # The run's folder has the namespace in it, and the real trainer claimed its job folder.
    run = S3Location.parse(summary["runURI"])
    assert run.key.endswith(f"/{summary['namespace']}/tiny-cpu/r1"), run
    owner = s3.store().job_owner(run)
    assert owner is not None and (owner.namespace, owner.name) == (summary["namespace"], "tiny-cpu")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "pvc" / "models" / "tiny-llama")
    model = PeftModel.from_pretrained(base, adapter)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: trained
    assert Path(summary["lossPlot"]).read_bytes().startswith(b"\x89PNG")
    assert "phase Running" in stdout and "phase Succeeded" in stdout
    assert "placement: 2 node(s) x 1 process(s) of cpu" in stdout  # the plan table
    assert "$ kubectl get lj" in stdout

    pipeline = summary["pipeline"]
    server = pipeline["server"]
    assert server.startswith("lora-server-") and summary["inferenceService"]["name"] == server
    # both jobs on the one server; its vLLM stand-in lists the base model and both adapters
    r1_uri = f"s3://lora-demo/demo/{summary['namespace']}/tiny-cpu/r1/final"
    r2_uri = r1_uri.replace("/r1/", "/r2/")
    second = "sft-then-dpo-tiny-cpu"  # examples/sft-then-dpo-tiny-cpu.yaml
    assert (pipeline["secondJob"], pipeline["secondMethod"]) == (second, "dpo")
    assert pipeline["secondPhase"] == "Succeeded"
    # DPO from the SFT job's adapter: r1, the run serving when it started
    assert pipeline["secondStartedFrom"] == {"job": "tiny-cpu", "run": "r1", "uri": r1_uri}
    assert pipeline["adapters"] == ["tiny", "tiny-dpo"]
    assert pipeline["models"] == ["lora-operator/tiny-llama", "tiny", "tiny-dpo"]
    rows = {line.split()[0]: line.split() for line in pipeline["kubectlGetLJ"].splitlines()[1:]}
    assert set(rows) == {"tiny-cpu", second}
    assert all(row[1:3] == ["Succeeded", "True"] for row in rows.values())  # PHASE, READY
    # the retrain: r2 promoted (promote: latest), the registry entry on r2's adapter
    assert pipeline["retrain"] == {"servingRun": "r2", "entryURI": r2_uri, "entryRun": "r2"}
    # the rollback through `lorajob promote`: the spec, the status, the entry and the folder
    # the syncer downloaded are all back on r1
    assert pipeline["rollback"] == {
        "servingRun": "r1",
        "promote": "manual",
        "run": "r1",
        "r1AdapterURI": r1_uri,
        "entryURI": r1_uri,
        "entryRun": "r1",
        "syncedURI": r1_uri,
    }
    assert "lorajob promote default/tiny-cpu r1" in stdout
    final_rows = pipeline["finalKubectlGetLJ"].splitlines()
    tiny = next(line.split() for line in final_rows if line.startswith("tiny-cpu "))
    assert tiny[-1] == "r1"  # SERVING-RUN


def test_demo_kill_a_pod_resumes_from_the_checkpoint(tmp_path: Path, s3: S3Server) -> None:
    summary, stdout = run_demo(tmp_path, s3, "--kill-a-pod", "--steps", "16", "--step-delay", "0.4")

    assert summary["phase"] == "Succeeded"
    killed = summary["killedPod"]
    assert killed and killed["index"] == 1  # a worker node: node 0 hosts the rendezvous
    checkpoint = int(killed["after"].rsplit("-", 1)[1])
    assert summary["restarts"] >= 1
    assert checkpoint in summary["resumedFrom"]
    assert summary["steps"] == summary["totalSteps"] == summary["configuredSteps"] == 16
    adapter_in_bucket(s3, summary, tmp_path / "adapter")
    assert f"resumes from checkpoint-{checkpoint}" in stdout
    assert "the Job retries it" in stdout
