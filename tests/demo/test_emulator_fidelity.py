"""The emulator answers like a real API server where tests, the demo and users depend on it: the
LoRAJob CRD's schema and CEL rules refuse bad objects (with the real `kubectl`), lists are ones
kubectl prints, PUT replaces, status is its own subresource, and deleting an owner deletes what it
owns."""

from __future__ import annotations

import base64
import copy
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from lora_devkit.emulator import ApiError, EmulatedCluster
from lora_operator.api.crd import CRD_NAME, build_crd

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
NS = "default"


def lorajob(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    """A valid LoRAJob; `spec` keyword arguments replace whole top-level spec sections."""
    body: dict[str, Any] = {
        "apiVersion": "finetune.lora-operator.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"name": "meta-llama/Llama-3.2-1B", "source": "pvc://models/llama-1b"},
            "lora": {"r": 8, "alpha": 16},
            "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
            "training": {"maxSteps": 40},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": "lora-test", "prefix": "runs"},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def kubectl(
    cluster: EmulatedCluster, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    if not KUBECTL.exists():
        pytest.fail("kubectl not installed: run `make setup` (it puts kubectl in .tools/bin)")
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def raw(cluster: EmulatedCluster, method: str, path: str, body: Any) -> tuple[int, Any]:
    """(HTTP status, parsed body) without RestClient's error truncation."""
    request = urllib.request.Request(
        cluster.url + path, data=json.dumps(body).encode(), method=method
    )
    kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
    request.add_header("Content-Type", kind)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# The smallest Job a real API server's schema accepts (its template needs containers).
JOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "j"},
    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
}

INVALID = [
    pytest.param({"lora": {"r": 0, "alpha": 16}}, "spec.lora.r", "greater than", id="r=0"),
    pytest.param(
        {"lora": {"r": 8, "targetModules": ["all-linear", "q_proj"]}},
        "spec.lora",
        "'all-linear' must be the only entry of targetModules",
        id="cel-all-linear",
    ),
    pytest.param(
        {"quantization": {"mode": "fp8"}},
        "spec.quantization.mode",
        'Unsupported value: "fp8"',
        id="enum",
    ),
    pytest.param(
        {"quantization": {"mode": "nf4"}},  # on gpuType cpu: a spec-level CEL rule
        "spec.quantization.mode",
        "needs a CUDA GPU",
        id="cel-fieldPath",
    ),
    pytest.param(
        {"lora": {"r": 8, "rank": 8}}, "spec.lora.rank", "unknown field", id="unknown-field"
    ),
]


@pytest.mark.parametrize("spec, field, words", INVALID)
def test_kubectl_apply_of_an_invalid_lorajob_is_refused_naming_the_field(
    cluster: EmulatedCluster, spec: dict[str, Any], field: str, words: str
) -> None:
    """`kubectl apply` exits non-zero, prints the field and why, and nothing is stored. Unknown
    fields: kubectl asks for `fieldValidation=Strict`, so the server refuses rather than prunes."""
    result = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(lorajob("bad", **spec)))
    assert result.returncode != 0, result.stdout
    assert field in result.stderr and words in result.stderr, result.stderr
    assert cluster.client().get(LORAJOBS, NS, "bad") is None


def test_422_is_a_kubernetes_status_naming_the_field(cluster: EmulatedCluster) -> None:
    status, body = raw(
        cluster,
        "POST",
        f"/apis/finetune.lora-operator.io/v1alpha1/namespaces/{NS}/lorajobs",
        lorajob("bad-r", lora={"r": 0}),
    )
    assert status == 422
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["reason"] == "Invalid" and body["code"] == 422
    assert body["message"] == (
        'LoRAJob.finetune.lora-operator.io "bad-r" is invalid: spec.lora.r: Invalid value: 0: '
        "spec.lora.r in body should be greater than or equal to 1"
    )
    assert body["details"]["kind"] == "LoRAJob" and body["details"]["name"] == "bad-r"
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.lora.r"]
    assert body["details"]["causes"][0]["reason"] == "FieldValueInvalid"


