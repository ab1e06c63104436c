"""The operator's Kubernetes client: kubernetes_asyncio's ApiClient (the maintained asyncio port
of the official `kubernetes` client), logged in with the credentials kopf logged in with.

Auth, TLS, connection pooling, timeouts and error types are the maintained client's. What is ours
is a small generic layer over it: the operator needs get/list/create/patch/delete of a few kinds as
plain dicts, with the idempotency rules below, and one choke point (`Kube.request`) that tests
replace with an in-memory server and that `api_calls.py` (the RBAC) is checked against.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

REQUEST_TIMEOUT_SECONDS = 60
CONNECTIONS = 32  # per operator process; kopf's watches have their own
CLIENT_READ_BUFSIZE = 2**21  # the client's own: etcd's largest object fits one read buffer
ANY_SUCCESS = {200: "object", 201: "object", 202: "object"}  # returned as parsed JSON


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def resource_path(resource: str, namespace: str | None, name: str | None = None) -> str:
    """'batch/v1/jobs' -> /apis/batch/v1/namespaces/<ns>/jobs[/<name>]."""
    parts = resource.split("/")
    group_version, plural = "/".join(parts[:-1]), parts[-1]
    base = f"/api/{group_version}" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


def _pem_file(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None,
    data: str | bytes | None,
    target: Path,
) -> str | None:
    """A certificate/key as a file name: the client's ssl context loads them only from files.
    kubeconfig `*-data` fields are base64 of the PEM; kopf passes them on as they are."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    pem = raw if raw.startswith(b"-----BEGIN ") else base64.b64decode(raw)
    if not target.parent.exists():
        target.parent.mkdir(mode=0o700)
    target.write_bytes(pem)
    target.chmod(0o600)
    return str(target)


def client_configuration(info: kopf.ConnectionInfo, files: Path) -> Configuration:
    """kopf's login as the client's Configuration. Inline PEM data is written under `files`
    (created only then: the root filesystem may be read-only), which must stay until the
    ApiClient is built. Basic auth wins over a token, as in kopf."""
    config = Configuration(host=info.server.rstrip("/"))
    config.verify_ssl = not info.insecure
    config.ssl_ca_cert = _pem_file(info.ca_path, info.ca_data, files / "ca.crt")
    config.cert_file = _pem_file(info.certificate_path, info.certificate_data, files / "tls.crt")
    config.key_file = _pem_file(info.private_key_path, info.private_key_data, files / "tls.key")
    config.proxy = info.proxy_url
    config.connection_pool_maxsize = CONNECTIONS
    if info.username and info.password:
        config.username, config.password = info.username, info.password
        # The client's own kubeconfig loader sends basic auth this way.
        config.api_key["BearerToken"] = config.get_basic_auth_token()
    elif info.token:
        config.api_key["BearerToken"] = info.token
        config.api_key_prefix["BearerToken"] = info.scheme or "Bearer"
    return config


def status_message(body: str | bytes | None, fallback: str | None = None) -> str:
    """The `message` of the Status object the API server answers errors with (the body itself
    when it is not one). Shared with the devkit's synchronous client."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        message = json.loads(text or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or text or fallback or "")[:2000]


def delete_options(uid: str | None = None) -> dict[str, Any]:
    """DeleteOptions: background propagation (a Job's Pods go too); with `uid`, only that
    incarnation of the name is deleted (else 409), so a stale read never deletes a newer object."""
    options: dict[str, Any] = {"propagationPolicy": "Background"}
    if uid is not None:
        options["preconditions"] = {"uid": uid}
    return options


def _trust_env(api: ApiClient, trust: bool) -> None:
    """Proxies and ~/.netrc from the environment only when kopf's login says so (kopf's
    `networking.trust_env`, off by default), so the operator's calls and kopf's take the same
    route. The client always trusts the environment (aiohttp then looks both up in a worker
    thread on every request). Same connector (pool, TLS), another session around it."""
    rest = api.rest_client
    session: aiohttp.ClientSession = rest.pool_manager
    if session.trust_env == trust or session.connector is None:
        return
    rest.pool_manager = aiohttp.ClientSession(
        connector=session.connector, trust_env=trust, read_bufsize=CLIENT_READ_BUFSIZE
    )
    session.detach()


class Kube:
    """One ApiClient (one aiohttp connection pool) per operator process, created lazily: the
    client needs the running event loop, and kopf's login handler runs outside it."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.info = info
        self._api: ApiClient | None = None

    def api(self) -> ApiClient:
        if self._api is None:
            files = Path(tempfile.gettempdir()) / f"lora-operator-tls-{uuid.uuid4().hex}"
            try:
                self._api = ApiClient(client_configuration(self.info, files))
            finally:
                shutil.rmtree(files, ignore_errors=True)
            self._api.user_agent = "lora-operator"
            _trust_env(self._api, self.info.trust_env)
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Every API call goes through here. Errors are KubeError(HTTP status, Status message);
        connection failures stay the client's (aiohttp's OSError / asyncio.TimeoutError)."""
        try:
            return await self.api().call_api(
                path,
                method,
                query_params=list((params or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                response_types_map=ANY_SUCCESS,
                _return_http_data_only=True,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), status_message(exc.body, exc.reason)) from None

    async def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.request(
                "GET", resource_path(resource, namespace, name)
            )
            return obj
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, resource: str, namespace: str | None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        params = {"labelSelector": selector} if selector else None
        result = await self.request("GET", resource_path(resource, namespace), params=params)
        items: list[dict[str, Any]] = result.get("items", []) if result else []
        # Filter again: a server or proxy that drops the selector must not widen what we act on.
        return [
            item
            for item in items
            if all(
                (item.get("metadata", {}).get("labels") or {}).get(k) == v
                for k, v in (labels or {}).items()
            )
        ]

    async def create(
        self, resource: str, namespace: str | None, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """(object, created). An existing object of that name is returned as is (idempotent
        after an operator restart)."""
        try:
            obj = await self.request("POST", resource_path(resource, namespace), body)
            return obj, True
        except KubeError as exc:
            if exc.status != 409:
                raise
        existing = await self.get(resource, namespace, body["metadata"]["name"])
        return existing or body, False

    async def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        path = resource_path(resource, namespace, name) + (f"/{subresource}" if subresource else "")
        obj: dict[str, Any] = await self.request(
            "PATCH", path, body, content_type="application/merge-patch+json"
        )
        return obj

    async def delete(
        self, resource: str, namespace: str | None, name: str, uid: str | None = None
    ) -> bool:
        """True if it existed. See `delete_options`: a `uid` that no longer matches is
        KubeError 409."""
        try:
            path = resource_path(resource, namespace, name)
            await self.request("DELETE", path, delete_options(uid))
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise


class KubeHolder:
    """Set by the login handler; read by the reconciler."""

    kube: Kube | None = None

    @classmethod
    def set(cls, info: kopf.ConnectionInfo) -> None:
        """kopf logs in again after a 401; the same credentials keep the open connection pool."""
        if cls.kube is None or cls.kube.info != info:
            cls.kube = Kube(info)

    @classmethod
    def get(cls) -> Kube:
        if cls.kube is None:
            raise RuntimeError("not logged in to the cluster yet")
        return cls.kube
