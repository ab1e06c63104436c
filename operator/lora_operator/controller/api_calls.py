"""Every Kubernetes API call the operator's own code makes, as RBAC names them; the chart's RBAC
grants exactly these plus kopf's. tests/operator/test_reconcile_units.py checks the list against a
recording client driven through every reconcile path; tests/chart/test_rbac.py against the chart."""

from __future__ import annotations

Call = tuple[str, str, str]  # (API group, resource[/subresource], verb), as RBAC names them

_LORA = "finetune.lora-operator.io"
_KSERVE = "serving.kserve.io"
# kopf's own framework calls are not listed here (tests/chart/test_rbac.py lists them).
API_CALLS: frozenset[Call] = frozenset(
    {
        # the LoRAJob: read it, learn all jobs' quota usage at start, write status, TTL delete
        (_LORA, "lorajobs", "get"),
        (_LORA, "lorajobs", "list"),
        (_LORA, "lorajobs", "delete"),
        (_LORA, "lorajobs/status", "patch"),
        # a run's objects (create is idempotent: a 409 reads the existing object), read at
        # every resync and their declared fields patched back when edited (children.py)
        ("", "configmaps", "create"),
        ("", "configmaps", "get"),
        ("", "configmaps", "patch"),
        # the shared servers' registries, by label: swept when a LoRAJob on one is deleted
        ("", "configmaps", "list"),
        ("", "services", "create"),
        ("", "services", "get"),
        ("", "services", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "patch"),
        ("batch", "jobs", "delete"),
        # the trainer's termination message of a failed pod
        ("", "pods", "list"),
        # Events on every transition (posted by the operator, not kopf: most come from resync)
        ("", "events", "create"),
        # the job's S3 credentials Secret, read (never written): the policy's opt-in label and
        # the keys for progress.json, one GET per resync. Serving lists it by name, no copy.
        ("", "secrets", "get"),
        # the per-LoRAJob trainer account <job>-trainer (create/get) and the serving one
        # <job>-serving, whose `secrets` names the job's Secret (patch/delete)
        ("", "serviceaccounts", "create"),
        ("", "serviceaccounts", "get"),
        ("", "serviceaccounts", "patch"),
        ("", "serviceaccounts", "delete"),
        (_KSERVE, "inferenceservices", "create"),
        (_KSERVE, "inferenceservices", "get"),
        (_KSERVE, "inferenceservices", "patch"),
        (_KSERVE, "inferenceservices", "delete"),
        # a shared server's ServingRuntime (vLLM + adapter syncer), controlled by its registry
        (_KSERVE, "servingruntimes", "create"),
        (_KSERVE, "servingruntimes", "get"),
        (_KSERVE, "servingruntimes", "patch"),
        (_KSERVE, "servingruntimes", "delete"),
        # a shared server where LLMInferenceService is served (serving_api.py; learning that
        # is API discovery, a non-resource URL every authenticated client may read)
        (_KSERVE, "llminferenceservices", "create"),
        (_KSERVE, "llminferenceservices", "get"),
        (_KSERVE, "llminferenceservices", "patch"),
        (_KSERVE, "llminferenceservices", "delete"),
    }
)
_VERBS = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def api_call(method: str, path: str) -> Call:
    """The RBAC (group, resource, verb) of one REST request, e.g. ('batch', 'jobs', 'create')."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[0] == "api":  # /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/<group>/<version>/...
        group, rest = parts[1], parts[3:]
    if rest and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0]
    named = len(rest) > 1
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    verb = ("get" if named else "list") if method == "GET" else _VERBS[method]
    return group, resource, verb
