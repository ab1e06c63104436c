"""A KServe stand-in (development only, never in an image): runs the shared servers of an API
server locally, so that the emulated cluster serves adapters the way a cluster with KServe and
vLLM would, and the operator's Serving condition can become True.

For each InferenceService whose `predictor.model.runtime` names a ServingRuntime (the operator's
shared server, docs/serving.md): the runtime's `adapter-sync` container runs as a local process
(its env and volumes mapped by the executor's `PodTranslator`, so a ConfigMap volume is a local
folder rewritten when the ConfigMap changes, as kubelet does, eventually consistent), and its
`kserve-container` is the vLLM stand-in (`vllm_standin.VllmStandIn`) serving the `--model_name=`
model from the adapters folder. Then the InferenceService's status is written as KServe writes
it (`url`, `address.url`, `PredictorReady` and `Ready` True). A deleted InferenceService: its
processes are stopped. A changed runtime or predictor: the server restarts (KServe rolls the pod).

Simplifications (documented, not hidden): one replica; a dedicated InferenceService (no runtime,
`storageUri`s of its own) is left alone, so it stays not ready; a sync container that exits is
restarted at the next pass (restartPolicy Always); polling rather than watching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_contract.timestamps import now_iso

from .emulator import RestClient
from .executor import PodSpecError, PodTranslator
from .poller import Poller
from .vllm_standin import VllmStandIn

log = logging.getLogger(__name__)

INFERENCE_SERVICES = "serving.kserve.io/v1beta1/inferenceservices"
SERVING_RUNTIMES = "serving.kserve.io/v1alpha1/servingruntimes"
SYNC_CONTAINER = "adapter-sync"
VLLM_CONTAINER = "kserve-container"
RESOLVER_DIR_ENV = "VLLM_LORA_RESOLVER_CACHE_DIR"
MODEL_NAME_ARG = "--model_name="


def served_model_name(container: dict[str, Any]) -> str:
    """The `--model_name=` vLLM serves the base model under (the resolver's condition)."""
    for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
        if str(arg).startswith(MODEL_NAME_ARG):
            return str(arg)[len(MODEL_NAME_ARG) :]
    raise PodSpecError(f"container {VLLM_CONTAINER!r} has no {MODEL_NAME_ARG}NAME argument")


def resolver_dir(container: dict[str, Any], mounts: dict[str, Path]) -> Path:
    """The local folder vLLM's filesystem resolver reads (its env, mapped through the mounts)."""
    for item in container.get("env") or []:
        if item.get("name") == RESOLVER_DIR_ENV and "value" in item:
            return Path(PodTranslator.map_value(str(item["value"]), mounts))
    raise PodSpecError(f"container {VLLM_CONTAINER!r} sets no {RESOLVER_DIR_ENV}")


def link_mount_parents(argv: list[str], mounts: dict[str, Path], root: Path) -> list[str]:
    """An argument naming a folder above mount points (`--credentials /etc/lora-credentials`
    over one Secret volume per name) -> a local folder of links to those volumes, as the
    container's filesystem shows them."""
    mapped: list[str] = []
    for arg in argv:
        flag, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
        parent = value.rstrip("/")
        below = {p: local for p, local in mounts.items() if p.startswith(parent + "/")}
        if not value.startswith("/") or not below:
            mapped.append(arg)
            continue
        for path, local in below.items():
            link = root / path.strip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(local, target_is_directory=True)
        mapped.append(f"{flag}{eq}{root / parent.strip('/')}")
    return mapped


def runtime_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The predictor pod KServe would run: the runtime's containers and volumes, the
    InferenceService's namespace and ServiceAccount."""
    meta = isvc["metadata"]
    spec = runtime.get("spec") or {}
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return {
        "metadata": {"name": f"{meta['name']}-predictor", "namespace": meta["namespace"]},
        "spec": {
            "containers": spec.get("containers") or [],
            "volumes": spec.get("volumes") or [],
            "serviceAccountName": predictor.get("serviceAccountName", "default"),
        },
    }


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def ready_status(url: str, generation: Any) -> dict[str, Any]:
    """KServe's InferenceService status once the predictor serves (v1beta1 shape)."""
    now = now_iso()
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("IngressReady", "PredictorReady", "Ready")
    ]
    return {
        "url": url,
        "address": {"url": url},
        "components": {"predictor": {"url": url}},
        "conditions": conditions,
        "modelStatus": {
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            "transitionStatus": "UpToDate",
        },
        "observedGeneration": generation,
    }


def is_ready(status: dict[str, Any], url: str) -> bool:
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("url") == url and conditions.get("Ready") == "True"


@dataclass
class RunningServer:
    """One predictor pod: the syncer process and the vLLM stand-in beside it."""

    namespace: str
    name: str
    key: str  # the runtime's and predictor's specs: a change restarts the server
    pod: dict[str, Any]
    pod_dir: Path
    log_path: Path
    sync_argv: list[str]
    sync_env: dict[str, str]
    vllm: VllmStandIn
    adapters: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start_sync(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.sync_argv,
                env=self.sync_env,
                cwd=self.pod_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )

    def stop(self, grace_seconds: float = 5.0) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.vllm.__exit__()