def test_a_valid_lorajob_is_stored_pruned_and_defaulted(cluster: EmulatedCluster) -> None:
    """A client that does not ask for strict validation gets unknown fields pruned (not
    stored), schema defaults filled and status dropped on create, as from a real API server."""
    client = cluster.client()
    body = lorajob("good")
    body["spec"]["lora"]["rank"] = 4
    body["status"] = {"phase": "Succeeded"}
    client.create(LORAJOBS, NS, body)
    stored = client.get(LORAJOBS, NS, "good")
    assert stored is not None
    assert "rank" not in stored["spec"]["lora"]
    assert stored["spec"]["lora"]["dropout"] == 0.05  # a schema default
    assert "status" not in stored
    assert stored["metadata"]["generation"] == 1


def test_kubectl_apply_of_a_valid_lorajob_is_stored(cluster: EmulatedCluster) -> None:
    result = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(lorajob("applied")))
    assert result.returncode == 0, result.stderr
    assert "lorajob.finetune.lora-operator.io/applied created" in result.stdout
    assert cluster.client().get(LORAJOBS, NS, "applied") is not None


def test_a_patch_that_makes_it_invalid_is_refused_and_changes_nothing(
    cluster: EmulatedCluster,
) -> None:
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("patched"))
    before = client.get(LORAJOBS, NS, "patched")
    with pytest.raises(ApiError) as exc:
        client.patch(LORAJOBS, NS, "patched", {"spec": {"lora": {"r": 0}}}, status=False)
    assert exc.value.status == 422 and "spec.lora.r" in str(exc.value)
    cel = {"spec": {"lora": {"targetModules": ["all-linear", "q_proj"]}}}
    with pytest.raises(ApiError) as exc:
        client.patch(LORAJOBS, NS, "patched", cel, status=False)
    assert exc.value.status == 422 and "all-linear" in str(exc.value)
    result = kubectl(
        cluster, "patch", "lorajob", "patched", "--type", "merge", "-p", json.dumps(cel)
    )
    assert result.returncode != 0 and "spec.lora" in result.stderr, result.stderr
    assert client.get(LORAJOBS, NS, "patched") == before
    client.patch(LORAJOBS, NS, "patched", {"spec": {"lora": {"r": 32}}}, status=False)
    after = client.get(LORAJOBS, NS, "patched")
    assert after is not None and after["spec"]["lora"]["r"] == 32
    assert after["metadata"]["generation"] == 2


def test_status_is_a_subresource(cluster: EmulatedCluster) -> None:
    """Writes to /status change only status and are checked against the status schema (not
    the spec's rules); status in a write to the main resource is ignored."""
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("statused"))
    client.patch(
        LORAJOBS,
        NS,
        "statused",
        {"status": {"phase": "Running"}, "spec": {"lora": {"r": 64}}},
        status=True,
    )
    stored = client.get(LORAJOBS, NS, "statused")
    assert stored is not None
    assert stored["status"]["phase"] == "Running" and stored["spec"]["lora"]["r"] == 8
    assert stored["metadata"]["generation"] == 1
    with pytest.raises(ApiError) as exc:
        client.patch(LORAJOBS, NS, "statused", {"status": {"phase": "Nope"}}, status=True)
    assert exc.value.status == 422 and "status.phase" in str(exc.value)
    client.patch(LORAJOBS, NS, "statused", {"status": {"phase": "Failed"}}, status=False)
    assert client.get(LORAJOBS, NS, "statused")["status"]["phase"] == "Running"  # type: ignore[index]


def test_put_replaces_and_checks_the_resource_version(cluster: EmulatedCluster) -> None:
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("replaced", training={"maxSteps": 40, "seed": 7}))
    current = client.get(LORAJOBS, NS, "replaced")
    assert current is not None
    path = f"/apis/finetune.lora-operator.io/v1alpha1/namespaces/{NS}/lorajobs/replaced"
    replacement = copy.deepcopy(current)
    replacement["spec"]["training"] = {"maxSteps": 80}
    status, body = raw(cluster, "PUT", path, replacement)
    assert status == 200, body
    stored = client.get(LORAJOBS, NS, "replaced")
    assert stored is not None
    assert stored["spec"]["training"]["maxSteps"] == 80
    assert stored["spec"]["training"]["seed"] == 42  # replaced, then defaulted; not merged
    assert stored["metadata"]["uid"] == current["metadata"]["uid"]
    status, body = raw(cluster, "PUT", path, replacement)  # its resourceVersion is stale now
    assert status == 409, body
    replacement = copy.deepcopy(stored)
    replacement["spec"]["lora"]["r"] = 0
    status, body = raw(cluster, "PUT", path, replacement)
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.lora.r"


