"""An emulated Kubernetes API (kmock's `KubernetesEmulator`) on 127.0.0.1 for tests, the demo and
the operator bench, plus a stand-in for the controllers that a real cluster would run.

Why a subclass: the plain emulator stores objects as given. Operators rely on what the API server
adds (uid for owner references, creationTimestamp for queue order, namespace, generation), on 404s
for resources that are not installed (KServe absent), on label selectors and on `kubectl get`
tables. `LoRAJobEmulator` adds exactly those; everything else is kmock's.

Nothing runs Jobs or Pods in the emulator, so `JobDriver` moves Jobs/Pods through their states
over HTTP (the same calls work against a real cluster's API) and `collect_garbage` deletes objects
whose owners are gone, as the garbage collector would.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import attrs
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server
from kmock._internal import enums, k8s, rendering

from ..api.types import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from ..controller.kube import resource_path
from .job_policy import policy_action
from .service import Service

# (group/version/plural, kind, namespaced, extra) — what discovery lists. kopf needs namespaces,
# events and CRDs listed or it waits forever without a word.
CORE_RESOURCES: list[tuple[str, str, bool]] = [
    ("v1/namespaces", "Namespace", False),
    ("v1/events", "Event", True),
    ("v1/pods", "Pod", True),
    ("v1/services", "Service", True),
    ("v1/configmaps", "ConfigMap", True),
    ("v1/secrets", "Secret", True),
    ("v1/serviceaccounts", "ServiceAccount", True),
    ("events.k8s.io/v1/events", "Event", True),
    ("batch/v1/jobs", "Job", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
    ("coordination.k8s.io/v1/leases", "Lease", True),
]
KSERVE_RESOURCE = ("serving.kserve.io/v1beta1/inferenceservices", "InferenceService", True)
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


@attrs.frozen
class VersionConflictError(k8s.KubernetesError):
    """409 for a write whose resourceVersion precondition no longer holds."""

    status: int = 409
    reason: str = "Conflict"
    message: str = "the object has been modified"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str) -> str:
    """'2026-01-01T00:00:00Z' -> '42s' / '5m' / '3h' / '2d', as kubectl prints ages."""
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _dig(obj: Any, json_path: str) -> Any:
    """`.status.plan.totalGpus` -> value or None (the subset of JSONPath printer columns use)."""
    for part in json_path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _matches_selector(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b,c!=d,e`), which is what operators use."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class LoRAJobEmulator(KubernetesEmulator):
    """kmock's emulator plus the API server's bookkeeping that operators depend on."""

    def declare(self, key: str, kind: str, namespaced: bool, **extra: Any) -> None:
        self.resources[key] = ResourceInfo(
            kind=kind, namespaced=namespaced, singular=kind.lower(), verbs=VERBS, **extra
        )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        if raw_request.path.startswith("/openapi/v3"):
            return self._serve_openapi(raw_request.path)
        return await super().__call__(raw_request)

    def _serve_openapi(self, path: str) -> aiohttp.web.StreamResponse:
        """OpenAPI v3 for the custom resources, from their CRDs' schemas: `kubectl apply`
        downloads it and validates manifests client-side, as against a real API server."""
        crds = {
            f"apis/{crd['spec']['group']}/{version['name']}": (crd, version)
            for crd in self._crds()
            for version in crd["spec"].get("versions", [])
        }
        if path.rstrip("/") == "/openapi/v3":
            paths = {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in crds}
            return aiohttp.web.json_response({"paths": paths})
        gv = path[len("/openapi/v3/") :].strip("/")
        if gv not in crds:
            return aiohttp.web.json_response({"message": f"no OpenAPI for {gv}"}, status=404)
        crd, version = crds[gv]
        names = crd["spec"]["names"]
        schema = copy.deepcopy(version.get("schema", {}).get("openAPIV3Schema", {}))
        schema["x-kubernetes-group-version-kind"] = [
            {"group": crd["spec"]["group"], "version": version["name"], "kind": names["kind"]}
        ]
        ref = f"{'.'.join(reversed(crd['spec']['group'].split('.')))}.{version['name']}"
        gvk = {"group": crd["spec"]["group"], "version": version["name"], "kind": names["kind"]}
        item = f"/{gv}/namespaces/{{namespace}}/{names['plural']}/{{name}}"
        # kubectl looks for `fieldValidation` on PATCH to decide that the server validates.
        patch = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "OK"}},
        }
        document = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes emulator", "version": "v0"},
            "paths": {item: {"patch": patch}},
            "components": {"schemas": {f"{ref}.{names['kind']}": schema}},
        }
        return aiohttp.web.json_response(document)

    def _crds(self) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, _, _), obj in self.objects.items()
            if not obj.deleted and resource.plural == "customresourcedefinitions"
        ]

    async def _serve_namespaces(
        self, raw_request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        """kmock cannot route `GET /api/v1/namespaces` (kopf lists and watches it when it
        serves named namespaces): list every namespace an object lives in, plus `default`;
        a watch stays open and quiet, as on a cluster where namespaces do not change."""
        if raw_request.query.get("watch") in ("true", "1"):
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            timeout = float(raw_request.query.get("timeoutSeconds", "300"))
            await asyncio.sleep(min(timeout, 300.0))
            return response
        names = {"default"} | {ns for (_, ns, _) in self.objects if ns}
        items = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "uid": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "status": {"phase": "Active"},
            }
            for ns in sorted(names)
        ]
        body = {
            "apiVersion": "v1",
            "kind": "NamespaceList",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }
        return aiohttp.web.json_response(body)

    def _declared(self, request: rendering.Request) -> bool:
        return any(res == request.resource for res in self.resources)

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            raw: dict[str, Any] = self.objects[key].raw
            return raw
        return None

    def _stamp(self, request: rendering.Request) -> None:
        """Add uid/creationTimestamp/generation/resourceVersion like the API server does."""
        data = request.data
        if not isinstance(data, dict):
            return
        if request.action == enums.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            meta["resourceVersion"] = uuid.uuid4().hex[:8]
        elif request.action == enums.action.UPDATE and request.name is not None:
            current = self._current(request)
            meta = data.setdefault("metadata", {})
            expected = meta.get("resourceVersion")
            if (
                current is not None
                and expected
                and expected != current["metadata"].get("resourceVersion")
            ):
                # A resourceVersion in the body is a precondition, as on the API server: this is
                # what makes Lease-based leader election safe.
                raise VersionConflictError(
                    message=f"the object has been modified (resourceVersion {expected} is stale)"
                )
            meta["resourceVersion"] = uuid.uuid4().hex[:8]
            if current is not None and request.subresource != "status" and "spec" in data:
                merged = {**(current.get("spec") or {}), **(data.get("spec") or {})}
                if merged != current.get("spec"):
                    meta["generation"] = int(current["metadata"].get("generation", 1)) + 1

    async def _handle(self, request: rendering.Request) -> Any:
        specific = request.resource is not None and request.resource.plural is not None
        if specific and not self._declared(request):
            raise k8s.KubernetesResourceNotFoundError(
                message=f"the server could not find the requested resource {request.resource}"
            )
        conditional = (
            specific
            and request.action == enums.action.UPDATE
            and isinstance(request.data, dict)
            and bool((request.data.get("metadata") or {}).get("resourceVersion"))
        )
        try:
            if not conditional:
                if specific:
                    async with self._lock:
                        self._stamp(request)
                return await super()._handle(request)
            # Check and write in one step for conditional writers (kmock's own lock is released
            # in between, so two of them could otherwise both pass the check).
            async with self._conditional_writes():
                async with self._lock:
                    self._stamp(request)
                return await super()._handle(request)
        finally:
            self._forget(request)

    def _conditional_writes(self) -> asyncio.Lock:
        lock: asyncio.Lock | None = getattr(self, "_conditional_lock", None)
        if lock is None:
            lock = self._conditional_lock = asyncio.Lock()
        return lock

    def _KubernetesEmulator__get_objs(  # overrides kmock's name-mangled method
        self, request: rendering.Request, strict: bool
    ) -> list[Any]:
        """kmock scans every stored object for every request (comparing resources is slow):
        with 4000 objects a GET took ~10 ms. A named request is a dict lookup here."""
        resource, name = request.resource, request.name
        if resource is not None and name is not None and (strict or request.namespace is not None):
            found = self._objects._objects.get((resource, request.namespace, name))
            return [] if found is None else [found]
        return [
            obj
            for (resource, namespace, name), obj in self._objects.items()
            if resource == request.resource
            and (
                namespace == request.namespace if strict else request.namespace in (None, namespace)
            )
            and (request.name is None or name == request.name)
        ]

    def _forget(self, request: rendering.Request) -> None:
        """kmock keeps every request ever served and routes each new one by re-filtering that
        whole history (O(requests) per request: 0.2 s per GET after a few thousand). Nothing here
        asserts on past requests, so a served request is dropped; in-flight ones stay."""
        for index, seen in enumerate(self._requests):
            if seen is request:
                del self._requests[index]
                return

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = cast(dict[str, Any], await super()._serve_list(request))
        selector = request.params.get("labelSelector")
        if selector:
            result["items"] = [
                item
                for item in result["items"]
                if _matches_selector(item.get("metadata", {}).get("labels") or {}, selector)
            ]
        if "as=Table" in request.headers.get("Accept", ""):
            return self._table(request, result["items"])
        return result

    async def _serve_version(self, request: rendering.Request) -> Any:
        """kmock writes the core group's version as '/v1'; kubectl then finds no v1 kinds."""
        result = cast(dict[str, Any], await super()._serve_version(request))
        result["groupVersion"] = str(result.get("groupVersion", "")).lstrip("/")
        return result

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        obj = cast(dict[str, Any], await super()._serve_fetch(request))
        if "as=Table" in request.headers.get("Accept", ""):
            return self._table(request, [obj])
        return obj

    def _printer_columns(self, request: rendering.Request) -> list[dict[str, Any]]:
        for (resource, _, _), obj in self.objects.items():
            if obj.deleted or resource.plural != "customresourcedefinitions":
                continue
            spec = obj.raw.get("spec", {})
            if request.resource is None or spec.get("group") != request.resource.group:
                continue
            if spec.get("names", {}).get("plural") != request.resource.plural:
                continue
            for version in spec.get("versions", []):
                if version.get("name") == request.resource.version:
                    return list(version.get("additionalPrinterColumns", []))
        return []

    def _table(self, request: rendering.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The `meta.k8s.io/v1 Table` that `kubectl get` renders, from the CRD's printer columns."""
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0}]
        printer = self._printer_columns(request)
        columns += [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "priority": c.get("priority", 0),
            }
            for c in printer
        ]
        rows = []
        for item in items:
            cells: list[Any] = [item.get("metadata", {}).get("name")]
            for column in printer:
                value = _dig(item, column["jsonPath"])
                if value is not None and column.get("type") == "date":
                    value = _age(str(value))
                cells.append("<none>" if value is None else value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", **item}})
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "1"},
            "columnDefinitions": columns,
            "rows": rows,
        }