class KServeStandIn(Poller):
    """Polls the API server for InferenceServices on a ServingRuntime and serves them locally.

    `with KServeStandIn(client, workdir, namespace=ns, extra_env=s3_env) as kserve:` starts a
    background thread; `reconcile_once()` does a single pass (tests call it directly).
    """

    thread_name = "kserve-standin"

    def __init__(
        self,
        client: RestClient,
        workdir: str | Path,
        *,
        namespace: str | None = None,
        poll_seconds: float = 0.3,
        sync_interval: float = 0.5,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.sync_interval = sync_interval
        self.translator = PodTranslator(client, self.workdir / "pvc", set(), extra_env)
        self.servers: dict[str, RunningServer] = {}  # by InferenceService uid

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def release(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def url(self, namespace: str, name: str) -> str | None:
        """Where the named InferenceService's stand-in listens (None: not served)."""
        with self._lock:
            for server in self.servers.values():
                if (server.namespace, server.name) == (namespace, name):
                    return server.vllm.url
        return None

    # -- reconciliation

    def reconcile_once(self) -> None:
        with self._lock:
            seen: set[str] = set()
            for isvc in self.client.list(INFERENCE_SERVICES, self.namespace):
                meta = isvc["metadata"]
                runtime_name = (
                    ((isvc.get("spec") or {}).get("predictor") or {})
                    .get("model", {})
                    .get("runtime")
                )
                if not runtime_name or meta.get("deletionTimestamp"):
                    continue
                runtime = self.client.get(SERVING_RUNTIMES, meta["namespace"], runtime_name)
                if runtime is None:
                    continue  # KServe waits for the runtime too
                uid = str(meta.get("uid") or meta["name"])
                seen.add(uid)
                self._serve(uid, isvc, runtime)
            for uid in set(self.servers) - seen:
                server = self.servers.pop(uid)
                log.info("InferenceService %s/%s gone: stopped", server.namespace, server.name)
                server.stop()

    def _serve(self, uid: str, isvc: dict[str, Any], runtime: dict[str, Any]) -> None:
        meta = isvc["metadata"]
        key = digest(runtime.get("spec"), (isvc.get("spec") or {}).get("predictor"))
        server = self.servers.get(uid)
        if server is not None and server.key != key:
            log.info("InferenceService %s/%s changed: restarting", meta["namespace"], meta["name"])
            server.stop()
            del self.servers[uid]
            server = None
        if server is None:
            try:
                server = self._start(isvc, runtime, key)
            except PodSpecError as exc:
                message = f"{meta['namespace']}/{meta['name']}: {exc}"
                if message not in self.errors:
                    self.errors.append(message)
                    log.warning("cannot serve InferenceService %s", message)
                return
            self.servers[uid] = server
        self.translator.refresh_volumes(server.pod, server.pod_dir)
        if server.process is not None and server.process.poll() is not None:
            server.restarts += 1
            log.warning("%s: %s exited, restarted", server.name, SYNC_CONTAINER)
            server.start_sync()
        status = isvc.get("status") or {}
        if not is_ready(status, server.vllm.url) or status.get("observedGeneration") != meta.get(
            "generation"
        ):
            self.client.patch(
                INFERENCE_SERVICES,
                meta["namespace"],
                meta["name"],
                {"status": ready_status(server.vllm.url, meta.get("generation"))},
                status=True,
            )

    def _start(self, isvc: dict[str, Any], runtime: dict[str, Any], key: str) -> RunningServer:
        meta = isvc["metadata"]
        pod = runtime_pod(isvc, runtime)
        pod_dir = self.workdir / "pods" / meta["namespace"] / meta["name"]
        launch = self.translator.translate(pod, pod_dir, None, None, SYNC_CONTAINER)
        sync_mounts = self.translator.mounts(pod, SYNC_CONTAINER, pod_dir)
        argv = link_mount_parents(launch.argv, sync_mounts, pod_dir / "rootfs")
        argv.append(f"--interval={self.sync_interval}")  # the last one wins
        vllm_container = self.translator.container(pod, VLLM_CONTAINER)
        adapters = resolver_dir(
            vllm_container, self.translator.mounts(pod, VLLM_CONTAINER, pod_dir)
        )
        vllm = VllmStandIn(served_model_name(vllm_container), adapters).__enter__()
        log_path = self.log_dir / f"{meta['namespace']}_{meta['name']}-{SYNC_CONTAINER}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        server = RunningServer(
            meta["namespace"],
            meta["name"],
            key,
            pod,
            pod_dir,
            log_path,
            argv,
            launch.env,
            vllm,
            adapters,
        )
        server.start_sync()
        log.info("serving %s/%s at %s: %s", meta["namespace"], meta["name"], vllm.url, argv)
        return server