def test_kubectl_prints_lists_as_json_yaml_and_names(cluster: EmulatedCluster) -> None:
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("one"))
    client.create(LORAJOBS, "other", lorajob("two", namespace="other"))
    client.create("batch/v1/jobs", NS, JOB)
    everywhere = json.loads(kubectl(cluster, "get", "lj", "-A", "-o", "json").stdout)
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]} == {
        (NS, "one"),
        ("other", "two"),
    }
    assert {i["kind"] for i in everywhere["items"]} == {"LoRAJob"}
    as_yaml = yaml.safe_load(kubectl(cluster, "get", "lorajobs", "-A", "-o", "yaml").stdout)
    assert len(as_yaml["items"]) == 2
    names = kubectl(cluster, "get", "lj", "-A", "-o", "name").stdout.split()
    assert sorted(names) == [
        "lorajob.finetune.lora-operator.io/one",
        "lorajob.finetune.lora-operator.io/two",
    ]
    here = json.loads(kubectl(cluster, "get", "lj", "-n", "other", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in here["items"]] == ["two"]
    assert kubectl(cluster, "get", "lj", "-n", NS, "-o", "name").stdout.split() == [
        "lorajob.finetune.lora-operator.io/one"
    ]
    jobs = json.loads(kubectl(cluster, "get", "jobs", "-o", "json").stdout)
    assert [(i["kind"], i["metadata"]["name"]) for i in jobs["items"]] == [("Job", "j")]
    table = kubectl(cluster, "get", "lj", "-A")
    assert table.returncode == 0 and "NAMESPACE" in table.stdout, table.stderr
    listed = client.request("GET", "/apis/finetune.lora-operator.io/v1alpha1/lorajobs")
    assert listed["kind"] == "LoRAJobList" and listed["apiVersion"].endswith("/v1alpha1")
    assert listed["metadata"]["resourceVersion"]


def _owned(kind: str, api_version: str, name: str, owner: dict[str, Any]) -> dict[str, Any]:
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [ref]},
    }


def test_deleting_an_owner_collects_what_it_owns_recursively(cluster: EmulatedCluster) -> None:
    """No test calls a garbage-collection helper: deleting a LoRAJob removes its Job, the Job's
    Pod, its Service/ConfigMap/InferenceService; another LoRAJob's children stay, and so does an
    object that still has a live owner."""
    client = cluster.client()
    doomed = client.create(LORAJOBS, NS, lorajob("doomed"))
    kept = client.create(LORAJOBS, NS, lorajob("kept"))
    job = client.create("batch/v1/jobs", NS, _owned("Job", "batch/v1", "doomed-r1", doomed))
    client.create("v1/pods", NS, _owned("Pod", "v1", "doomed-r1-0", job))
    client.create("v1/services", NS, _owned("Service", "v1", "doomed-svc", doomed))
    client.create("v1/configmaps", NS, _owned("ConfigMap", "v1", "doomed-cm", doomed))
    isvc = _owned("InferenceService", "serving.kserve.io/v1beta1", "doomed", doomed)
    client.create("serving.kserve.io/v1beta1/inferenceservices", NS, isvc)
    client.create("batch/v1/jobs", NS, _owned("Job", "batch/v1", "kept-r1", kept))
    shared = _owned("ConfigMap", "v1", "shared", doomed)
    shared["metadata"]["ownerReferences"].append(
        {**shared["metadata"]["ownerReferences"][0], "uid": kept["metadata"]["uid"]}
    )
    client.create("v1/configmaps", NS, shared)

    client.delete(LORAJOBS, NS, "doomed")

    gone = [
        ("batch/v1/jobs", "doomed-r1"),
        ("v1/pods", "doomed-r1-0"),
        ("v1/services", "doomed-svc"),
        ("v1/configmaps", "doomed-cm"),
        ("serving.kserve.io/v1beta1/inferenceservices", "doomed"),
    ]
    assert [(r, n) for r, n in gone if client.get(r, NS, n) is not None] == []
    assert client.get("batch/v1/jobs", NS, "kept-r1") is not None
    assert client.get("v1/configmaps", NS, "shared") is not None
    client.delete(LORAJOBS, NS, "kept")
    assert client.get("batch/v1/jobs", NS, "kept-r1") is None
    assert client.get("v1/configmaps", NS, "shared") is None


