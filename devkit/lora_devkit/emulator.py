"""An emulated Kubernetes API (kmock's `KubernetesEmulator`) on 127.0.0.1 for tests, the demo and
the operator bench.

Why a subclass: the plain emulator stores objects as given. Operators and users rely on what the
API server does on top, and `LoRAJobEmulator` adds it:

- bookkeeping: uid (owner references), creationTimestamp (queue order), namespace, generation
  (bumped on spec changes), resourceVersion (a stale one in a write is a 409, which is what makes
  Lease-based leader election safe), 404 for resources that are not installed (KServe absent);
- custom resources whose CRD it holds (LoRAJob): unknown fields pruned (`fieldValidation=Strict`,
  kubectl's default, refuses them with 400 instead; `Warn`, the default, adds a Warning header),
  schema defaults applied, the OpenAPI schema and the CEL `x-kubernetes-validations` rules
  checked (`lora_operator.api.schema_check`) on create, update (PUT) and patch, refused with
  422 `Invalid` and the field named, as the API server words it; `status` is dropped on create
  and ignored in writes to the main resource, and writes to `/status` change only status;
- PUT replaces an object (kmock would merge it); merge and JSON patches apply as such;
- lists are `<Kind>List`s whose items carry apiVersion/kind (`kubectl get -o json|yaml|name`),
  cluster-wide too; label and field selectors (`field_selectors`); `kubectl get` tables from
  the CRD's printer columns;
- watches stream newline-delimited JSON events (Table rows for `kubectl get -w`), honour the
  selectors, start after the list's resourceVersion (`watch_journal`), answer
  `sendInitialEvents` with the closing BOOKMARK (`kubectl wait`) and end at `timeoutSeconds`;
- built-in kinds: short names in discovery (`cm`, `sa`, `ns`, ...), kubectl's protobuf bodies
  read (`protobuf_bodies`: `kubectl create secret|configmap|serviceaccount`), an OpenAPI v3
  index that lets `kubectl apply` validate on the server, and Job/Pod/Service/ConfigMap/Secret/
  ServiceAccount checked against their published schemas (`builtin_schemas`: unknown fields
  400 under Strict or dropped with a warning, mistyped 400, missing required 422);
- a DELETE's preconditions (uid, resourceVersion in DeleteOptions) are checked (409 Conflict);
- the garbage collector: deleting an object deletes (background propagation) every object whose
  `ownerReferences` all point at deleted objects, recursively (a Job's Pods too); an object
  written with owners that are all gone (by uid) is collected at once.

Still unlike a real API server: no admission webhooks, RBAC, quotas or namespace lifecycle;
built-in kinds get only their schemas' checks (no Go validation: name formats, ranges,
immutability; Events and Leases not even those), no defaults, and their status is writable
through the main resource; protobuf is read only for the kinds `kubectl create` generators
above send (`kubectl create job|deployment` get 415); objects' resourceVersions are opaque, so a
watch resumes only from a list's; strategic merge patches are treated as merge patches (lists
replaced, not merged); validation ratcheting is approximate (an update may keep any error the
stored object already had, not only ones in unchanged fields); defaults are applied on writes
only, not when reading objects stored before a CRD change; garbage collection is immediate
(before the DELETE returns) and has no foreground/orphan propagation.
Nothing runs Jobs or Pods: the demo's `LocalExecutor` or a test's stand-in plays the Job controller
and kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp.web
import attrs
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server
from kmock._internal import apps, dicts, enums, k8s, references, rendering

from lora_contract.timestamps import now_iso, parse_iso
from lora_contract.types import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from lora_operator.api.schema_check import FieldError, apply_defaults, field_errors, prune_unknown
from lora_operator.controller.kube import (
    KubeError,
    delete_options,
    resource_path,
    status_message,
)

from . import builtin_schemas, field_selectors, protobuf_bodies
from .namespaces import Namespaces, merge_patch
from .service import Service
from .watch_journal import Buses, Journal, JournaledBus

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
# a shared server's runtime (controller/shared_runtime.py), declared with KServe
KSERVE_RUNTIME_RESOURCE = ("serving.kserve.io/v1alpha1/servingruntimes", "ServingRuntime", True)
# KServe's LLM API and the Inference Extension's pool (controller/serving_api.py), each opt-in
LLMISVC_RESOURCE = (
    "serving.kserve.io/v1alpha1/llminferenceservices",
    "LLMInferenceService",
    True,
)
INFERENCE_POOL_RESOURCE = ("inference.networking.k8s.io/v1/inferencepools", "InferencePool", True)
# The short names a real cluster serves in discovery (`kubectl get cm`, `describe sa`).
BUILTIN_SHORT_NAMES = {
    "v1/namespaces": {"ns"},
    "v1/events": {"ev"},
    "v1/pods": {"po"},
    "v1/services": {"svc"},
    "v1/configmaps": {"cm"},
    "v1/serviceaccounts": {"sa"},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"crd", "crds"},
    "serving.kserve.io/v1beta1/inferenceservices": {"isvc"},
}
T = TypeVar("T")
CRDS = "customresourcedefinitions"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}


@attrs.frozen
class VersionConflictError(k8s.KubernetesError):
    """409 for a write whose resourceVersion precondition no longer holds."""

    status: int = 409
    reason: str = "Conflict"
    message: str = "the object has been modified"


@attrs.frozen
class InvalidError(k8s.KubernetesError):
    """422 for an object the CRD's schema or CEL rules refuse (what `kubectl apply` prints)."""

    status: int = 422
    reason: str = "Invalid"


