"""A stand-in kubelet + Job controller: runs the `batch/v1` Jobs of an API server locally.

Why: the emulated cluster stores Jobs but nothing runs them. This executor does what a cluster
would for the Jobs it finds, generically (it runs whatever the pod template says): it creates Pod
objects, starts each pod's container command as a local process group with the pod's environment
(`secretKeyRef`, `configMapKeyRef`, downward API, `JOB_COMPLETION_INDEX`), maps volumes to local
directories (ConfigMap/Secret volumes materialised, PVCs under one root, `/dev/shm` ignored),
points rendezvous host names at loopback, and writes Pod phases, termination messages and Job
status (`active`, `succeeded`, `failed`, `completedIndexes`, Complete/Failed/Suspended conditions)
back, honouring `suspend`, `parallelism`, `completions`, `backoffLimit`, `backoffLimitPerIndex`,
`maxFailedIndexes` and `podFailurePolicy` rules (exit codes, and pod conditions: `preempt_pod`
sets DisruptionTarget, SIGTERMs the pod and SIGKILLs it after its terminationGracePeriodSeconds).

Simplifications (documented, not hidden): one container per pod (init and sidecar containers are
not run), no resource enforcement, one process group per pod, polling rather than watching. The
securityContext is not enforced (processes run as the current user and may write anywhere it
can), but a pod that sets HOME, TMPDIR or cache variables to its emptyDir mounts gets them mapped
to its own local directories, as for any env value under a mount path.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_contract.timestamps import now_iso

from .emulator import ApiError, RestClient
from .job_policy import policy_action
from .poller import Poller

log = logging.getLogger(__name__)

JOBS = "batch/v1/jobs"
PODS = "v1/pods"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
CLUSTER_HOST = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.svc(\.cluster\.local)?\.?$")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
TERMINATION_ENV = "LORAJOB_TERMINATION_LOG"
POD_MARKER_ENV = "LORAJOB_EXECUTOR_POD"  # inherited by every process a pod starts
MAX_MESSAGE = 4096


class PodSpecError(ValueError):
    """The pod template cannot be run locally (the pod fails with this message)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def format_indexes(indexes: set[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5', the Job status format."""
    parts: list[str] = []
    for index in sorted(indexes):
        if parts and parts[-1].split("-")[-1] == str(index - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ",".join(parts)


def pod_processes(marker: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids whose environment carries a pod's marker: all of the pod's processes, including
    those in a session of their own (torchrun's workers) or reparented after their parent
    died. What a container's cgroup gives a kubelet, found through /proc (Linux)."""
    needle = f"{POD_MARKER_ENV}={marker}".encode()
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def exit_code_of(returncode: int) -> int:
    """A process killed by signal N reports -N; a container runtime reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


# --------------------------------------------------------------------------- pod → process


@dataclass
class LaunchSpec:
    """Everything needed to start one pod's container as a local process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_log: Path


class PodTranslator:
    """Turns a pod template into a local command line: env, volumes and host names."""

    def __init__(
        self,
        client: RestClient,
        pvc_root: Path,
        loopback_hosts: set[str],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.pvc_root = pvc_root
        self.loopback_hosts = loopback_hosts
        self.extra_env = extra_env or {}

    def translate(
        self,
        pod: dict[str, Any],
        pod_dir: Path,
        index: int | None,
        rendezvous_port: int | None,
        container_name: str | None = None,
    ) -> LaunchSpec:
        """The first container (a trainer pod has one), or the one named (a sidecar)."""
        spec = pod["spec"]
        container = self.container(pod, container_name)
        namespace = pod["metadata"]["namespace"]
        mounts = self._mounts(spec, container, pod_dir, namespace)
        env = self._env(pod, container, namespace, index)
        env = {key: self.map_value(value, mounts) for key, value in env.items()}
        if rendezvous_port is not None and "MASTER_PORT" in env:
            env["MASTER_PORT"] = str(rendezvous_port)
        termination_log = pod_dir / "termination-log"
        env[TERMINATION_ENV] = str(termination_log)
        command = [*(container.get("command") or []), *(container.get("args") or [])]
        if not container.get("command"):
            raise PodSpecError(
                f"container {container.get('name')!r} has no command: the local executor cannot "
                "run an image's entrypoint"
            )
        argv = [self.map_value(_expand(arg, env), mounts) for arg in command]
        if Path(argv[0]).name in ("python", "python3"):
            argv[0] = sys.executable
        working_dir = container.get("workingDir")
        cwd = Path(self.map_value(working_dir, mounts)) if working_dir else pod_dir
        cwd.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        base.update(self.extra_env)  # the node's environment: below the pod's own variables
        tmp = mounts.get("/tmp") or pod_dir / "tmp"  # every container has its own /tmp
        tmp.mkdir(parents=True, exist_ok=True)
        base["TMPDIR"] = str(tmp)
        base.setdefault("HF_HUB_OFFLINE", "1")
        base["PYTHONUNBUFFERED"] = "1"
        base.setdefault("OMP_NUM_THREADS", _cpu_threads(container))
        return LaunchSpec(argv, {**base, **env}, cwd, termination_log)

    @staticmethod
    def container(pod: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        containers: list[dict[str, Any]] = pod["spec"].get("containers") or []
        if not containers:
            raise PodSpecError("pod template has no containers")
        for container in containers:
            if name is None or container.get("name") == name:
                return container
        raise PodSpecError(f"the pod has no container named {name!r}")

    def mounts(self, pod: dict[str, Any], container_name: str, pod_dir: Path) -> dict[str, Path]:
        """A container's mount paths -> local directories (volumes materialised)."""
        container = self.container(pod, container_name)
        return self._mounts(pod["spec"], container, pod_dir, pod["metadata"]["namespace"])

    def refresh_volumes(self, pod: dict[str, Any], pod_dir: Path) -> None:
        """Rewrite the pod's ConfigMap and Secret volumes from the API, as kubelet does every
        sync period (eventually consistent); a source that is gone keeps its last content."""
        namespace = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or []:
            if "configMap" in volume or "secret" in volume:
                with contextlib.suppress(PodSpecError):
                    self._volume_dir(volume, pod_dir, namespace)

    # -- environment

    def _env(
        self, pod: dict[str, Any], container: dict[str, Any], namespace: str, index: int | None
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret(namespace, source["secretRef"])
            elif "configMapRef" in source:
                data = self._config_map(namespace, source["configMapRef"])
            else:
                continue
            env.update({prefix + key: value for key, value in data.items()})
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" in item:
                value = self._value_from(pod, namespace, name, item["valueFrom"])
                if value is not None:
                    env[name] = value
            else:
                env[name] = _expand(str(item.get("value", "")), env)
        for name, value in env.items():
            in_cluster = value.rstrip(".") in self.loopback_hosts or CLUSTER_HOST.match(value)
            if name == "MASTER_ADDR" or in_cluster:
                env[name] = "127.0.0.1"
        return env

    def _value_from(
        self, pod: dict[str, Any], namespace: str, name: str, source: dict[str, Any]
    ) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._key(self._secret(namespace, ref), ref, f"env {name}", "Secret")
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._key(self._config_map(namespace, ref), ref, f"env {name}", "ConfigMap")
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return "1"
        raise PodSpecError(f"env {name}: unsupported valueFrom {sorted(source)}")

    @staticmethod
    def _key(data: dict[str, str], ref: dict[str, Any], what: str, kind: str) -> str | None:
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise PodSpecError(f"{what}: key {ref['key']!r} not found in {kind} {ref.get('name')!r}")

    def _secret(self, namespace: str, ref: dict[str, Any]) -> dict[str, str]:
        obj = self.client.get("v1/secrets", namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            raise PodSpecError(f'secret "{ref["name"]}" not found in namespace {namespace}')
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {**data, **(obj.get("stringData") or {})}

    def _config_map(self, namespace: str, ref: dict[str, Any]) -> dict[str, str]:
        obj = self.client.get("v1/configmaps", namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            raise PodSpecError(f'configmap "{ref["name"]}" not found in namespace {namespace}')
        return dict(obj.get("data") or {})

    # -- volumes

    def _mounts(
        self, spec: dict[str, Any], container: dict[str, Any], pod_dir: Path, namespace: str
    ) -> dict[str, Path]:
        """Container mount path -> local directory (longest paths first when mapping)."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"].rstrip("/")
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodSpecError(f"volumeMount {mount['name']!r} names no volume of the pod")
            if path == "/dev/shm":
                continue
            local = self._volume_dir(volume, pod_dir, namespace)
            if local is None:
                continue
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if path.endswith("/" + claim):  # /mnt/pvc/<claim>: also map the root
                    mounts.setdefault(path[: -len(claim) - 1], self.pvc_root)
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mounts[path] = local
        return dict(sorted(mounts.items(), key=lambda kv: -len(kv[0])))

    def _volume_dir(self, volume: dict[str, Any], pod_dir: Path, namespace: str) -> Path | None:
        target: Path = pod_dir / "volumes" / str(volume["name"])
        if "persistentVolumeClaim" in volume:
            local: Path = self.pvc_root / str(volume["persistentVolumeClaim"]["claimName"])
            local.mkdir(parents=True, exist_ok=True)
            return local
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            return target
        if "configMap" in volume:
            data = self._config_map(namespace, volume["configMap"])
            return _materialise(target, data, volume["configMap"].get("items"))
        if "secret" in volume:
            ref = {"name": volume["secret"]["secretName"], **volume["secret"]}
            return _materialise(target, self._secret(namespace, ref), volume["secret"].get("items"))
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
        raise PodSpecError(f"volume {volume['name']!r}: unsupported type {sorted(volume)}")

    @staticmethod
    def map_value(value: str, mounts: dict[str, Path]) -> str:
        """A container path (in an env value or argument) -> its local path."""
        for path, local in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(local) + value[len(path) :]
        return value


def _materialise(target: Path, data: dict[str, str], items: list[dict[str, str]] | None) -> Path:
    """The volume's files equal to its source: each replaced whole (a reader never sees half a
    file), keys no longer in the source removed, as kubelet's atomic writer leaves them."""
    target.mkdir(parents=True, exist_ok=True)
    selected = {i["key"]: i.get("path", i["key"]) for i in items} if items else {k: k for k in data}
    kept: set[Path] = set()
    for key, rel in selected.items():
        if key not in data:
            raise PodSpecError(f"volume item {key!r} is not in its ConfigMap/Secret")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        kept.add(path)
        if path.is_file() and path.read_text() == data[key]:
            continue
        staging = path.with_name(f".{path.name}.writing")
        staging.write_text(data[key])
        os.replace(staging, path)
    for stale in [p for p in target.rglob("*") if p.is_file() and p not in kept]:
        stale.unlink()
    return target


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` references to variables defined earlier."""
    return VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": "localhost",
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path not in simple:
        raise PodSpecError(f"fieldRef {path!r} is not supported by the local executor")
    return str(simple[path])


def _cpu_threads(container: dict[str, Any]) -> str:
    resources = container.get("resources") or {}
    cpu = str((resources.get("limits") or resources.get("requests") or {}).get("cpu", "1"))
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu or 1)
    return str(max(1, int(cores)))


# ------------------------------------------------------------------------------ job control


@dataclass
class RunningPod:
    name: str
    index: int
    process: subprocess.Popen[bytes] | None
    termination_log: Path
    log_path: Path
    started_at: str = field(default_factory=now_iso)
    killed: bool = False
    marker: str = ""
    conditions: list[dict[str, Any]] = field(default_factory=list)  # e.g. DisruptionTarget
    grace_seconds: float = 30.0  # the pod's terminationGracePeriodSeconds


@dataclass
class JobState:
    """What the Job controller remembers about one Job (keyed by uid)."""

    namespace: str
    name: str
    uid: str
    rendezvous_port: int = field(default_factory=free_port)
    running: dict[int, RunningPod] = field(default_factory=dict)
    succeeded: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)
    failed_pods: int = 0
    start_time: str | None = None
    finished: str | None = None  # "Complete" or "Failed"
    reason: str = ""
    message: str = ""
    last_status: dict[str, Any] = field(default_factory=dict)


class LocalExecutor(Poller):
    """Polls the API server for Jobs and runs their pods as local processes.

    `with LocalExecutor(client, workdir, pvc_root=...) as executor:` starts a background thread;
    `reconcile_once()` does a single pass (tests call it directly).
    """

    thread_name = "local-executor"

    def __init__(
        self,
        client: RestClient,
        workdir: str | Path,
        *,
        pvc_root: str | Path | None = None,
        namespace: str | None = None,
        poll_seconds: float = 0.3,
        grace_seconds: float = 5.0,
        loopback_hosts: set[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.workdir = Path(workdir)
        self.pvc_root = Path(pvc_root) if pvc_root else self.workdir / "pvc"
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.translator = PodTranslator(client, self.pvc_root, loopback_hosts or set(), extra_env)
        self.jobs: dict[str, JobState] = {}
        self._missing_accounts: set[tuple[str, str, str]] = set()

    @property
    def log_dir(self) -> Path:
        """Where each pod's stdout/stderr goes (`<namespace>_<pod>.log`)."""
        return self.workdir / "logs"

    # -- lifecycle

    def release(self) -> None:
        for state in self.jobs.values():
            for pod in state.running.values():
                self._terminate(pod)

    # -- public helpers for demos and tests

    def kill_pod(self, namespace: str, job: str, index: int, sig: int = signal.SIGKILL) -> bool:
        """Signal every process of a running pod, as a node failure or OOM kill would."""
        with self._lock:
            for state in self.jobs.values():
                if (state.namespace, state.name) != (namespace, job) or index not in state.running:
                    continue
                pod = state.running[index]
                if pod.process is not None and pod.process.poll() is None:
                    self._signal_pod(pod, sig)
                    return True
        return False

    def preempt_pod(
        self, namespace: str, job: str, index: int, reason: str = "PreemptionByScheduler"
    ) -> bool:
        """Preempt a running pod as the scheduler, Kueue or a node drain does: condition
        DisruptionTarget on the pod, SIGTERM to its main process group (the container's main
        process; torchrun's workers hear of it from the launcher), SIGKILL to every process of
        the pod once its terminationGracePeriodSeconds are over. The exit then counts per the
        Job's podFailurePolicy, conditions included."""
        with self._lock:
            pod = self._running_pod(namespace, job, index)
            if pod is None or pod.process is None or pod.process.poll() is not None:
                return False
            pod.conditions = [
                {"type": "Ready", "status": "True"},
                _condition("DisruptionTarget", reason, "preempted (local executor)"),
            ]
            self._patch_pod(namespace, pod.name, {"conditions": pod.conditions})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, signal.SIGTERM)
            timer = threading.Timer(pod.grace_seconds, self._kill_after_grace, (pod,))
            timer.daemon = True
            timer.start()
            log.info("preempted pod %s/%s (grace %.0fs)", namespace, pod.name, pod.grace_seconds)
            return True

    def _kill_after_grace(self, pod: RunningPod) -> None:
        if pod.process is not None and pod.process.poll() is None:
            log.info("pod %s: grace period over, SIGKILL", pod.name)
            self._signal_pod(pod, signal.SIGKILL)

    def _running_pod(self, namespace: str, job: str, index: int) -> RunningPod | None:
        for state in self.jobs.values():
            if (state.namespace, state.name) == (namespace, job) and index in state.running:
                return state.running[index]
        return None

    def log_path(self, namespace: str, job: str, index: int) -> Path | None:
        with self._lock:
            for state in self.jobs.values():
                if (state.namespace, state.name) == (namespace, job) and index in state.running:
                    return state.running[index].log_path
        return None

    # -- reconciliation

    def reconcile_once(self) -> None:
        with self._lock:
            jobs = self.client.list(JOBS, self.namespace)
            seen = set()
            for job in jobs:
                uid = job["metadata"].get("uid") or job["metadata"]["name"]
                seen.add(uid)
                state = self.jobs.get(uid)
                if state is None:
                    meta = job["metadata"]
                    state = JobState(meta["namespace"], meta["name"], uid)
                    self.jobs[uid] = state
                self._reconcile_job(job, state)
            for uid in set(self.jobs) - seen:  # deleted Jobs: stop and remove their pods
                state = self.jobs.pop(uid)
                for pod in state.running.values():
                    self._terminate(pod)
                    self.client.delete(PODS, state.namespace, pod.name)

    def _reconcile_job(self, job: dict[str, Any], state: JobState) -> None:
        spec = job["spec"]
        if state.finished:
            return
        if spec.get("suspend"):
            self._suspend(state)
            self._write_status(job, state, suspended=True)
            return
        state.start_time = state.start_time or now_iso()
        self._collect_exits(job, state)
        if not state.finished:
            self._start_pods(job, state)
        self._write_status(job, state, suspended=False)

    def _suspend(self, state: JobState) -> None:
        for index, pod in list(state.running.items()):
            self._terminate(pod)
            self.client.delete(PODS, state.namespace, pod.name)
            del state.running[index]

    def _start_pods(self, job: dict[str, Any], state: JobState) -> None:
        spec = job["spec"]
        completions = int(spec.get("completions", 1))
        parallelism = int(spec.get("parallelism", 1))
        indexed = spec.get("completionMode") == "Indexed"
        if not self._service_account_exists(job):
            return  # the API server refuses such pods; the Job controller keeps trying
        for index in range(completions):
            if len(state.running) >= parallelism:
                return
            if index in state.running or index in state.succeeded or index in state.failed_indexes:
                continue
            self._start_pod(job, state, index, indexed)
            if state.finished:
                return

    def _service_account_exists(self, job: dict[str, Any]) -> bool:
        """A pod naming a ServiceAccount that does not exist is refused at creation (the
        ServiceAccount admission plugin), so no pod starts until it does."""
        name = job["spec"]["template"].get("spec", {}).get("serviceAccountName")
        if not name or name == "default":
            return True
        namespace = job["metadata"]["namespace"]
        if self.client.get("v1/serviceaccounts", namespace, name) is not None:
            return True
        missing = (namespace, job["metadata"]["name"], name)
        if missing not in self._missing_accounts:  # say it once, as an Event would
            self._missing_accounts.add(missing)
            log.warning("Job %s/%s: serviceaccount %r not found: no pods", *missing)
        return False

    def _start_pod(self, job: dict[str, Any], state: JobState, index: int, indexed: bool) -> None:
        pod = self._pod_object(job, index, indexed)
        created = self.client.create(PODS, state.namespace, pod) or pod
        name = created["metadata"]["name"]
        pod_dir = self.workdir / "pods" / state.namespace / name
        log_path = self.log_dir / f"{state.namespace}_{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            launch = self.translator.translate(
                created, pod_dir, index if indexed else None, state.rendezvous_port
            )
        except (PodSpecError, ApiError) as exc:
            # A bad template is a pod that fails to start (CreateContainerConfigError).
            running = RunningPod(name, index, None, pod_dir / "termination-log", log_path)
            state.running[index] = running
            self._finish_pod(job, state, running, exit_code=128, message=str(exc))
            return
        marker = uuid.uuid4().hex
        launch.env[POD_MARKER_ENV] = marker
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole
            )
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        state.running[index] = RunningPod(
            name,
            index,
            process,
            launch.termination_log,
            log_path,
            marker=marker,
            grace_seconds=float(grace),
        )
        log.info("started pod %s/%s (pid %d): %s", state.namespace, name, process.pid, launch.argv)
        container = pod["spec"]["containers"][0].get("name", "main")
        self._patch_pod(
            state.namespace,
            name,
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "hostIP": "127.0.0.1",
                "startTime": now_iso(),
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": container,
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now_iso()}},
                    }
                ],
            },
        )

    def _pod_object(self, job: dict[str, Any], index: int, indexed: bool) -> dict[str, Any]:
        meta = job["metadata"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {})}
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]})
        labels["controller-uid"] = labels["batch.kubernetes.io/controller-uid"] = meta.get(
            "uid", ""
        )
        annotations = {**(template.get("metadata", {}).get("annotations") or {})}
        if indexed:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
        prefix = f"{meta['name']}-{index}-" if indexed else f"{meta['name']}-"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": prefix + uuid.uuid4().hex[:5],
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta.get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template.get("spec", {}), "nodeName": "localhost"},
            "status": {"phase": "Pending"},
        }

    def _collect_exits(self, job: dict[str, Any], state: JobState) -> None:
        for pod in list(state.running.values()):
            process = pod.process
            assert process is not None
            returncode = process.poll()
            if returncode is None and self.client.get(PODS, state.namespace, pod.name) is None:
                self._terminate(pod)  # someone deleted the pod: its containers are killed
                returncode = process.poll() if process.poll() is not None else -signal.SIGKILL
            if returncode is None:
                continue
            self._signal_pod(pod, signal.SIGKILL)  # the container is gone: so are its processes
            code = exit_code_of(returncode)
            self._finish_pod(job, state, pod, code, self._termination_message(pod, code))
            if state.finished:
                return

    def _termination_message(self, pod: RunningPod, code: int) -> str:
        """The container's termination log, else (FallbackToLogsOnError) the tail of its log."""
        if pod.termination_log.exists():
            text = pod.termination_log.read_text(errors="replace").strip()
            if text:
                return text[:MAX_MESSAGE]
        if code == 0 or not pod.log_path.exists():
            return ""
        lines = pod.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(lines[-20:])[-MAX_MESSAGE:]

    def _finish_pod(
        self, job: dict[str, Any], state: JobState, pod: RunningPod, exit_code: int, message: str
    ) -> None:
        del state.running[pod.index]
        phase = "Succeeded" if exit_code == 0 else "Failed"
        reason = "Completed" if exit_code == 0 else "Error"
        container = job["spec"]["template"]["spec"]["containers"][0].get("name", "main")
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "startedAt": pod.started_at,
            "finishedAt": now_iso(),
        }
        self._patch_pod(
            state.namespace,
            pod.name,
            {
                "phase": phase,
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    *[c for c in pod.conditions if c["type"] != "Ready"],
                ],
                "containerStatuses": [
                    {
                        "name": container,
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            },
        )
        log.info("pod %s/%s exited with %d", state.namespace, pod.name, exit_code)
        if exit_code == 0:
            state.succeeded.add(pod.index)
            if len(state.succeeded) >= int(job["spec"].get("completions", 1)):
                self._finish_job(state, "Complete", "Completed", "")
            return
        self._count_failure(job, state, pod, exit_code, message)

    def _count_failure(
        self, job: dict[str, Any], state: JobState, pod: RunningPod, exit_code: int, message: str
    ) -> None:
        spec = job["spec"]
        disruptions = [c["type"] for c in pod.conditions if c.get("status") == "True"]
        action = policy_action(spec.get("podFailurePolicy"), exit_code, disruptions)
        if action == "Ignore":
            return
        state.failed_pods += 1
        if action == "FailJob":
            detail = f"pod {pod.name} failed with exit code {exit_code}: {message}".strip()
            self._finish_job(state, "Failed", "PodFailurePolicy", detail[:MAX_MESSAGE])
            return
        state.failures[pod.index] = state.failures.get(pod.index, 0) + 1
        per_index = spec.get("backoffLimitPerIndex")
        if action == "FailIndex" or (
            per_index is not None and state.failures[pod.index] > int(per_index)
        ):
            state.failed_indexes.add(pod.index)
            max_failed = spec.get("maxFailedIndexes")
            if max_failed is not None and len(state.failed_indexes) > int(max_failed):
                self._finish_job(state, "Failed", "MaxFailedIndexesExceeded", message)
            elif not state.running:
                self._finish_job(state, "Failed", "FailedIndexes", message)
            return
        if per_index is None and state.failed_pods > int(spec.get("backoffLimit", 6)):
            self._finish_job(state, "Failed", "BackoffLimitExceeded", message)

    def _finish_job(self, state: JobState, result: str, reason: str, message: str) -> None:
        state.finished, state.reason, state.message = result, reason, message
        for pod in list(state.running.values()):
            self._terminate(pod)
            self._patch_pod(state.namespace, pod.name, {"phase": "Failed"})
        state.running.clear()

    def _write_status(self, job: dict[str, Any], state: JobState, suspended: bool) -> None:
        status: dict[str, Any] = {
            "active": len(state.running),
            "ready": len(state.running),
            "succeeded": len(state.succeeded),
            "failed": state.failed_pods,
            "startTime": state.start_time,
        }
        if job["spec"].get("completionMode") == "Indexed":
            status["completedIndexes"] = format_indexes(state.succeeded)
            if job["spec"].get("backoffLimitPerIndex") is not None:
                status["failedIndexes"] = format_indexes(state.failed_indexes)
        conditions: list[dict[str, Any]] = []
        if suspended:
            conditions.append(_condition("Suspended", "JobSuspended", "Job suspended"))
        if state.finished:
            if state.finished == "Failed":
                conditions.append(_condition("FailureTarget", state.reason, state.message))
            conditions.append(_condition(state.finished, state.reason, state.message))
        comparable = {**status, "conditions": [c["type"] for c in conditions]}
        if comparable == state.last_status:
            return
        status["conditions"] = conditions
        if state.finished == "Complete":
            status["completionTime"] = now_iso()
        self.client.patch(JOBS, state.namespace, state.name, {"status": status}, status=True)
        state.last_status = comparable

    def _patch_pod(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.client.patch(PODS, namespace, name, {"status": status}, status=True)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def _terminate(self, pod: RunningPod) -> None:
        """SIGTERM all of the pod's processes, SIGKILL what is left after the grace period."""
        process = pod.process
        if process is None:
            return
        if process.poll() is None:
            pod.killed = True
            self._signal_pod(pod, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(self.grace_seconds)
        self._signal_pod(pod, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)

    @staticmethod
    def _signal_pod(pod: RunningPod, sig: int) -> None:
        """The main process's group plus every process carrying the pod's marker."""
        targets = set(pod_processes(pod.marker)) if pod.marker else set()
        if pod.process is not None and pod.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod.process.pid, sig)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def cleanup(self) -> None:
        """Remove materialised volumes and pod scratch dirs (logs are kept)."""
        shutil.rmtree(self.workdir / "pods", ignore_errors=True)


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = now_iso()
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll `predicate()` until it returns something truthy; raise TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout:.0f}s")