def test_an_object_written_after_its_owners_deletion_is_collected(
    cluster: EmulatedCluster,
) -> None:
    """A controller that read its LoRAJob just before the delete may re-create a child owned by
    the gone uid; the garbage collector removes it, as a real one does. An
    object with one live owner, or with a same-named owner of another uid alive, is kept."""
    client = cluster.client()
    gone = client.create(LORAJOBS, NS, lorajob("gone"))
    live = client.create(LORAJOBS, NS, lorajob("live"))
    client.delete(LORAJOBS, NS, "gone")
    late = client.create("v1/configmaps", NS, _owned("ConfigMap", "v1", "late", gone))
    assert client.get("v1/configmaps", NS, "late") is None
    orphan_job = client.create("batch/v1/jobs", NS, _owned("Job", "batch/v1", "late-r1", live))
    client.create("v1/pods", NS, _owned("Pod", "v1", "late-r1-0", orphan_job))
    both = _owned("ConfigMap", "v1", "both", gone)
    both["metadata"]["ownerReferences"].append(
        _owned("X", "v1", "x", live)["metadata"]["ownerReferences"][0]
    )
    client.create("v1/configmaps", NS, both)
    assert client.get("v1/configmaps", NS, "both") is not None
    assert client.get("v1/pods", NS, "late-r1-0") is not None
    recreated = client.create(LORAJOBS, NS, lorajob("gone"))  # same name, another uid
    assert recreated["metadata"]["uid"] != gone["metadata"]["uid"]
    client.create("v1/configmaps", NS, _owned("ConfigMap", "v1", "late", gone))
    assert client.get("v1/configmaps", NS, "late") is None
    client.create("v1/configmaps", NS, _owned("ConfigMap", "v1", "late", recreated))
    assert client.get("v1/configmaps", NS, "late") is not None
    assert late["metadata"]["uid"] != gone["metadata"]["uid"]


def test_an_object_stored_under_a_looser_crd_can_still_be_annotated(
    cluster: EmulatedCluster,
) -> None:
    """Validation ratcheting: an update is refused for new errors, not for ones the stored
    object already had (written under an older CRD), so operators can still mark it failed."""
    client = cluster.client()
    crds = "apiextensions.k8s.io/v1/customresourcedefinitions"
    shipped = build_crd()["spec"]["versions"]
    loose = copy.deepcopy(shipped)
    loose[0]["schema"] = {
        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    }
    client.patch(crds, None, CRD_NAME, {"spec": {"versions": loose}}, status=False)
    client.create(LORAJOBS, NS, lorajob("legacy", lora={"r": 0}))
    client.patch(crds, None, CRD_NAME, {"spec": {"versions": shipped}}, status=False)
    note = {"metadata": {"annotations": {"seen": "yes"}}}
    client.patch(LORAJOBS, NS, "legacy", note, status=False)
    client.patch(LORAJOBS, NS, "legacy", {"status": {"phase": "Failed"}}, status=True)
    with pytest.raises(ApiError) as exc:
        client.patch(LORAJOBS, NS, "legacy", {"spec": {"lora": {"alpha": 0}}}, status=False)
    assert exc.value.status == 422 and "spec.lora.alpha" in str(exc.value)
    stored = client.get(LORAJOBS, NS, "legacy")
    assert stored is not None and stored["status"]["phase"] == "Failed"
    assert stored["metadata"]["annotations"] == {"seen": "yes"}