@attrs.frozen
class BadRequestError(k8s.KubernetesError):
    """400, e.g. unknown fields under `fieldValidation=Strict`."""

    status: int = 400
    reason: str = "BadRequest"


@attrs.frozen
class UnsupportedMediaTypeError(k8s.KubernetesError):
    """415 for a body the emulator cannot read (protobuf of a kind it does not decode)."""

    status: int = 415
    reason: str = "UnsupportedMediaType"


@attrs.frozen
class CustomResource:
    """What the emulator needs from a stored CRD to treat writes as the API server would."""

    kind: str
    group: str
    version: str
    schema: dict[str, Any]
    status_subresource: bool


_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace", "name")


def _merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `old` into `new` (null removes a key): kmock applies
    only patches, so a PUT's replacement or a rewritten write is handed to it as one."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = _merge_diff(old[key], value)
            if sub:
                patch[key] = sub
        elif value != old[key]:
            patch[key] = value
    return patch


def _validated_view(schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """What a CRD's schema and rules can see of an object: its metadata only as far as the
    schema declares it (the API server lets a CRD constrain only name and generateName), so
    an update that changes annotations or finalizers alone needs no validation."""
    meta_schema = schema.get("properties", {}).get("metadata", {})
    meta = obj.get("metadata") or {}
    sees_all = (
        "x-kubernetes-validations" in schema
        or "additionalProperties" in meta_schema
        or "x-kubernetes-preserve-unknown-fields" in meta_schema
        or "x-kubernetes-validations" in meta_schema
    )
    declared = meta_schema.get("properties", {})
    seen = meta if sees_all else {k: v for k, v in meta.items() if k in declared}
    return {**{k: v for k, v in obj.items() if k != "metadata"}, "metadata": seen}


# Object schemas whose validation splits into their properties' (no rules, no constraint
# between properties beyond `required`, undeclared properties allowed).
_PLAIN_OBJECT = {"type", "properties", "required", "description"}
_MEMO_LIMIT = 20_000


class _Validity:
    """`field_errors`, fast for valid objects: a plain object schema is valid when its shell
    (type, required) and each property's value are, and each property's answer is memoized by
    its JSON. 10,000 creates of the same few specs validated the whole spec each time (~40% of
    the emulator's time); the spec and the plan now validate once per distinct value. Anything
    with an error is validated whole again, so the errors and their order are `field_errors`'."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, str], tuple[dict[str, Any], bool]] = {}

    def errors(self, schema: dict[str, Any], obj: Any, path: str = "") -> list[FieldError]:
        if self.valid(schema, obj):
            return []
        return field_errors(schema, obj, path)

    def valid(self, schema: dict[str, Any], obj: Any) -> bool:
        """Whether `field_errors` finds nothing (which does not depend on the path)."""
        props = schema.get("properties")
        if (
            isinstance(obj, dict)
            and isinstance(props, dict)
            and schema.get("type") == "object"
            and set(schema) <= _PLAIN_OBJECT
        ):
            return all(name in obj for name in schema.get("required", [])) and all(
                name not in props or self.valid(props[name], value) for name, value in obj.items()
            )
        key = (id(schema), json.dumps(obj, sort_keys=True, default=str))
        hit = self._memo.get(key)
        if hit is not None and hit[0] is schema:
            return hit[1]
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        answer = not field_errors(schema, obj)
        self._memo[key] = (schema, answer)
        return answer


def _field_validating_patch(group: str, version: str, kind: str) -> dict[str, Any]:
    """The PATCH operation of a kind's OpenAPI path: kubectl looks for its `fieldValidation`
    parameter to know that the server validates fields (else it wants OpenAPI v2 schemas)."""
    return {
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
        "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
        "responses": {"200": {"description": "OK"}},
    }


def _builtin_openapi(gv: str, kinds: list[tuple[str, str, bool]]) -> dict[str, Any]:
    """OpenAPI v3 of a built-in group version, as far as kubectl reads it for `apply`: each
    kind's object path and its field-validating PATCH (schemas: `builtin_schemas`)."""
    group_version = gv.split("/", 1)[1]
    group, _, version = group_version.rpartition("/")
    paths = {
        f"/{gv}/{'namespaces/{namespace}/' if namespaced else ''}{plural}/{{name}}": {
            "patch": _field_validating_patch(group, version, kind)
        }
        for kind, plural, namespaced in kinds
    }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes emulator", "version": "v0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _age(timestamp: str) -> str:
    """'2026-01-01T00:00:00Z' -> '42s' / '5m' / '3h' / '2d', as kubectl prints ages."""
    then = parse_iso(timestamp)
    if then is None:
        return timestamp
    seconds = int(time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


# One step of a printer column's JSONPath: a field, optionally filtered as a list by one
# equality (`.conditions[?(@.type=="Ready")]`, the first match, as kubectl prints it).
_PATH_STEP = re.compile(r'\.([A-Za-z0-9_]+)(?:\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\])?')


def _dig(obj: Any, json_path: str) -> Any:
    """`.status.plan.totalGpus` or `.status.conditions[?(@.type=="Ready")].status` -> value
    or None (the subset of JSONPath printer columns use)."""
    path = json_path if json_path.startswith(".") else "." + json_path
    for step in _PATH_STEP.finditer(path):
        name, key, value = step.groups()
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
        if key is not None:
            matches = [i for i in obj or [] if isinstance(i, dict) and i.get(key) == value]
            obj = matches[0] if matches else None
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


RouteKey = tuple[str, str, bool, str | None]
OBJECT_ACTIONS = {
    enums.action.LIST,
    enums.action.WATCH,
    enums.action.FETCH,
    enums.action.CREATE,
    enums.action.UPDATE,
    enums.action.DELETE,
}


class _RememberedRoutes(apps.RawHandler):
    """kmock routes each request by filtering every in-flight request through each reaction's
    criteria until one matches its own (~1 ms a request with the operator's watches and
    concurrent calls open). The emulator's object requests always end in the same fallback
    reaction for the same shape (method, action, named or not, subresource): once kmock has
    routed one (`_remember_route`), the next of that shape goes straight there."""

    _routes: dict[RouteKey, Any] | None = None

    @staticmethod
    def _route_key(request: rendering.Request) -> RouteKey | None:
        resource = request.resource
        if resource is None or resource.plural is None or request.action not in OBJECT_ACTIONS:
            return None
        return (str(request.method), str(request.action), request.name is None, request.subresource)

    def _remember_route(self, request: rendering.Request) -> None:
        key = self._route_key(request)
        if key is None:
            return
        for payload in self._payloads:
            if any(seen is request for seen in payload._requests):
                if self._routes is None:
                    self._routes = {}
                self._routes[key] = payload
                return

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = self._route_key(request)
        payload = None if key is None or self._routes is None else self._routes.get(key)
        live = payload is not None and any(p is payload for p in self._payloads)
        if payload is not None and live and not payload._disabled.is_set():
            return cast(aiohttp.web.StreamResponse, await payload(request))
        return await super()._handle(request)


class LoRAJobEmulator(KubernetesEmulator, _RememberedRoutes):
    """kmock's emulator plus the API server's bookkeeping that operators depend on."""

    _crd_cache: list[dict[str, Any]] | None = None  # see `_crds`
    _validity_memo: _Validity | None = None

    @property
    def _validity(self) -> _Validity:
        if self._validity_memo is None:
            self._validity_memo = _Validity()
        return self._validity_memo

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._journal = Journal()
        self._buses = Buses(self._journal)

    def declare(self, key: str, kind: str, namespaced: bool, **extra: Any) -> None:
        extra.setdefault("shortnames", BUILTIN_SHORT_NAMES.get(key, set()))
        self.resources[key] = ResourceInfo(
            kind=kind, namespaced=namespaced, singular=kind.lower(), verbs=VERBS, **extra
        )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.content_type == protobuf_bodies.MEDIA_TYPE:
            try:
                await self._read_as_json(raw_request)
            except protobuf_bodies.ProtobufError as exc:
                return await self._render_error(
                    UnsupportedMediaTypeError(
                        message=f"the {protobuf_bodies.MEDIA_TYPE} body cannot be read: {exc}"
                    )
                )
        parts = raw_request.path.rstrip("/").split("/")
        if parts[:4] == ["", "api", "v1", "namespaces"] and len(parts) <= 5:
            return await self._serve_namespaces(raw_request, parts[4] if len(parts) == 5 else None)
        if raw_request.path.startswith("/openapi/v3"):
            return self._serve_openapi(raw_request.path)
        return await super().__call__(raw_request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """The API server's Status, without the traceback kmock formats into `details`: every
        404 (a get of a Job not yet made) paid ~2 ms for it."""
        if not isinstance(exc, k8s.KubernetesError):
            return await super()._render_error(exc)
        status = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "code": exc.status,
            "status": "Failure",
            "reason": exc.reason or type(exc).__name__,
            "message": exc.message or repr(exc),
            "details": exc.details or {},
        }
        return aiohttp.web.json_response(status, status=exc.status)

    def _serve_openapi(self, path: str) -> aiohttp.web.StreamResponse:
        """OpenAPI v3: the custom resources' from their CRDs' schemas, and for every other
        declared kind the paths that tell `kubectl apply`/`create -f` the server validates
        fields itself (`fieldValidation`); without a kind's group version there, kubectl asks for
        OpenAPI v2 and refuses to send the object."""
        crds = {
            f"apis/{crd['spec']['group']}/{version['name']}": (crd, version)
            for crd in self._crds()
            for version in crd["spec"].get("versions", [])
        }
        builtins = self._declared_group_versions()
        if path.rstrip("/") == "/openapi/v3":
            paths = {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in [*crds, *builtins]}
            return aiohttp.web.json_response({"paths": paths})
        gv = path[len("/openapi/v3/") :].strip("/")
        if gv in builtins and gv not in crds:
            return aiohttp.web.json_response(_builtin_openapi(gv, builtins[gv]))
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

    def _declared_group_versions(self) -> dict[str, list[tuple[str, str, bool]]]:
        """`api/v1` / `apis/batch/v1` -> [(kind, plural, namespaced)] of the declared kinds."""
        result: dict[str, list[tuple[str, str, bool]]] = {}
        for key, info in self.resources.items():
            if not isinstance(key, references.resource) or not isinstance(info, ResourceInfo):
                continue
            if not info.kind:
                continue
            gv = f"apis/{key.group}/{key.version}" if key.group else f"api/{key.version}"
            result.setdefault(gv, []).append((info.kind, str(key.plural), bool(info.namespaced)))
        return result

    def _crds(self) -> list[dict[str, Any]]:
        """The stored CRDs, kept until a CRD is written (`_handle`, `_collect_garbage`): every
        write looks its CRD up, and scanning all objects each time made N creates O(N²)."""
        cached = self._crd_cache
        if cached is None:
            cached = self._crd_cache = [
                obj.raw
                for (resource, _, _), obj in self.objects.items()
                if not obj.deleted and resource.plural == CRDS
            ]
        return cached

    @staticmethod
    async def _read_as_json(raw_request: aiohttp.web.BaseRequest) -> None:
        """A protobuf body (kubectl's typed clients: `kubectl create secret generic`) replaced by
        the JSON it stands for, so kmock parses the request like any other (`protobuf_bodies`):
        aiohttp's read()/text()/json() answer from `_read_bytes` once a body was read."""
        obj = protobuf_bodies.decode_object(await raw_request.read())
        raw_request._read_bytes = json.dumps(obj).encode()

    @property
    def namespaces(self) -> Namespaces:
        store: Namespaces | None = getattr(self, "_namespace_store", None)
        if store is None:
            store = self._namespace_store = Namespaces(
                lambda: {ns for (_, ns, _) in self.objects if ns}
            )
        return store

    async def _serve_namespaces(
        self, raw_request: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        """kmock cannot route `/api/v1/namespaces` (kopf lists and watches it when it serves
        named namespaces; pipelines create and apply Namespaces): `namespaces.Namespaces`
        answers. A watch stays open and quiet, as on a cluster where namespaces do not change."""
        if name is None and raw_request.query.get("watch") in ("true", "1"):
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw_request)
            timeout = float(raw_request.query.get("timeoutSeconds", "300"))
            await asyncio.sleep(min(timeout, 300.0))
            return response
        body: Any = None
        if raw_request.method in ("POST", "PUT", "PATCH"):
            try:
                body = json.loads(await raw_request.read() or b"null")
            except ValueError:
                body = None
        status, answer = self.namespaces.answer(raw_request.method, name, body)
        return aiohttp.web.json_response(answer, status=status)

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

    @property
    def _revision(self) -> int:
        """Counts writes: a list's resourceVersion."""
        return int(getattr(self, "_writes", 0))

    def _stamp(self, request: rendering.Request) -> None:
        """Add uid/creationTimestamp/generation/resourceVersion like the API server does."""
        data = request.data
        if request.action in (enums.action.CREATE, enums.action.UPDATE):
            self._writes = self._revision + 1
        if not isinstance(data, dict):
            return
        if request.action == enums.action.CREATE:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
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
        if specific and request.action == enums.action.WATCH:
            try:
                return await self._stream_watch(request)
            finally:
                self._forget(request)
        conditional = (
            specific
            and request.action in (enums.action.UPDATE, None)
            and isinstance(request.data, dict)
            and bool((request.data.get("metadata") or {}).get("resourceVersion"))
        )
        served = request
        try:
            if not specific:
                return await super()._handle(request)
            # Check and write in one step for conditional writers (kmock's own lock is released
            # in between, so two of them could otherwise both pass the check).
            async with self._conditional_writes() if conditional else _no_lock():
                async with self._lock:
                    self._check_preconditions(request)
                    owner_uid = self._uid(request)
                    served, warnings = self._admit(request)
                    self._stamp(served)
                    self._substitute(request, served)
                response = await super()._handle(served)
            for warning in warnings if not response.prepared else []:
                quoted = warning.replace("\\", "\\\\").replace('"', '\\"')  # RFC 7234 text
                response.headers.add("Warning", f'299 - "{quoted}"')
            if owner_uid is not None and self._current(request) is None:
                await self._collect_garbage({owner_uid})
            await self._collect_if_orphaned(served)
            return response
        finally:
            if specific and request.resource is not None and request.resource.plural == CRDS:
                self._crd_cache = None
            self._forget(request)
            self._forget(served)

    def _substitute(self, request: rendering.Request, served: rendering.Request) -> None:
        """kmock routes only requests it has recorded: record a rewritten one in its place."""
        if served is not request:
            for index, seen in enumerate(self._requests):
                if seen is request:
                    self._requests[index] = served
                    return

    def _check_preconditions(self, request: rendering.Request) -> None:
        """A DELETE's `DeleteOptions.preconditions` (uid, resourceVersion) must match the stored
        object, or the API server refuses with 409 and deletes nothing: a client deleting what it
        read earlier never deletes a newer object that took the name."""
        data = request.data
        if request.action != enums.action.DELETE or not isinstance(data, dict):
            return
        current = self._current(request)
        preconditions = data.get("preconditions") or {}
        if current is None or not isinstance(preconditions, dict):
            return
        meta = current.get("metadata") or {}
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            expected = preconditions.get(field)
            if expected is not None and expected != meta.get(field):
                raise VersionConflictError(
                    message=f"Precondition failed: {label} in precondition: {expected}, "
                    f"{label} in object meta: {meta.get(field)}"
                )

    def _uid(self, request: rendering.Request) -> str | None:
        """The uid of the object a delete or update names: if it is gone afterwards (deleted, or
        its last finalizer removed), its dependents are garbage."""
        if request.action not in (enums.action.DELETE, enums.action.UPDATE):
            return None
        current = self._current(request)
        return None if current is None else (current.get("metadata") or {}).get("uid")

    def _custom_resource(self, request: rendering.Request) -> CustomResource | None:
        resource = request.resource
        if resource is None:
            return None
        for crd in self._crds():
            spec = crd.get("spec", {})
            if spec.get("group") != resource.group:
                continue
            if spec.get("names", {}).get("plural") != resource.plural:
                continue
            for version in spec.get("versions", []):
                if version.get("name") == resource.version:
                    return CustomResource(
                        kind=spec["names"]["kind"],
                        group=spec["group"],
                        version=version["name"],
                        schema=version.get("schema", {}).get("openAPIV3Schema", {}),
                        status_subresource="status" in (version.get("subresources") or {}),
                    )
        return None

    def _admit(self, request: rendering.Request) -> tuple[rendering.Request, list[str]]:
        """The object a write would store, checked as the API server checks it: PUT replaces,
        and for custom resources unknown fields are pruned (or refused), defaults applied, the
        schema and CEL rules enforced and status kept apart. Returns the request kmock should
        serve (a create's body or an update's merge patch, rewritten) and Warning texts."""
        is_put = request.method == enums.method.PUT and request.name is not None
        if request.action not in (enums.action.CREATE, enums.action.UPDATE) and not is_put:
            return request, []
        custom = self._custom_resource(request)
        builtin = (
            custom is None
            and request.subresource is None
            and self._type_meta(request) in builtin_schemas.VALIDATED
        )
        if (custom is None and not is_put and not builtin) or not isinstance(
            request.data, dict | list
        ):
            return request, []
        current = self._current(request) if request.name is not None else None
        if request.action == enums.action.CREATE:
            if not isinstance(request.data, dict):
                return request, []
            desired = copy.deepcopy(request.data)
            if custom is not None and custom.status_subresource:
                desired.pop("status", None)
        else:
            if current is None:
                raise k8s.KubernetesObjectNotFoundError()
            if is_put:
                if not isinstance(request.data, dict):
                    raise BadRequestError(message="a PUT needs the whole object")
                desired = copy.deepcopy(request.data)
                meta = desired.setdefault("metadata", {})
                for key in _SERVER_META:
                    if key in current.get("metadata", {}):
                        meta.setdefault(key, current["metadata"][key])
            else:
                desired = (
                    merge_patch(copy.deepcopy(current), request.data)
                    if isinstance(request.data, dict)
                    else dict(dicts.patch_dict(copy.deepcopy(current), request.data))
                )
            if custom is not None and custom.status_subresource:
                status = desired.get("status")
                keep = status if request.subresource == "status" else current.get("status")
                if request.subresource == "status":  # its old status is replaced: not copied
                    desired = {k: copy.deepcopy(v) for k, v in current.items() if k != "status"}
                desired.pop("status", None)
                if keep is not None:
                    desired["status"] = keep
        warnings: list[str] = []
        if custom is not None:
            warnings = self._check(request, custom, desired, current)
        elif builtin:
            warnings = self._check_builtin(request, desired)
        if request.action == enums.action.CREATE:
            return attrs.evolve(request, data=desired), warnings
        assert current is not None
        patch = _merge_diff(current, desired)
        expected = (
            (request.data.get("metadata") or {}).get("resourceVersion")
            if isinstance(request.data, dict)
            else None
        )
        if expected:  # a precondition even when it matches (see `_stamp`)
            patch.setdefault("metadata", {})["resourceVersion"] = expected
        return attrs.evolve(request, action=enums.action.UPDATE, data=patch), warnings

    def _check(
        self,
        request: rendering.Request,
        custom: CustomResource,
        desired: dict[str, Any],
        current: dict[str, Any] | None,
    ) -> list[str]:
        """Prune, default and validate `desired` in place; raise 400/422 as the API server
        would. Returns warnings for pruned fields (`fieldValidation` Warn, the default).
        An update is not refused for what was already wrong with the stored object (validation
        ratcheting, on by default since Kubernetes 1.30): an object stored under an older, looser
        CRD can still get its annotations and status written."""
        status_write = request.subresource == "status"
        pruned = prune_unknown(custom.schema, desired)
        unknown = [f'unknown field "{path}"' for path in pruned]
        mode = request.params.get("fieldValidation", "Warn")
        if unknown and mode == "Strict":
            raise BadRequestError(
                message=f'{custom.kind} in version "{custom.version}" cannot be handled as a '
                f"{custom.kind}: strict decoding error: {', '.join(unknown)}",
                details={"kind": custom.kind, "group": custom.group},
            )
        apply_defaults(custom.schema, desired)
        if current is not None and _validated_view(custom.schema, desired) == _validated_view(
            custom.schema, current
        ):
            errors = []  # nothing the schema sees changed (kopf's annotations): all ratcheted
        elif status_write and custom.status_subresource:
            status_schema = custom.schema.get("properties", {}).get("status", {})
            errors = self._validity.errors(status_schema, desired.get("status"), "status")
            if desired.get("status") is None:
                errors = []
        else:
            errors = self._validity.errors(custom.schema, desired)
        if errors and current is not None:
            before = {str(e) for e in field_errors(custom.schema, current)}
            errors = [e for e in errors if str(e) not in before]
        if errors:
            name = (desired.get("metadata") or {}).get("name") or request.name or ""
            raise self._invalid(custom, name, errors)
        return unknown if mode == "Warn" else []

    def _check_builtin(self, request: rendering.Request, desired: dict[str, Any]) -> list[str]:
        """A built-in object checked against its kind's published schema, answered as the API
        server answers: a mistyped field is 400 (it cannot be decoded), an unknown one 400 under
        `fieldValidation=Strict` and otherwise dropped (with a Warning unless Ignore), a missing
        required field 422 Invalid naming it."""
        api_version, kind = self._type_meta(request)
        found = builtin_schemas.problems({**desired, "apiVersion": api_version, "kind": kind})
        version = api_version.rpartition("/")[2]
        cannot = f'{kind} in version "{version}" cannot be handled as a {kind}'
        if found.mistyped:
            raise BadRequestError(message=f"{cannot}: {'; '.join(found.mistyped)}")
        unknown = [f'unknown field "{path}"' for path in found.unknown]
        mode = request.params.get("fieldValidation", "Warn")
        if unknown and mode == "Strict":
            raise BadRequestError(message=f"{cannot}: strict decoding error: {', '.join(unknown)}")
        if found.required:
            name = (desired.get("metadata") or {}).get("name") or request.name or ""
            group = api_version.rpartition("/")[0]
            listed = [f"{path}: Required value" for path in found.required]
            joined = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
            raise InvalidError(
                message=f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}',
                details={
                    "name": name,
                    "group": group,
                    "kind": kind,
                    "causes": [
                        {"reason": "FieldValueRequired", "message": "Required value", "field": p}
                        for p in found.required
                    ],
                },
            )
        builtin_schemas.drop(desired, found.unknown)
        return unknown if mode == "Warn" else []

    @staticmethod
    def _invalid(custom: CustomResource, name: str, errors: list[FieldError]) -> InvalidError:
        """The 422 Status a real API server sends (kubectl prints `message` and the causes)."""
        listed = [str(e) for e in errors]
        joined = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
        return InvalidError(
            message=f'{custom.kind}.{custom.group} "{name}" is invalid: {joined}',
            details={
                "name": name,
                "group": custom.group,
                "kind": custom.kind,
                "causes": [
                    {"reason": e.reason, "message": e.body(), "field": e.field} for e in errors
                ],
            },
        )

    def _owner_alive(self, ref: dict[str, Any], namespace: str | None) -> bool:
        """Whether the object an ownerReference names exists with that uid (a dict lookup by
        its kind's resource, in the dependent's namespace or cluster-scoped)."""
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        for resource, info in self.resources.items():
            if not isinstance(resource, references.resource) or not isinstance(info, ResourceInfo):
                continue
            if info.kind != ref.get("kind") or resource.version != version:
                continue
            if (resource.group or "") != group:
                continue
            for where in (namespace, None):
                found = self.objects._objects.get((resource, where, str(ref.get("name"))))
                if found is None or found.deleted:
                    continue
                if (found.raw.get("metadata") or {}).get("uid") == ref.get("uid"):
                    return True
        return False

    async def _collect_if_orphaned(self, request: rendering.Request) -> None:
        """A real garbage collector also deletes an object written with owners that are all
        gone (a controller that read its owner just before the owner's deletion and re-created
        a child): collected here at once, as a deleted owner's dependents are."""
        if request.action not in (enums.action.CREATE, enums.action.UPDATE):
            return
        if request.subresource is not None:
            return
        if request.resource is None or not isinstance(request.data, dict):
            return
        name = request.name or (request.data.get("metadata") or {}).get("name")
        stored = self.objects._objects.get((request.resource, request.namespace, str(name)))
        if stored is None or stored.deleted:
            return
        refs = (stored.raw.get("metadata") or {}).get("ownerReferences") or []
        owners = [ref for ref in refs if isinstance(ref, dict) and ref.get("uid")]
        if not owners or len(owners) != len(refs):
            return
        if any(self._owner_alive(ref, request.namespace) for ref in owners):
            return
        await self._collect_garbage({str(ref["uid"]) for ref in owners})

    async def _collect_garbage(self, deleted: set[str]) -> None:
        """The garbage collector, background propagation: delete every object whose owners are
        all gone and one of which was just deleted; then the dependents of those, and so on."""
        async with self._lock:
            while deleted:
                alive = {
                    (obj.get("metadata") or {}).get("uid")
                    for obj in self._objects.values()
                    if not obj.deleted
                }
                doomed = []
                for key, obj in self._objects.items():
                    if obj.deleted:
                        continue
                    meta = obj.get("metadata") or {}
                    owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
                    if (
                        owners & deleted
                        and not owners & alive
                        and not meta.get("deletionTimestamp")
                    ):
                        doomed.append(key)
                deleted = set()
                for key in doomed:
                    obj = self._objects[key]
                    meta = obj.get("metadata") or {}
                    if meta.get("finalizers"):  # deleted once its finalizers are removed
                        obj.patch({"metadata": {"deletionTimestamp": now_iso()}})
                        event = {"type": "MODIFIED", "object": obj.raw}
                    else:
                        event = {"type": "DELETED", "object": obj.raw}
                        obj.delete()
                        deleted.add(str(meta.get("uid")))
                    if key[0].plural == CRDS:
                        self._crd_cache = None
                    await self._buses[key[0]].put(event)

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
        """kmock keeps every request ever served (in the handler and in the reaction that served
        it) and routes each new one by re-filtering the handler's whole list against every
        reaction (O(requests) per request: 0.2 s per GET after a few thousand). Nothing here
        asserts on past requests, so a request is dropped once it is routed (`_routed`) and
        from its reaction once served."""
        self._routed(request)
        for payload in self._payloads:
            served: list[rendering.Request] = getattr(payload, "_requests", [])
            for index in range(len(served) - 1, -1, -1):
                if served[index] is request:
                    del served[index]
                    return

    def _routed(self, request: rendering.Request) -> None:
        """Its reaction is running: kmock needs it no more to route it. Long-lived watches
        leave the list too, which every other request's routing would otherwise filter."""
        self._remember_route(request)
        for index, seen in enumerate(self._requests):
            if seen is request:
                del self._requests[index]
                return

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        self._routed(request)
        async for event in super()._serve_watch(request):
            yield event

    async def _serve_create(self, request: rendering.Request) -> Any:
        self._routed(request)
        return await super()._serve_create(request)

    async def _serve_update(self, request: rendering.Request) -> Any:
        self._routed(request)
        return await super()._serve_update(request)

    async def _serve_delete(self, request: rendering.Request) -> Any:
        self._routed(request)
        return await super()._serve_delete(request)

    def _selection(self, request: rendering.Request) -> Callable[[dict[str, Any]], bool]:
        """Whether an object is one the request asks for: its namespace and name (a named
        watch), `labelSelector` and `fieldSelector` (400 for fields that cannot be selected)."""
        _, kind = self._type_meta(request)
        try:
            terms = field_selectors.parse(request.params.get("fieldSelector", ""), kind)
        except field_selectors.FieldSelectorError as exc:
            raise BadRequestError(message=str(exc)) from None
        labels = request.params.get("labelSelector", "")
        namespace, name = request.namespace, request.name

        def selected(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and (not labels or _matches_selector(meta.get("labels") or {}, labels))
                and field_selectors.matches(obj, terms)
            )

        return selected

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """A watch as the API server streams it: newline-delimited JSON events (Table rows when
        kubectl asks for a Table), only the objects the selectors pick, starting after the
        `resourceVersion` it names (the state as ADDED events when it names none or one the
        journal cannot place), a BOOKMARK closing the initial events when asked for with
        `sendInitialEvents`, and ending after `timeoutSeconds`."""
        self._routed(request)
        selected = self._selection(request)
        params = request.params
        api_version, kind = self._type_meta(request)
        as_table = "as=Table" in request.headers.get("Accept", "")
        resource = request.resource
        assert resource is not None and request._raw_request is not None
        bus = self._buses[resource]
        since = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true"
        async with self._lock:  # every event is put under this lock: nothing slips in between
            marker = await bus.mark()
            seq = self._journal.seq
            resumable = since.isdigit() and since != "0" and not initial
            replay = (
                self._journal.since(cast(JournaledBus, bus).resource, int(since))
                if resumable
                else None
            )
            if resumable and replay is None:
                replay = [self._expired(since)]
            if replay is None:
                stored = self._KubernetesEmulator__get_objs(request, strict=False)
                replay = [{"type": "ADDED", "object": o.raw} for o in stored if not o.deleted]
        if initial:
            bookmark = {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {
                    "resourceVersion": str(seq),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }
            replay.append({"type": "BOOKMARK", "object": bookmark})
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        timeout = float(params.get("timeoutSeconds") or 1800)

        async def send(event: dict[str, Any]) -> None:
            obj = event.get("object") or {}
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                if not selected(obj):
                    return
                obj = {"apiVersion": api_version, "kind": kind, **obj}
                if as_table:
                    obj = self._table(request, [obj])
                event = {"type": event["type"], "object": obj}
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            async with asyncio.timeout(timeout):
                for event in replay:
                    await send(event)
                    if event["type"] == "ERROR":
                        return response
                async for event in bus.stream(since=marker):
                    await send(event)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            await bus.unmark(marker)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    @staticmethod
    def _expired(since: str) -> dict[str, Any]:
        """The ERROR event of a watch from a version the journal no longer holds: clients list
        again, as after a real API server's compaction."""
        return {
            "type": "ERROR",
            "object": {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since}",
                "reason": "Expired",
                "code": 410,
            },
        }

    def _type_meta(self, request: rendering.Request) -> tuple[str, str]:
        """(apiVersion, kind) of the requested resource, for lists and items that lack them."""
        resource = request.resource
        if resource is None:
            return "", ""
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        for key, info in self.resources.items():
            if key == resource and isinstance(info, ResourceInfo) and info.kind:
                return str(api_version), info.kind
        custom = self._custom_resource(request)
        return str(api_version), custom.kind if custom is not None else ""

    async def _serve_list(self, request: rendering.Request) -> Any:
        """A `<Kind>List` as the API server sends it: kubectl's json/yaml/name printers need
        apiVersion and kind on the list and on every item."""
        self._routed(request)
        selected = self._selection(request)
        result = cast(dict[str, Any], await super()._serve_list(request))
        version = str(self._journal.seq)  # read with no await since the store was: consistent
        items = [item for item in result["items"] if selected(item)]
        if "as=Table" in request.headers.get("Accept", ""):
            table = self._table(request, items)
            table["metadata"]["resourceVersion"] = version
            return table
        api_version, kind = self._type_meta(request)
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": version},
            "items": [{"apiVersion": api_version, "kind": kind, **item} for item in items],
        }

    async def _serve_version(self, request: rendering.Request) -> Any:
        """kmock writes the core group's version as '/v1'; kubectl then finds no v1 kinds."""
        result = cast(dict[str, Any], await super()._serve_version(request))
        result["groupVersion"] = str(result.get("groupVersion", "")).lstrip("/")
        return result

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        self._routed(request)
        obj = cast(dict[str, Any], await super()._serve_fetch(request))
        if "as=Table" in request.headers.get("Accept", ""):
            return self._table(request, [obj])
        api_version, kind = self._type_meta(request)
        return {"apiVersion": api_version, "kind": kind, **obj}

    def _printer_columns(self, request: rendering.Request) -> list[dict[str, Any]]:
        for crd in self._crds():
            spec = crd.get("spec", {})
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


