"""The local executor runs what a Job says, as a cluster would: env, volumes, retries, policies."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_devkit.emulator import EmulatedCluster, RestClient
from lora_devkit.executor import LocalExecutor, format_indexes, wait_for

NS = "team-a"
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """An Indexed Job shaped like the operator's: env from a Secret and the downward API,
    a ConfigMap at /etc/lorajob, a PVC at /mnt/pvc/<claim>, /dev/shm."""
    container = {
        "name": "trainer",
        "image": "trainer:test",
        "command": ["python", "-c", script],
        "env": [
            {"name": "MASTER_ADDR", "value": f"{name}-0.{name}.{NS}.svc"},
            {"name": "MASTER_PORT", "value": "29500"},
            {"name": "LORAJOB_CONFIG", "value": "/etc/lorajob/config.yaml"},
            {"name": "LORAJOB_PVC_ROOT", "value": "/mnt/pvc"},
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}},
            },
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "s3", "key": "accessKey"}},
            },
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/lorajob"},
            {"name": "data", "mountPath": "/mnt/pvc/data"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimitPerIndex": 1,
            "podFailurePolicy": {
                "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]
            },
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                    ],
                }
            },
            **spec,
        },
    }


@pytest.fixture
def client(cluster: EmulatedCluster) -> RestClient:
    api = cluster.client()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}}
    secret["data"] = {"accessKey": base64.b64encode(b"AKIA-test").decode()}
    api.create("v1/secrets", NS, secret)
    return api


@pytest.fixture
def executor(client: RestClient, tmp_path: Path) -> Iterator[LocalExecutor]:
    with LocalExecutor(client, tmp_path / "exec", poll_seconds=0.1) as running:
        yield running


def submit(client: RestClient, body: dict[str, Any], config: str = "steps: 3\n") -> None:
    name = body["metadata"]["name"]
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config"}}
    client.create("v1/configmaps", NS, {**config_map, "data": {"config.yaml": config}})
    client.create("batch/v1/jobs", NS, body)


def finished(client: RestClient, name: str) -> dict[str, Any] | None:
    status = (client.get("batch/v1/jobs", NS, name) or {}).get("status") or {}
    done = [c for c in status.get("conditions", []) if c["type"] in ("Complete", "Failed")]
    return status if done else None


WRITE_ENV = """
import os, pathlib
root = pathlib.Path(os.environ["LORAJOB_PVC_ROOT"]) / "data"
cfg = pathlib.Path(os.environ["LORAJOB_CONFIG"]).read_text().strip()
keys = ("JOB_COMPLETION_INDEX", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "AWS_ACCESS_KEY_ID")
values = [os.environ[k] for k in keys] + [cfg]
(root / f"out-{os.environ['JOB_COMPLETION_INDEX']}.txt").write_text("|".join(values))
"""


def test_indexed_job_runs_with_env_volumes_and_loopback(
    client: RestClient, executor: LocalExecutor
) -> None:
    submit(client, job("ok", WRITE_ENV))
    status = wait_for(lambda: finished(client, "ok"), 60)
    assert status["conditions"][-1]["type"] == "Complete", status
    assert status["succeeded"] == 2 and status["completedIndexes"] == "0-1"
    for index in (0, 1):
        text = (executor.pvc_root / "data" / f"out-{index}.txt").read_text().split("|")
        assert text[0] == text[1] == str(index)
        assert text[2] == "127.0.0.1" and text[3] != "29500"  # rendezvous on a free local port
        assert text[4:] == ["AKIA-test", "steps: 3"]
    pods = client.list("v1/pods", NS, "job-name=ok")
    assert sorted(p["status"]["phase"] for p in pods) == ["Succeeded", "Succeeded"]


def test_fail_job_exit_code_fails_at_once_with_the_message(
    client: RestClient, executor: LocalExecutor
) -> None:
    script = "import sys; print('bad config: lora.r must be > 0', file=sys.stderr); sys.exit(3)"
    submit(client, job("bad", script, completions=1, parallelism=1))
    status = wait_for(lambda: finished(client, "bad"), 30)
    failed = status["conditions"][-1]
    assert failed["type"] == "Failed" and failed["reason"] == "PodFailurePolicy"
    assert "lora.r must be > 0" in failed["message"]
    (pod,) = client.list("v1/pods", NS, "job-name=bad")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_transient_failure_is_retried_per_index(
    client: RestClient, executor: LocalExecutor, tmp_path: Path
) -> None:
    marker = tmp_path / "attempted"
    script = f"import pathlib,sys; m=pathlib.Path({str(marker)!r}); "
    script += "first = not m.exists(); m.touch(); sys.exit(75 if first else 0)"
    submit(client, job("flaky", script, completions=1, parallelism=1))
    status = wait_for(lambda: finished(client, "flaky"), 30)
    assert status["conditions"][-1]["type"] == "Complete"
    assert status["failed"] == 1 and status["succeeded"] == 1


def test_index_out_of_retries_fails_the_job(client: RestClient, executor: LocalExecutor) -> None:
    submit(client, job("doomed", "import sys; sys.exit(1)", completions=1, parallelism=1))
    status = wait_for(lambda: finished(client, "doomed"), 30)
    assert status["conditions"][-1]["reason"] == "FailedIndexes"
    assert status["failed"] == 2 and status["failedIndexes"] == "0"


def test_suspended_job_waits_then_runs(client: RestClient, executor: LocalExecutor) -> None:
    submit(client, job("held", WRITE_ENV, suspend=True))
    wait_for(
        lambda: any(
            c["type"] == "Suspended"
            for c in (client.get("batch/v1/jobs", NS, "held") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        10,
    )
    assert not client.list("v1/pods", NS, "job-name=held")
    client.patch("batch/v1/jobs", NS, "held", {"spec": {"suspend": False}}, status=False)
    status = wait_for(lambda: finished(client, "held"), 60)
    assert status["conditions"][-1]["type"] == "Complete"


def test_killed_pod_is_replaced_and_deleted_job_stops(
    client: RestClient, executor: LocalExecutor
) -> None:
    submit(client, job("long", "import time; time.sleep(120)", completions=1, parallelism=1))
    wait_for(lambda: executor.kill_pod(NS, "long", 0), 20)
    wait_for(lambda: finished(client, "long") is None and len(executor_pods(client)) == 2, 20)
    status = wait_for(lambda: (client.get("batch/v1/jobs", NS, "long") or {}).get("status"), 5)
    assert status["failed"] == 1
    client.delete("batch/v1/jobs", NS, "long")
    wait_for(lambda: not executor.jobs, 20)


def executor_pods(client: RestClient) -> list[dict[str, Any]]:
    return client.list("v1/pods", NS, "job-name=long")


def test_format_indexes() -> None:
    assert format_indexes({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_indexes(set()) == ""


DETACHED_CHILD = """
import os, pathlib, subprocess, sys, time
root = pathlib.Path(os.environ["LORAJOB_PVC_ROOT"]) / "data"
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
)
(root / "tmpdir.txt").write_text(os.environ["TMPDIR"])
(root / "child.pid").write_text(str(child.pid))
if os.environ.get("MAIN_EXITS") != "1":
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def detached_job(name: str, main_exits: bool) -> dict[str, Any]:
    body = job(name, DETACHED_CHILD, completions=1, parallelism=1)
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "MAIN_EXITS", "value": "1" if main_exits else "0"})
    return body