# ----------------------------------------------------- what pipelines and people type (issue 20)


def _condition(type_: str) -> dict[str, Any]:
    return {
        "status": {
            "conditions": [
                {
                    "type": type_,
                    "status": "True",
                    "reason": "Testing",
                    "message": "set by the test",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        }
    }


class _Lines:
    """A running kubectl's stdout, line by line, read on a thread (a watch never ends)."""

    def __init__(self, cluster: EmulatedCluster, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 15.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"no line from kubectl in {timeout}s; stderr: {stderr}") from None

    def quiet(self, seconds: float) -> list[str]:
        """What it printed in `seconds` (expected: nothing)."""
        time.sleep(seconds)
        printed = []
        while not self.lines.empty():
            printed.append(self.lines.get())
        return printed

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def test_kubectl_get_watch_prints_the_row_then_only_its_later_change(
    cluster: EmulatedCluster,
) -> None:
    """`kubectl get lj a -w`: the table row once (the watch starts where the list ended, so no
    repeat), then the row again when a's phase changes; b's change, in the same namespace, is
    not a's (field selector `metadata.name=a` on the watch)."""
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("a"))
    client.create(LORAJOBS, NS, lorajob("b"))
    watch = _Lines(cluster, "get", "lj", "a", "-w")
    try:
        header, row = watch.next(), watch.next()
        assert header.split()[:2] == ["NAME", "PHASE"]
        assert row.split()[:2] == ["a", "<none>"]
        assert watch.quiet(1.0) == []  # no second copy of the listed row
        client.patch(LORAJOBS, NS, "b", {"status": {"phase": "Failed"}}, status=True)
        client.patch(LORAJOBS, NS, "a", {"status": {"phase": "Running"}}, status=True)
        assert watch.next().split()[:2] == ["a", "Running"]
        assert watch.quiet(1.0) == []  # b's Failed never shows
    finally:
        watch.stop()


def test_kubectl_get_watch_of_all_jobs_sees_a_new_one(cluster: EmulatedCluster) -> None:
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("first"))
    client.create(LORAJOBS, "other", lorajob("elsewhere", namespace="other"))
    watch = _Lines(cluster, "get", "lj", "-w")
    try:
        assert watch.next().split()[0] == "NAME"
        assert watch.next().split()[0] == "first"
        client.create(LORAJOBS, "other", lorajob("elsewhere-2", namespace="other"))
        client.create(LORAJOBS, NS, lorajob("second"))
        assert watch.next().split()[0] == "second"  # not the other namespace's
    finally:
        watch.stop()


WAIT_DONE = ("--for=condition=Done", "--timeout=30s")


def test_kubectl_wait_answers_for_its_own_job_not_anothers(cluster: EmulatedCluster) -> None:
    """b has condition Done first: `kubectl wait --for=condition=Done lj/a` still times out; it
    returns once a gets Done, and not before."""
    client = cluster.client()
    client.create(LORAJOBS, NS, lorajob("a"))
    client.create(LORAJOBS, NS, lorajob("b"))
    client.patch(LORAJOBS, NS, "b", _condition("Done"), status=True)
    early = kubectl(cluster, "wait", "--for=condition=Done", "lj/a", "--timeout=2s")
    assert early.returncode == 1, early.stdout
    assert "timed out waiting for the condition on lorajobs/a" in early.stderr
    waiting = subprocess.Popen(
        [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), "wait", "lj/a", *WAIT_DONE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert waiting.poll() is None  # still waiting: b's condition did not answer it
    client.patch(LORAJOBS, NS, "a", _condition("Done"), status=True)
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 0, err
    assert out.strip() == "lorajob.finetune.lora-operator.io/a condition met"


def _event(name: str, about: dict[str, Any], message: str) -> dict[str, Any]:
    meta = about["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": NS},
        "involvedObject": {
            "apiVersion": about["apiVersion"],
            "kind": about["kind"],
            "name": meta["name"],
            "namespace": NS,
            "uid": meta["uid"],
        },
        "reason": "Testing",
        "message": message,
        "type": "Normal",
        "source": {"component": "test"},
    }


