"""`lorajob promote NS/JOB RUN` against the Kubernetes emulator over HTTP, logged in with the
emulator's kubeconfig (KUBECONFIG, as kubectl): the spec change it makes, and each refusal,
one line naming what is wrong, with the LoRAJob left as it was (resourceVersion compared)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

from lora_devkit.emulator import EmulatedCluster, RestClient
from lora_operator.api.promote_cmd import LORAJOBS, PromoteError, promote
from lora_operator.cli import main

NS = "promote-cli"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    with EmulatedCluster(tmp_path_factory.mktemp("k8s"), kserve=False) as emulated:
        yield emulated


@pytest.fixture
def client(cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch) -> RestClient:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return cluster.client()


def make_job(client: RestClient, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "finetune.lora-operator.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "baseModel": {"name": "tiny-llama", "source": "pvc://models/tiny"},
            "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": "lorajobs"},
            "serving": {"enabled": True},
        },
    }
    client.create(LORAJOBS, NS, body)
    runs = [
        {"id": "r1", "specHash": "a", "outputURI": "s3://lorajobs/r1", "phase": "Succeeded"},
        {"id": "r2", "specHash": "b", "outputURI": "s3://lorajobs/r2", "phase": "Succeeded"},
        {"id": "r3", "specHash": "c", "outputURI": "s3://lorajobs/r3", "phase": "Failed"},
    ]
    client.patch(LORAJOBS, NS, name, {"status": {"runs": runs, "servingRun": "r2"}}, status=True)
    got = client.get(LORAJOBS, NS, name)
    assert got is not None
    return got


def test_promote_sets_manual_and_the_run(
    client: RestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_job(client, "ok")
    assert main(["promote", f"{NS}/ok", "r1"]) == 0
    after = client.get(LORAJOBS, NS, "ok")
    assert after is not None
    serving = after["spec"]["serving"]
    assert (serving["enabled"], serving["promote"], serving["run"]) == (True, "manual", "r1")
    assert before["spec"]["serving"]["promote"] == "latest"  # the CRD default, before
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert after["spec"]["baseModel"] == before["spec"]["baseModel"]  # nothing else changed
    out = capsys.readouterr().out
    assert out.strip() == (
        f"lorajob {NS}/ok: spec.serving set to promote=manual, run=r1; the operator points "
        "serving at it (status.servingRun)"
    )


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("r9", "run r9 is not in status.runs; succeeded runs: r1, r2"),
        ("r3", "run r3 is Failed; succeeded runs: r1, r2"),
        ("latest", "run 'latest': expected a run id such as r2"),
    ],
)
def test_a_run_that_cannot_serve_is_refused_and_nothing_changes(
    client: RestClient, capsys: pytest.CaptureFixture[str], run: str, message: str
) -> None:
    name = f"no-{run}"
    before = make_job(client, name)
    assert main(["promote", f"{NS}/{name}", run]) == 1
    err = capsys.readouterr().err
    assert err == f"error: lorajob promote: {message}\n"
    assert client.get(LORAJOBS, NS, name) == before


def test_a_missing_lorajob_and_a_bad_target_are_refused(
    client: RestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", f"{NS}/absent", "r1"]) == 1
    assert capsys.readouterr().err == f"error: lorajob promote: LoRAJob {NS}/absent not found\n"
    assert main(["promote", "absent", "r1"]) == 1
    assert capsys.readouterr().err == (
        "error: lorajob promote: target 'absent': expected NAMESPACE/LORAJOB\n"
    )


def test_a_concurrent_edit_fails_the_promotion(
    client: RestClient, cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone edits the job between promote's read and its patch: a 409, not an overwrite."""
    make_job(client, "race")
    from lora_operator.api import promote_cmd

    real = promote_cmd.promotion_patch

    def edit_in_between(obj: dict[str, Any], run: str) -> dict[str, Any]:
        patch = real(obj, run)
        client.patch(LORAJOBS, NS, "race", {"spec": {"serving": {"replicas": 2}}}, status=False)
        return patch

    monkeypatch.setattr(promote_cmd, "promotion_patch", edit_in_between)
    info = kopf.ConnectionInfo(server=cluster.url)
    with pytest.raises(PromoteError, match="changed while promoting; run it again"):
        asyncio.run(promote(info, NS, "race", "r1"))
    after = client.get(LORAJOBS, NS, "race")
    assert after is not None
    serving = after["spec"]["serving"]
    assert (serving["replicas"], serving["promote"], "run" in serving) == (2, "latest", False)


def test_the_cli_lists_promote(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--help"]) == 0
    assert "  promote " in capsys.readouterr().out


def test_kubectl_wide_shows_the_serving_run(client: RestClient, cluster: EmulatedCluster) -> None:
    """The Serving-Run printer column (priority 1): only with -o wide, as kubectl prints it."""
    make_job(client, "wide")  # status.servingRun r2
    kubectl = ROOT / ".tools" / "bin" / "kubectl"
    binary = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl not installed: run `make setup` (it puts kubectl in .tools/bin)")
    base = [binary, "--kubeconfig", str(cluster.kubeconfig), "-n", NS, "get", "lj", "wide"]

    def table(*extra: str) -> dict[str, str]:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        names = header.split()
        cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        return dict(zip(names, cells, strict=True))

    assert table("-o", "wide")["SERVING-RUN"] == "r2"
    assert "SERVING-RUN" not in table()