@contextlib.asynccontextmanager
async def _no_lock() -> AsyncIterator[None]:
    yield


class EmulatedCluster(Service):
    """Runs `LoRAJobEmulator` on 127.0.0.1 in a background thread and writes a kubeconfig.

    `with EmulatedCluster(tmp_path, kserve=True) as cluster: cluster.kubeconfig` — the CRD is
    created from `api.crd.build_crd`. Namespaces need not exist (kmock cannot serve
    /api/v1/namespaces); every namespace is usable. `llm_inference_service`,
    `inference_extension`: also serve KServe's LLMInferenceService / the InferencePool (off).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        kserve: bool = True,
        llm_inference_service: bool = False,
        inference_extension: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.kserve = kserve
        self.llm_inference_service = llm_inference_service
        self.inference_extension = inference_extension
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
            emulator.declare(*KSERVE_RUNTIME_RESOURCE)
        if self.llm_inference_service:
            emulator.declare(*LLMISVC_RESOURCE)
        if self.inference_extension:
            emulator.declare(*INFERENCE_POOL_RESOURCE)
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
        from lora_operator.api.crd import build_crd

        client = self.client()
        client.create("apiextensions.k8s.io/v1/customresourcedefinitions", None, build_crd())

    def inspect(self, look: Callable[[LoRAJobEmulator], T], timeout: float = 30.0) -> T:
        """`look` at the store on the emulator's own thread (it is not thread-safe): the scale
        bench counts 1000s of objects this way instead of listing them over HTTP twice a
        second, which cost the emulator more CPU than the operator's own requests."""
        loop, emulator = self._loop, self.emulator
        if loop is None or emulator is None:
            raise RuntimeError("the Kubernetes emulator is not running")

        async def call() -> T:
            return look(emulator)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    def client(self) -> RestClient:
        return RestClient(self.url)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


# ------------------------------------------------------------------------------------- client


ApiError = KubeError  # one error for both clients: HTTP status and the Status object's message


class RestClient:
    """Small synchronous JSON client for tests and benches: the emulator (plain http) or a real
    cluster (`RestClient.from_kubeconfig`, auth handled by the `kubernetes` client).

    The same paths (`resource_path`), errors and get/delete rules as the operator's async `Kube`;
    unlike it, `create` does not swallow a 409 (tests check what the server refuses)."""

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
            raise ApiError(exc.code, status_message(exc.read(), exc.reason)) from None
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
            raise ApiError(int(exc.status), status_message(exc.body, exc.reason)) from None
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

    def delete(
        self, resource: str, namespace: str | None, name: str, uid: str | None = None
    ) -> bool:
        """True if it existed; background propagation, `uid` a precondition (as `Kube.delete`)."""
        try:
            self.request("DELETE", resource_path(resource, namespace, name), delete_options(uid))
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