def test_kubectl_describe_shows_only_the_jobs_own_events(cluster: EmulatedCluster) -> None:
    """Events about b, about a Pod also named a, and about an earlier LoRAJob a (same name,
    another uid) are not a's."""
    client = cluster.client()
    earlier = client.create(LORAJOBS, NS, lorajob("a"))
    client.create("v1/events", NS, _event("a-earlier", earlier, "about the earlier a"))
    client.delete(LORAJOBS, NS, "a")
    a = client.create(LORAJOBS, NS, lorajob("a"))
    b = client.create(LORAJOBS, NS, lorajob("b"))
    pod = client.create(
        "v1/pods", NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}
    )
    client.create("v1/events", NS, _event("a-1", a, "about a"))
    client.create("v1/events", NS, _event("b-1", b, "about b"))
    client.create("v1/events", NS, _event("pod-a", pod, "about pod a"))
    result = kubectl(cluster, "describe", "lj", "a")
    assert result.returncode == 0, result.stderr
    events = result.stdout.split("\nEvents:", 1)[1]
    assert [line.split()[-2:] for line in events.strip().splitlines()[2:]] == [["about", "a"]]


def test_field_selectors_on_lists_and_their_refusal(cluster: EmulatedCluster) -> None:
    client = cluster.client()
    for name in ("a", "b", "c"):
        client.create(LORAJOBS, NS, lorajob(name))
    client.create(LORAJOBS, "other", lorajob("a", namespace="other"))
    path = f"/apis/finetune.lora-operator.io/v1alpha1/namespaces/{NS}/lorajobs"

    def names(selector: str, where: str = path) -> list[tuple[str, str]]:
        listed = client.request("GET", where, query=f"fieldSelector={selector}")
        return sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"])

    assert names("metadata.name=a") == [(NS, "a")]
    assert names("metadata.name==b") == [(NS, "b")]
    assert names("metadata.name!=a") == [(NS, "b"), (NS, "c")]
    assert names("metadata.name!=a,metadata.name!=c") == [(NS, "b")]
    everywhere = "/apis/finetune.lora-operator.io/v1alpha1/lorajobs"
    assert names("metadata.name=a", everywhere) == [(NS, "a"), ("other", "a")]
    assert names("metadata.namespace=other", everywhere) == [("other", "a")]
    with pytest.raises(ApiError) as exc:
        names("spec.lora.r=8")
    assert exc.value.status == 400 and 'field label not supported: "spec.lora.r"' in str(exc.value)