def lorajob_resource_info() -> ResourceInfo:
    return ResourceInfo(
        kind=KIND,
        namespaced=True,
        singular=SINGULAR,
        shortnames=set(SHORT_NAMES),
        categories={"finetune", "all"},
        verbs=VERBS,
    )


class EmulatedCluster(Service):
    """Runs `LoRAJobEmulator` on 127.0.0.1 in a background thread and writes a kubeconfig.

    `with EmulatedCluster(tmp_path, kserve=True) as cluster: cluster.kubeconfig` — the CRD is
    created from `api.crd.build_crd`. Namespaces need not exist (kmock cannot serve
    /api/v1/namespaces); every namespace is usable.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        kserve: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.kserve = kserve
        self.kubeconfig = self.workdir / "kubeconfig.yaml"
        self.emulator: LoRAJobEmulator | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EmulatedCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator failed to start: {self._error}")
        self._write_kubeconfig()
        self._seed()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = LoRAJobEmulator()
        for key, kind, namespaced in CORE_RESOURCES:
            emulator.declare(key, kind, namespaced)
        if self.kserve:
            emulator.declare(*KSERVE_RESOURCE)
        emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = lorajob_resource_info()
        async with emulator, Server(emulator, port=None) as server:
            self.emulator = emulator
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
                }
            ],
            "current-context": "emulator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _seed(self) -> None:
        from ..api.crd import build_crd

        client = self.client()
        client.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, build_crd())

    def client(self) -> RestClient:
        return RestClient(self.url)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


# ------------------------------------------------------------------------------------- client


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RestClient:
    """Small synchronous JSON client for tests and benches: the emulator (plain http) or a real
    cluster (`RestClient.from_kubeconfig`, auth handled by the `kubernetes` client)."""

    def __init__(self, base_url: str, api_client: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api = api_client

    @classmethod
    def from_kubeconfig(cls, path: str | None = None) -> RestClient:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=path, client_configuration=configuration)
        return cls(configuration.host, client.ApiClient(configuration))

    def request(self, method: str, path: str, body: Any = None, query: str = "") -> Any:
        url = self.base_url + path + (f"?{query}" if query else "")
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        if self._api is not None:
            return self._request_kubernetes(method, path, body, query, content_type)
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode()[:500]) from None
        return json.loads(text) if text else None

    def _request_kubernetes(
        self, method: str, path: str, body: Any, query: str, content_type: str
    ) -> Any:
        from kubernetes.client.exceptions import ApiException

        params = [tuple(p.split("=", 1)) for p in query.split("&") if p]
        try:
            response = self._api.call_api(
                path,
                method,
                query_params=params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
        except ApiException as exc:
            raise ApiError(int(exc.status), str(exc.body)[:500]) from None
        raw = response[0].data if isinstance(response, tuple) else response.data
        return json.loads(raw) if raw else None

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", resource_path(resource, namespace, name))
            return obj
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, resource: str, namespace: str | None = None, selector: str = ""
    ) -> list[dict[str, Any]]:
        query = f"labelSelector={selector}" if selector else ""
        result = self.request("GET", resource_path(resource, namespace), query=query)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def create(self, resource: str, namespace: str | None, body: dict[str, Any]) -> Any:
        return self.request("POST", resource_path(resource, namespace), body)

    def patch(
        self, resource: str, namespace: str | None, name: str, body: dict[str, Any], status: bool
    ) -> Any:
        path = resource_path(resource, namespace, name) + ("/status" if status else "")
        return self.request("PATCH", path, body)

    def delete(self, resource: str, namespace: str | None, name: str) -> None:
        try:
            self.request("DELETE", resource_path(resource, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise


# ----------------------------------------------------------------------- controller stand-ins

OWNED_RESOURCES = [
    "batch/v1/jobs",
    "v1/services",
    "v1/configmaps",
    "v1/secrets",
    "v1/serviceaccounts",
    "v1/pods",
    "serving.kserve.io/v1beta1/inferenceservices",
]


class JobDriver:
    """Plays the Job controller and kubelet: sets Job status and creates Pods with phases and
    termination messages, so the operator sees what a real cluster would report."""

    def __init__(self, client: RestClient, namespace: str = "default") -> None:
        self.client = client
        self.namespace = namespace

    def job(self, name: str) -> dict[str, Any]:
        job = self.client.get("batch/v1/jobs", self.namespace, name)
        if job is None:
            raise AssertionError(f"Job {self.namespace}/{name} does not exist")
        return job

    def _set_status(self, name: str, status: dict[str, Any]) -> None:
        self.client.patch("batch/v1/jobs", self.namespace, name, {"status": status}, status=True)

    def start(self, name: str) -> None:
        """All indexes running (one pod each)."""
        job = self.job(name)
        parallelism = int(job["spec"].get("parallelism", 1))
        for index in range(parallelism):
            self._pod(job, index, "Running")
        self._set_status(name, {"active": parallelism, "startTime": _now(), "ready": parallelism})

    def fail_pod(self, name: str, index: int, exit_code: int, message: str = "") -> str:
        """A pod failed; the Job's own podFailurePolicy decides, as the Job controller would:
        `FailJob` fails the Job (reason PodFailurePolicy), `Ignore` does not count the failure,
        anything else counts it and the index is retried (status.failed grows). Returns the
        action taken."""
        job = self.job(name)
        action = policy_action(job["spec"].get("podFailurePolicy"), exit_code)
        failed = int(job.get("status", {}).get("failed", 0)) + (action != "Ignore")
        self._pod(job, index, "Failed", exit_code=exit_code, message=message, attempt=failed)
        self._set_status(name, {"failed": failed})
        if action == "FailJob":
            pod = f"{name}-{index}"
            self.fail(name, "PodFailurePolicy", f"pod {pod} failed with exit code {exit_code}")
        return action

    def succeed(self, name: str) -> None:
        job = self.job(name)
        completions = int(job["spec"].get("completions", 1))
        for pod in self.pods(name):
            if pod.get("status", {}).get("phase") == "Running":
                self.client.patch(
                    "v1/pods",
                    self.namespace,
                    pod["metadata"]["name"],
                    {"status": {"phase": "Succeeded"}},
                    status=True,
                )
        condition = {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
        self._set_status(
            name,
            {
                "active": 0,
                "ready": 0,
                "succeeded": completions,
                "completionTime": _now(),
                "conditions": [condition],
            },
        )

    def fail(self, name: str, reason: str = "PodFailurePolicy", message: str = "") -> None:
        condition = {
            "type": "Failed",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }
        self._set_status(name, {"active": 0, "ready": 0, "conditions": [condition]})

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        return self.client.list("v1/pods", self.namespace, f"job-name={job_name}")

    def _pod(
        self,
        job: dict[str, Any],
        index: int,
        phase: str,
        *,
        exit_code: int | None = None,
        message: str = "",
        attempt: int = 0,
    ) -> None:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": name}
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
        state: dict[str, Any] = {"running": {"startedAt": _now()}}
        if exit_code is not None:
            state = {"terminated": {"exitCode": exit_code, "message": message, "reason": "Error"}}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{index}-{attempt}-{uuid.uuid4().hex[:5]}",
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"].get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec", {}),
            "status": {
                "phase": phase,
                "containerStatuses": [{"name": "trainer", "state": state}],
            },
        }
        self.client.create("v1/pods", self.namespace, pod)


def owned_objects(client: RestClient, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in OWNED_RESOURCES:
        try:
            items = client.list(resource, namespace)
        except ApiError:
            continue
        for item in items:
            yield resource, item


def collect_garbage(client: RestClient, namespace: str, owner_resources: list[str]) -> int:
    """Delete objects whose controller owner no longer exists (what the API server's garbage
    collector does); repeat until stable so Pods of deleted Jobs go too. Returns how many."""
    deleted = 0
    while True:
        alive = {
            item["metadata"].get("uid")
            for resource in owner_resources + OWNED_RESOURCES
            for item in _safe_list(client, resource, namespace)
        }
        orphans = [
            (resource, item["metadata"]["name"])
            for resource, item in owned_objects(client, namespace)
            if any(
                ref.get("uid") not in alive for ref in item["metadata"].get("ownerReferences", [])
            )
        ]
        if not orphans:
            return deleted
        for resource, name in orphans:
            client.delete(resource, namespace, name)
            deleted += 1


def _safe_list(client: RestClient, resource: str, namespace: str) -> list[dict[str, Any]]:
    try:
        return client.list(resource, namespace)
    except ApiError:
        return []
