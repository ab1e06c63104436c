"""Two teams, one bucket: the real operator process (watching two namespaces) against the
emulator and a real S3 server.

The reported attack: `default/shared-name` and `team-b/shared-name` both got
`s3://.../runs/shared-name/r1`, so one's progress.json showed in both statuses (and a trainer
would have resumed from the other team's checkpoint). Now each run's folder has the namespace
in it, is recorded in the run's status when the run starts, and the trainer pods learn their
LoRAJob's uid to claim it; a folder claimed by another uid (the same name deleted and
recreated) is not read as this job's progress.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from job_driver import JobDriver
from operator_harness import (
    LORAJOBS,
    SECRET,
    Harness,
    base_job,
    prepare_harness,
    start_operator,
)

from lora_contract import pod
from lora_contract.layout import JobOwner, S3Location, owner_marker
from lora_devkit.emulator import RestClient
from lora_devkit.operator_process import secret_manifest, stop_operator
from lora_devkit.s3server import S3Server

TEAM_B = "team-b"
SHARED = "shared-name"
RESYNCS = 2.0  # the operator resyncs every 0.5 s: four passes


@pytest.fixture(scope="module")
def tenants(
    cluster: tuple[RestClient, Path], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """The harness's namespace plus team-b (with its own credentials Secret), one operator."""
    client, kubeconfig = cluster
    workdir = tmp_path_factory.mktemp("tenants")
    harness = prepare_harness(client, s3, kubeconfig, workdir)
    if client.get("v1/secrets", TEAM_B, SECRET) is None:
        client.create(
            "v1/secrets", TEAM_B, secret_manifest(SECRET, TEAM_B, s3.access_key, s3.secret_key)
        )
    harness.log_path = workdir / "operator.log"
    harness.operator = start_operator(
        kubeconfig, harness.config_path, harness.log_path, "--namespace", TEAM_B
    )
    yield harness
    for name in harness.created:
        client.delete(LORAJOBS, harness.namespace, name)
    client.delete(LORAJOBS, TEAM_B, SHARED)
    stop_operator(harness.operator)


def create_in(harness: Harness, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(job)
    body["metadata"]["namespace"] = namespace
    created: dict[str, Any] = harness.client.create(LORAJOBS, namespace, body)
    return created


def wait_for_job(harness: Harness, namespace: str, name: str) -> str:
    job = f"{name}-r1"
    harness.wait(
        f"Job {namespace}/{job}", lambda: harness.client.get("batch/v1/jobs", namespace, job)
    )
    return job


def start_pods(harness: Harness, namespace: str, name: str) -> None:
    """Mark the run's pods running (progress is read from then on)."""
    JobDriver(harness.client, namespace).start(wait_for_job(harness, namespace, name))


def progress_step(harness: Harness, namespace: str, name: str) -> int | None:
    obj = harness.client.get(LORAJOBS, namespace, name) or {}
    step = ((obj.get("status") or {}).get("progress") or {}).get("step")
    return int(step) if step is not None else None


def rendered(harness: Harness, namespace: str, name: str) -> tuple[str, dict[str, str]]:
    """(outputUri of the run's ConfigMap, trainer env) as the pods would get them."""
    config_map = harness.client.get("v1/configmaps", namespace, f"{name}-r1-config")
    assert config_map is not None
    config = yaml.safe_load(config_map["data"][pod.CONFIG_FILE])
    job = harness.client.get("batch/v1/jobs", namespace, f"{name}-r1")
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    return str(config["outputUri"]), env


def test_same_name_in_two_namespaces_gets_two_folders_and_its_own_progress(
    tenants: Harness,
) -> None:
    home = tenants.namespace
    tenants.created.append(SHARED)
    mine = tenants.apply(base_job(SHARED))
    theirs = create_in(tenants, TEAM_B, base_job(SHARED))
    uri_home = tenants.run_uri(SHARED, "r1", home)
    uri_b = tenants.run_uri(SHARED, "r1", TEAM_B)
    assert uri_home != uri_b
    assert uri_home.endswith(f"/runs/{home}/{SHARED}/r1")
    assert uri_b.endswith(f"/runs/{TEAM_B}/{SHARED}/r1")
    # What each team's trainer is told: its own recorded folder, and its own LoRAJob's uid.
    for namespace, obj, uri in ((home, mine, uri_home), (TEAM_B, theirs, uri_b)):
        wait_for_job(tenants, namespace, SHARED)
        output_uri, env = rendered(tenants, namespace, SHARED)
        assert output_uri == uri
        assert env[pod.ENV_JOB_UID] == obj["metadata"]["uid"]
    start_pods(tenants, home, SHARED)
    start_pods(tenants, TEAM_B, SHARED)

    tenants.write_progress(SHARED, "r1", namespace=TEAM_B, step=17)
    tenants.wait("team-b's progress", lambda: progress_step(tenants, TEAM_B, SHARED) == 17)
    time.sleep(RESYNCS)
    assert progress_step(tenants, home, SHARED) is None, "team-b's progress leaked"

    tenants.write_progress(SHARED, "r1", namespace=home, step=3)
    tenants.wait("home progress", lambda: progress_step(tenants, home, SHARED) == 3)
    time.sleep(RESYNCS)
    assert progress_step(tenants, TEAM_B, SHARED) == 17


def test_a_recreated_job_ignores_the_old_objects_progress(tenants: Harness) -> None:
    """Delete a LoRAJob whose trainer claimed its folder, recreate it under the same name: the
    new object's r1 is the same folder, but its marker names the old uid, so the old run's
    progress never shows as the new one's (and its trainer would exit 3: see
    tests/trainer/test_output_owner.py)."""
    name = "recreated"
    tenants.created.append(name)
    first = tenants.apply(base_job(name))
    old_uri = tenants.run_uri(name, "r1")
    run = S3Location.parse(old_uri)
    old_owner = JobOwner(namespace=tenants.namespace, name=name, uid=first["metadata"]["uid"])
    store = tenants.s3.store()
    assert store.create_json_if_absent(owner_marker(run), old_owner.model_dump())
    start_pods(tenants, tenants.namespace, name)
    tenants.write_progress(name, "r1", step=9)
    tenants.wait(
        "the old object's progress", lambda: progress_step(tenants, tenants.namespace, name)
    )

    tenants.client.delete(LORAJOBS, tenants.namespace, name)
    tenants.wait(
        "the old object and its Job gone",
        lambda: (
            tenants.client.get(LORAJOBS, tenants.namespace, name) is None
            and tenants.client.get("batch/v1/jobs", tenants.namespace, f"{name}-r1") is None
        ),
    )
    second = tenants.apply(base_job(name))
    assert second["metadata"]["uid"] != old_owner.uid
    assert tenants.run_uri(name, "r1") == old_uri  # same name, same folder: the marker decides
    start_pods(tenants, tenants.namespace, name)
    time.sleep(RESYNCS)
    assert progress_step(tenants, tenants.namespace, name) is None
    assert "belongs to LoRAJob" in tenants.log_tail()