def _watch_events(cluster: EmulatedCluster, path: str, query: str) -> list[dict[str, Any]]:
    """A raw watch's events until its `timeoutSeconds` ends it, with its Content-Type checked."""
    with urllib.request.urlopen(f"{cluster.url}{path}?watch=true&{query}", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def test_watch_selects_by_label_and_field_and_resumes_from_a_list(
    cluster: EmulatedCluster,
) -> None:
    client = cluster.client()
    labelled = lorajob("labelled")
    labelled["metadata"]["labels"] = {"team": "x"}
    client.create(LORAJOBS, NS, labelled)
    client.create(LORAJOBS, NS, lorajob("plain"))
    path = f"/apis/finetune.lora-operator.io/v1alpha1/namespaces/{NS}/lorajobs"
    by_label = _watch_events(cluster, path, "labelSelector=team%3Dx&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in by_label] == [
        ("ADDED", "labelled")
    ]
    assert by_label[0]["object"]["kind"] == "LoRAJob"
    by_field = _watch_events(
        cluster, path, "fieldSelector=metadata.name%21%3Dlabelled&timeoutSeconds=1"
    )
    assert [e["object"]["metadata"]["name"] for e in by_field] == ["plain"]
    version = client.request("GET", path)["metadata"]["resourceVersion"]
    client.patch(LORAJOBS, NS, "plain", {"status": {"phase": "Running"}}, status=True)
    client.delete(LORAJOBS, NS, "labelled")
    resumed = _watch_events(cluster, path, f"resourceVersion={version}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [
        ("MODIFIED", "plain"),
        ("DELETED", "labelled"),
    ]
    initial = _watch_events(
        cluster, path, "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
    )
    assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
    assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_kubectl_create_secret_configmap_and_serviceaccount(cluster: EmulatedCluster) -> None:
    """kubectl's typed clients send protobuf: the emulator reads it as a real server does."""
    client = cluster.client()
    for args in (
        ("create", "secret", "generic", "s", "--from-literal=k=v"),
        ("create", "configmap", "c", "--from-literal=k=v", "--from-literal=other=w"),
        ("create", "serviceaccount", "robot"),
    ):
        result = kubectl(cluster, *args)
        assert result.returncode == 0, result.stderr
    secret = client.get("v1/secrets", NS, "s")
    assert secret is not None and secret["data"] == {"k": "dg=="}  # base64("v")
    config_map = client.get("v1/configmaps", NS, "c")
    assert config_map is not None and config_map["data"] == {"k": "v", "other": "w"}
    account = client.get("v1/serviceaccounts", NS, "robot")
    assert account is not None and account["metadata"]["namespace"] == NS
    listed = kubectl(cluster, "get", "secret", "s", "-o", "jsonpath={.data.k}")
    assert listed.stdout == "dg=="


def test_kubectl_knows_the_built_in_short_names(cluster: EmulatedCluster) -> None:
    client = cluster.client()
    client.create("v1/configmaps", NS, {"metadata": {"name": "settings"}, "data": {"a": "b"}})
    client.create("v1/serviceaccounts", NS, {"metadata": {"name": "robot"}})
    assert kubectl(cluster, "get", "cm", "-o", "name").stdout.split() == ["configmap/settings"]
    assert kubectl(cluster, "get", "sa", "-o", "name").stdout.split() == ["serviceaccount/robot"]
    assert "namespace/default" in kubectl(cluster, "get", "ns", "-o", "name").stdout.split()
    for short in ("svc", "po", "ev", "crd", "isvc"):
        result = kubectl(cluster, "get", short)
        assert result.returncode == 0, (short, result.stderr)


CONFIG_MAP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "cm"},
    "data": {},
}


def test_kubectl_apply_of_built_in_kinds_is_validated_by_the_server(
    cluster: EmulatedCluster,
) -> None:
    """No `--validate=false` needed: kubectl finds the kinds in the OpenAPI v3 index, sends
    `fieldValidation=Strict` and the server refuses an unknown field (nothing stored); with
    `--validate=warn` it is stored without the field and kubectl prints the server's warning."""
    client = cluster.client()
    good = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(CONFIG_MAP))
    assert good.returncode == 0 and good.stdout.strip() == "configmap/cm created", good.stderr
    bogus = {**CONFIG_MAP, "metadata": {"name": "bogus"}, "bogus": 1}
    refused = kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(bogus))
    assert refused.returncode == 1
    assert (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: '
        'unknown field "bogus"'
    ) in refused.stderr
    assert client.get("v1/configmaps", NS, "bogus") is None
    warned = kubectl(cluster, "apply", "--validate=warn", "-f", "-", stdin=yaml.safe_dump(bogus))
    assert warned.returncode == 0, warned.stderr
    assert 'Warning: unknown field "bogus"' in warned.stderr
    stored = client.get("v1/configmaps", NS, "bogus")
    assert stored is not None and "bogus" not in stored
    job = lorajob("warned")
    job["spec"]["lora"]["rank"] = 4
    lora = kubectl(cluster, "apply", "--validate=warn", "-f", "-", stdin=yaml.safe_dump(job))
    assert lora.returncode == 0 and 'Warning: unknown field "spec.lora.rank"' in lora.stderr


