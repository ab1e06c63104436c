"""The emulator answers like a real API server where tests, the demo and users depend on it: the
LoRAJob CRD's schema and CEL rules refuse bad objects (with the real `kubectl`), lists are ones
kubectl prints, PUT replaces, status is its own subresource, and deleting an owner deletes what it
owns."""

from __future__ import annotations

import copy
import json
import subprocess
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
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    client.create("batch/v1/jobs", NS, job)
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