def test_kill_reaches_processes_in_their_own_session(
    client: RestClient, executor: LocalExecutor
) -> None:
    """torchrun starts its workers in new sessions: killing a pod must still kill them, as a
    container runtime kills everything in the container."""
    submit(client, detached_job("detached", main_exits=False))
    pid_file = executor.pvc_root / "data" / "child.pid"
    wait_for(pid_file.exists, 20)
    child = int(pid_file.read_text())
    assert alive(child)
    assert executor.kill_pod(NS, "detached", 0)
    wait_for(lambda: not alive(child), 10)
    tmpdir = Path((executor.pvc_root / "data" / "tmpdir.txt").read_text())
    assert tmpdir.is_dir() and executor.workdir in tmpdir.parents  # a /tmp of its own


def test_processes_left_by_an_exited_pod_are_killed(
    client: RestClient, executor: LocalExecutor
) -> None:
    submit(client, detached_job("leaves", main_exits=True))
    status = wait_for(lambda: finished(client, "leaves"), 30)
    assert status["conditions"][-1]["type"] == "Complete"
    child = int((executor.pvc_root / "data" / "child.pid").read_text())
    wait_for(lambda: not alive(child), 10)


WRITE_SCRATCH = """
import os, pathlib, tempfile
root = pathlib.Path(os.environ["LORAJOB_PVC_ROOT"]) / "data"
index = os.environ["JOB_COMPLETION_INDEX"]
paths = [os.environ["HOME"], tempfile.gettempdir(), os.environ["XDG_CACHE_HOME"]]
for path in paths:
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(path) / "written").write_text(index)
(root / f"scratch-{index}.txt").write_text("|".join(paths))
"""


def test_scratch_emptydirs_and_the_env_naming_them_map_to_each_pods_own_folders(
    client: RestClient, executor: LocalExecutor
) -> None:
    """As the trainer pods (read-only root): HOME, TMPDIR and caches point into emptyDirs."""
    body = job("scratch", WRITE_SCRATCH)
    spec = body["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container["env"] += [
        {"name": "HOME", "value": "/home/trainer"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/home/trainer/.cache"},
    ]
    container["volumeMounts"] += [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/trainer"},
    ]
    spec["volumes"] += [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    submit(client, body)
    status = wait_for(lambda: finished(client, "scratch"), 60)
    assert status["conditions"][-1]["type"] == "Complete", status
    seen: set[str] = set()
    for index in (0, 1):
        home, tmp, cache = (
            (executor.pvc_root / "data" / f"scratch-{index}.txt").read_text().split("|")
        )
        assert Path(home).name == "home" and Path(tmp).name == "tmp", (home, tmp)
        assert cache == f"{home}/.cache"
        assert not {home, tmp} & seen  # every pod its own
        seen |= {home, tmp}
        assert (Path(tmp) / "written").read_text() == str(index)


def test_no_pod_starts_until_its_service_account_exists(
    client: RestClient, executor: LocalExecutor
) -> None:
    """As the API server's ServiceAccount admission: the operator must create the account
    before (or with) the Job, or nothing runs."""
    body = job("account", WRITE_ENV)
    body["spec"]["template"]["spec"]["serviceAccountName"] = "account-trainer"
    submit(client, body)
    executor.reconcile_once()
    assert not client.list("v1/pods", NS, "job-name=account")
    assert finished(client, "account") is None
    account = {"apiVersion": "v1", "kind": "ServiceAccount"}
    client.create("v1/serviceaccounts", NS, {**account, "metadata": {"name": "account-trainer"}})
    status = wait_for(lambda: finished(client, "account"), 60)
    assert status["conditions"][-1]["type"] == "Complete", status