def test_an_invalid_built_in_object_is_refused_as_a_real_server_refuses_it(
    cluster: EmulatedCluster,
) -> None:
    """The kinds' published schemas: a Job without containers is 422 Invalid naming the field;
    a mistyped Service port is 400 (undecodable); neither is stored, and a refused patch
    leaves the object and its resourceVersion as they were."""
    client = cluster.client()
    jobs = f"/apis/batch/v1/namespaces/{NS}/jobs"
    no_containers = copy.deepcopy(JOB)
    no_containers["spec"]["template"]["spec"] = {"restartPolicy": "Never"}
    status, body = raw(cluster, "POST", jobs, no_containers)
    assert status == 422, body
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Invalid", 422)
    assert body["message"] == (
        'Job.batch "j" is invalid: spec.template.spec.containers: Required value'
    )
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value",
            "field": "spec.template.spec.containers",
        }
    ]
    assert client.get("batch/v1/jobs", NS, "j") is None
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {"ports": [{"port": "eighty"}]},
    }
    status, body = raw(cluster, "POST", f"/api/v1/namespaces/{NS}/services", service)
    assert status == 400 and body["reason"] == "BadRequest", body
    assert body["message"].startswith(
        'Service in version "v1" cannot be handled as a Service: spec.ports[0].port:'
    )
    assert client.get("v1/services", NS, "svc") is None
    client.create("v1/configmaps", NS, CONFIG_MAP)
    before = client.get("v1/configmaps", NS, "cm")
    status, body = raw(cluster, "PATCH", f"/api/v1/namespaces/{NS}/configmaps/cm", {"data": 7})
    assert status == 400 and "data:" in body["message"], body
    assert client.get("v1/configmaps", NS, "cm") == before
    result = kubectl(cluster, "create", "-f", "-", stdin=yaml.safe_dump(no_containers))
    assert result.returncode == 1
    assert 'The Job "j" is invalid: spec.template.spec.containers: Required value' in result.stderr


def test_kubectl_creates_applies_labels_and_deletes_namespaces(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    """A pipeline's first object is often its Namespace: created (protobuf) or applied (JSON),
    kept with its labels, refused when it exists, gone once deleted; a namespace that objects
    live in exists without being created, as before."""
    client = cluster.client()
    client.create(LORAJOBS, "implied", lorajob("a", namespace="implied"))
    created = kubectl(cluster, "create", "namespace", "team-a")
    assert created.stdout.strip() == "namespace/team-a created", created.stderr
    again = kubectl(cluster, "create", "namespace", "team-a")
    assert again.returncode == 1
    assert 'namespaces "team-a" already exists' in again.stderr
    manifest = tmp_path / "ns.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "team-b", "labels": {"team": "b"}},
            }
        )
    )
    assert (
        kubectl(cluster, "apply", "-f", str(manifest)).stdout.strip() == "namespace/team-b created"
    )
    assert (
        kubectl(cluster, "apply", "-f", str(manifest)).stdout.strip()
        == "namespace/team-b unchanged"
    )
    assert kubectl(cluster, "label", "ns", "team-b", "tier=gold").returncode == 0
    labels = json.loads(kubectl(cluster, "get", "ns", "team-b", "-o", "json").stdout)["metadata"][
        "labels"
    ]
    assert labels == {"kubernetes.io/metadata.name": "team-b", "team": "b", "tier": "gold"}
    names = kubectl(cluster, "get", "ns", "-o", "name").stdout.split()
    assert names == [
        "namespace/default",
        "namespace/implied",
        "namespace/team-a",
        "namespace/team-b",
    ]
    assert kubectl(cluster, "delete", "ns", "team-a").returncode == 0
    assert "namespace/team-a" not in kubectl(cluster, "get", "ns", "-o", "name").stdout.split()
    missing = kubectl(cluster, "get", "ns", "team-a")
    assert missing.returncode == 1 and 'namespaces "team-a" not found' in missing.stderr


def test_protobuf_bodies_keep_binary_data_and_refuse_unknown_kinds_by_name(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    created = kubectl(cluster, "create", "secret", "generic", "bin", f"--from-file=b={blob}")
    assert created.returncode == 0, created.stderr
    secret = cluster.client().get("v1/secrets", NS, "bin")
    assert secret is not None and base64.b64decode(secret["data"]["b"]) == bytes(range(256))
    job = kubectl(cluster, "create", "job", "j", "--image=busybox")
    assert job.returncode == 1
    assert "not batch/v1 Job: send JSON" in job.stderr, job.stderr
    assert cluster.client().get("batch/v1/jobs", NS, "j") is None
