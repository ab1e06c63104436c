"""A user's view: the real `kubectl` binary applies an example and lists LoRAJobs with the CRD's
printer columns, against the emulator (or the real cluster)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from operator_harness import LORAJOBS, REPO, Harness, base_job

from lora_contract.layout import job_location
from lora_operator.api.loading import load_lorajobs

KUBECTL = REPO / ".tools" / "bin" / "kubectl"
EXAMPLE = REPO / "examples" / "tiny-cpu.yaml"


def run_kubectl(harness: Harness, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    binary = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    if binary is None:  # `make test` installs it: missing is a broken setup, not a skip
        pytest.fail("kubectl not installed: run `make setup` (it puts kubectl in .tools/bin)")
    return subprocess.run(
        [binary, "--kubeconfig", str(harness.kubeconfig), "-n", harness.namespace, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def kubectl(harness: Harness, *args: str) -> str:
    result = run_kubectl(harness, *args)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_kubectl_apply_example_and_get_printer_columns(harness: Harness, tmp_path: Path) -> None:
    harness.s3.ensure_bucket("lora-demo")
    # moto's store is per process: a demo test may have left this job name's folder, owned by
    # another uid (which the operator would rightly ignore), in the same bucket.
    example = load_lorajobs(EXAMPLE)[0]
    harness.s3.store().delete_prefix(
        job_location(example.spec.output, harness.namespace, example.metadata.name)
    )
    if harness.client.get("v1/secrets", harness.namespace, "demo-s3") is None:
        harness.client.create(
            "v1/secrets",
            harness.namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "demo-s3",
                    "namespace": harness.namespace,
                    "labels": {"finetune.lora-operator.io/credentials": "true"},
                },
                "stringData": {
                    "accessKey": harness.s3.access_key,
                    "secretKey": harness.s3.secret_key,
                },
            },
        )
    harness.created.append("tiny-cpu")
    out = kubectl(harness, "apply", "-f", str(EXAMPLE))
    assert "lorajob.finetune.lora-operator.io/tiny-cpu created" in out
    harness.wait_phase("tiny-cpu", "Running")
    harness.driver.start("tiny-cpu-r1")
    harness.write_progress("tiny-cpu", "r1", step=10, loss=2.25)  # in the example's own bucket
    harness.wait(
        "progress", lambda: harness.status("tiny-cpu").get("progressSummary") == "10/40 (25%)"
    )
    table = kubectl(harness, "get", "lj")
    header, row = table.splitlines()[:2]
    for column in ("NAME", "PHASE", "PROGRESS", "LOSS", "AGE"):
        assert column in header, header
    assert row.split()[0] == "tiny-cpu"
    assert "Running" in row
    assert "10/40" in row
    assert "2.25" in row
    wide = kubectl(harness, "get", "lorajobs", "tiny-cpu", "-o", "wide")
    assert "tiny-cpu" in wide
    again = kubectl(harness, "apply", "-f", str(EXAMPLE))
    assert "unchanged" in again or "configured" in again


def test_kubectl_apply_refuses_an_invalid_lorajob_and_lists_parse(harness: Harness) -> None:
    """The API server (emulated or real) enforces the CRD: `kubectl apply` of a LoRAJob breaking
    a bound or a CEL rule fails naming the field and stores nothing; lists print as JSON/names."""
    for name, field, change in (
        ("bad-rank", "spec.lora.r", {"lora.r": 0}),
        ("bad-modules", "spec.lora", {"lora.targetModules": ["all-linear", "q_proj"]}),
    ):
        manifest = yaml.safe_dump(base_job(name, **change))
        result = run_kubectl(harness, "apply", "-f", "-", stdin=manifest)
        assert result.returncode != 0, result.stdout
        assert field in result.stderr and "invalid" in result.stderr, result.stderr
        assert harness.client.get(LORAJOBS, harness.namespace, name) is None
    harness.created.append("listed")
    result = run_kubectl(harness, "apply", "-f", "-", stdin=yaml.safe_dump(base_job("listed")))
    assert result.returncode == 0, result.stderr
    everywhere = json.loads(kubectl(harness, "get", "lj", "-A", "-o", "json"))
    assert "listed" in {item["metadata"]["name"] for item in everywhere["items"]}
    assert "lorajob.finetune.lora-operator.io/listed" in kubectl(harness, "get", "lj", "-o", "name")
    jobs = json.loads(kubectl(harness, "get", "jobs", "-o", "json"))
    assert all(item["kind"] == "Job" for item in jobs["items"])


def test_kubectl_wait_and_describe_see_only_their_own_job(harness: Harness) -> None:
    """With the real operator working on two jobs: `kubectl wait` returns on the named job's
    condition, and `kubectl describe` lists that job's Events, not the other's (the API server
    selects Events by involvedObject)."""
    for name in ("mine", "theirs"):
        harness.apply(base_job(name))
    for name in ("mine", "theirs"):
        harness.wait(f"{name}'s Job", functools.partial(harness.job, f"{name}-r1"))
    result = run_kubectl(harness, "wait", "--for=condition=Admitted", "lj/mine", "--timeout=30s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lorajob.finetune.lora-operator.io/mine condition met"
    described = kubectl(harness, "describe", "lj", "mine")
    events = described.split("\nEvents:", 1)[1]
    assert "created Job mine-r1" in events, events
    assert "theirs" not in events, events
    other = json.loads(
        kubectl(harness, "get", "ev", "--field-selector=involvedObject.name=theirs", "-o", "json")
    )
    assert other["items"] and {e["involvedObject"]["name"] for e in other["items"]} == {"theirs"}


def test_kubectl_create_and_get_built_in_kinds_by_short_name(harness: Harness) -> None:
    """`kubectl create secret generic|configmap` (protobuf bodies) work, and the objects are
    listed by their short names."""
    for args in (
        ("create", "secret", "generic", "typed-secret", "--from-literal=k=v"),
        ("create", "configmap", "typed-config", "--from-literal=k=v"),
    ):
        kubectl(harness, *args)
    try:
        assert "configmap/typed-config" in kubectl(harness, "get", "cm", "-o", "name").split()
        secret = harness.client.get("v1/secrets", harness.namespace, "typed-secret")
        assert secret is not None and secret["data"] == {"k": "dg=="}  # base64("v")
        assert kubectl(harness, "get", "ns", "-o", "name").split().count("namespace/default") == 1
        kubectl(harness, "get", "sa")
    finally:
        harness.client.delete("v1/secrets", harness.namespace, "typed-secret")
        harness.client.delete("v1/configmaps", harness.namespace, "typed-config")
