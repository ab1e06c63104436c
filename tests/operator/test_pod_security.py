"""Every pod the operator renders meets the Pod Security Standards' `restricted` profile, plus
this project's stricter rules, so it runs in a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`.

The checker below has one function per control, in the order of the Kubernetes docs' table
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), each returning what it
finds wrong. The negative tests break each control on a compliant pod and expect exactly that
control to complain: the checker is tested, so a pass means something.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from operator_harness import base_job, gpu_job
from test_manifests import K8S_VERSION, UID, context, spec_of

from lora_contract import pod
from lora_operator.controller.manifests import RunContext, build_job, build_run_objects
from lora_operator.controller.serving import build_inference_service, serving_account_name

PodSpec = dict[str, Any]
Control = Callable[[PodSpec], list[str]]

REPO = Path(__file__).resolve().parents[2]
HF_MODEL = "hf://meta-llama/Llama-3.2-1B"

# ------------------------------------------------------------------------------- the checker

# Volume types the restricted profile allows (everything else, hostPath first, is refused).
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}


def containers(spec: PodSpec) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def container_context(container: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = container.get("securityContext") or {}
    return context


def pod_context(spec: PodSpec) -> dict[str, Any]:
    context: dict[str, Any] = spec.get("securityContext") or {}
    return context


def effective(spec: PodSpec, container: dict[str, Any], field: str) -> Any:
    """A container's value of a field both levels have: its own, else the pod's."""
    own = container_context(container).get(field)
    return own if own is not None else pod_context(spec).get(field)


# Baseline controls (the restricted profile includes them all).


def host_process(spec: PodSpec) -> list[str]:
    contexts = [pod_context(spec), *(container_context(c) for c in containers(spec))]
    if any((c.get("windowsOptions") or {}).get("hostProcess") for c in contexts):
        return ["windowsOptions.hostProcess must not be true"]
    return []


def host_namespaces(spec: PodSpec) -> list[str]:
    return [
        f"{key} must not be true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)
    ]


def privileged(spec: PodSpec) -> list[str]:
    return [
        f"container {c['name']}: privileged must not be true"
        for c in containers(spec)
        if container_context(c).get("privileged")
    ]


def capabilities(spec: PodSpec) -> list[str]:
    """Restricted: drop ALL, and add nothing but NET_BIND_SERVICE."""
    problems = []
    for c in containers(spec):
        caps = container_context(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"container {c['name']}: capabilities.drop must contain ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            problems.append(f"container {c['name']}: capabilities.add {sorted(extra)}")
    return problems


def host_path_volumes(spec: PodSpec) -> list[str]:
    return [f"volume {v['name']}: hostPath" for v in spec.get("volumes") or [] if "hostPath" in v]


def host_ports(spec: PodSpec) -> list[str]:
    return [
        f"container {c['name']}: hostPort {p['hostPort']}"
        for c in containers(spec)
        for p in c.get("ports") or []
        if p.get("hostPort")
    ]


def app_armor(spec: PodSpec) -> list[str]:
    contexts = [pod_context(spec), *(container_context(c) for c in containers(spec))]
    kinds = {str(c["appArmorProfile"].get("type")) for c in contexts if c.get("appArmorProfile")}
    return [f"appArmorProfile.type {k}" for k in sorted(kinds - PROFILE_TYPES)]


def se_linux(spec: PodSpec) -> list[str]:
    problems = []
    contexts = [pod_context(spec), *(container_context(c) for c in containers(spec))]
    for options in (c.get("seLinuxOptions") or {} for c in contexts):
        if options.get("type", "") not in SELINUX_TYPES:
            problems.append(f"seLinuxOptions.type {options['type']}")
        problems += [
            f"seLinuxOptions.{key} must not be set" for key in ("user", "role") if key in options
        ]
    return problems


def proc_mount(spec: PodSpec) -> list[str]:
    return [
        f"container {c['name']}: procMount {container_context(c)['procMount']}"
        for c in containers(spec)
        if container_context(c).get("procMount", "Default") != "Default"
    ]


def sysctls(spec: PodSpec) -> list[str]:
    names = {s["name"] for s in pod_context(spec).get("sysctls") or []}
    return [f"sysctl {name} is not in the safe set" for name in sorted(names - SAFE_SYSCTLS)]


# Restricted controls.


def volume_types(spec: PodSpec) -> list[str]:
    problems = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds - ALLOWED_VOLUMES)}")
    return problems


def privilege_escalation(spec: PodSpec) -> list[str]:
    return [
        f"container {c['name']}: allowPrivilegeEscalation must be false"
        for c in containers(spec)
        if container_context(c).get("allowPrivilegeEscalation") is not False
    ]


def run_as_non_root(spec: PodSpec) -> list[str]:
    """True at the pod level (and no container says false), or on every container."""
    problems = []
    for c in containers(spec):
        if effective(spec, c, "runAsNonRoot") is not True:
            problems.append(f"container {c['name']}: runAsNonRoot must be true")
    return problems


def run_as_user(spec: PodSpec) -> list[str]:
    contexts = [pod_context(spec), *(container_context(c) for c in containers(spec))]
    return ["runAsUser must not be 0" for c in contexts if c.get("runAsUser") == 0]


def seccomp(spec: PodSpec) -> list[str]:
    problems = []
    for c in containers(spec):
        profile = effective(spec, c, "seccompProfile") or {}
        if profile.get("type") not in PROFILE_TYPES:
            problems.append(f"container {c['name']}: seccompProfile.type {profile.get('type')}")
    return problems


RESTRICTED: list[Control] = [
    host_process,
    host_namespaces,
    privileged,
    capabilities,
    host_path_volumes,
    host_ports,
    app_armor,
    se_linux,
    proc_mount,
    seccomp,
    sysctls,
    volume_types,
    privilege_escalation,
    run_as_non_root,
    run_as_user,
]

# This project's rules on top of `restricted`.


def read_only_root(spec: PodSpec) -> list[str]:
    return [
        f"container {c['name']}: readOnlyRootFilesystem must be true"
        for c in containers(spec)
        if container_context(c).get("readOnlyRootFilesystem") is not True
    ]


def no_token(spec: PodSpec) -> list[str]:
    if spec.get("automountServiceAccountToken") is not False:
        return ["automountServiceAccountToken must be false"]
    return []


def own_service_account(spec: PodSpec) -> list[str]:
    if spec.get("serviceAccountName", "default") == "default":
        return ["serviceAccountName must name an account other than default"]
    return []


PROJECT: list[Control] = [read_only_root, no_token, own_service_account]


def violations(spec: PodSpec, controls: list[Control] = RESTRICTED + PROJECT) -> list[str]:
    return [f"{control.__name__}: {p}" for control in controls for p in control(spec)]


# ----------------------------------------------------------------------- the rendered pods


def trainer_pod(ctx: RunContext) -> PodSpec:
    job = build_job(ctx)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec: PodSpec = job["spec"]["template"]["spec"]
    return spec


TRAINER_JOBS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cpu": (base_job("cpu"), {}),
    "single-gpu": (gpu_job("one", 1), {}),
    "multi-node": (gpu_job("mn", 8, **{"distributed.nodes": 2}), {}),
    "zero3": (gpu_job("z3", 8, **{"distributed.strategy": "deepspeed-zero3"}), {}),
    "qlora": (gpu_job("q", 1, **{"quantization.mode": "nf4"}), {}),
    "model-cache-pvc": (
        gpu_job("hf", 1, **{"baseModel.source": HF_MODEL, "dataset.source": "s3://d/t.jsonl"}),
        {"modelCacheClaim": "hf-cache"},
    ),
    "hf-cache-emptydir": (base_job("hfe", **{"baseModel.source": HF_MODEL}), {}),
    "configured-account": (gpu_job("sa", 2), {"trainerServiceAccount": "trainers"}),
}


def predictor_pod(with_service_account: bool) -> PodSpec:
    """The pod KServe makes of the predictor: PredictorSpec's inlined PodSpec fields with the
    model container (KServe's ModelSpec embeds a Container) as `kserve-container`."""
    spec = spec_of(gpu_job("srv", 1, **{"serving.enabled": True}))
    isvc = build_inference_service(
        "srv", "ml", UID, spec, "s3://b/runs/srv/r1/final", "r1", with_service_account
    )
    predictor = copy.deepcopy(isvc["spec"]["predictor"])
    model = predictor.pop("model")
    for key in ("minReplicas", "maxReplicas"):
        predictor.pop(key, None)
    container = {k: v for k, v in model.items() if k not in ("modelFormat", "storageUris")}
    return {**predictor, "containers": [{"name": "kserve-container", **container}]}


@pytest.mark.parametrize("case", sorted(TRAINER_JOBS))
def test_trainer_pods_meet_the_restricted_profile(case: str) -> None:
    job, config = TRAINER_JOBS[case]
    spec = trainer_pod(context(job, **config))
    assert violations(spec) == []


def test_the_trainer_writes_only_to_its_emptydirs() -> None:
    """Read-only root: HOME, TMPDIR, the work dir and every cache point into a writable mount,
    and the trainer runs as the uid the image creates."""
    spec = trainer_pod(context(gpu_job("w", 1)))
    [container] = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    ]
    for name, path in pod.SCRATCH_ENV.items():
        assert env[name] == path
        assert any(path == w or path.startswith(w + "/") for w in writable), (name, path)
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    dockerfile = (REPO / "trainer-image" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users[-1] == f"{pod.TRAINER_UID}:{pod.TRAINER_GID}"
    assert spec["securityContext"]["runAsUser"] == pod.TRAINER_UID
    assert f"--uid {pod.TRAINER_UID}" in dockerfile


def test_the_trainer_account_has_no_token() -> None:
    ctx = context(gpu_job("acct", 1))
    accounts = [obj for resource, obj in build_run_objects(ctx) if obj["kind"] == "ServiceAccount"]
    assert [a["metadata"]["name"] for a in accounts] == [trainer_pod(ctx)["serviceAccountName"]]
    assert accounts[0]["automountServiceAccountToken"] is False
    kubernetes_validate.validate(accounts[0], K8S_VERSION, strict=True)


def test_the_predictor_meets_the_restricted_profile() -> None:
    spec = predictor_pod(with_service_account=True)
    assert spec["serviceAccountName"] == serving_account_name("srv")
    assert violations(spec) == []
    # Without S3 credentials to hand KServe, the predictor keeps the namespace's default
    # account (the operator makes no account for it), but still mounts no token.
    bare = predictor_pod(with_service_account=False)
    assert violations(bare, [*RESTRICTED, read_only_root, no_token]) == []


# ------------------------------------------------------------------ the checker catches each


def compliant() -> PodSpec:
    return trainer_pod(context(gpu_job("neg", 1)))


def first_container(spec: PodSpec) -> dict[str, Any]:
    container: dict[str, Any] = spec["containers"][0]
    return container


def ctx_of(spec: PodSpec) -> dict[str, Any]:
    return container_context(first_container(spec))


BREAKS: dict[str, tuple[Control, Callable[[PodSpec], object]]] = {
    "host-process": (
        host_process,
        lambda s: ctx_of(s).update(windowsOptions={"hostProcess": True}),
    ),
    "host-network": (host_namespaces, lambda s: s.update(hostNetwork=True)),
    "host-pid": (host_namespaces, lambda s: s.update(hostPID=True)),
    "host-ipc": (host_namespaces, lambda s: s.update(hostIPC=True)),
    "privileged": (privileged, lambda s: ctx_of(s).update(privileged=True)),
    "caps-not-dropped": (capabilities, lambda s: ctx_of(s).update(capabilities={})),
    "caps-added": (
        capabilities,
        lambda s: ctx_of(s)["capabilities"].update(add=["SYS_ADMIN"]),
    ),
    "host-path": (
        host_path_volumes,
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    ),
    "host-port": (
        host_ports,
        lambda s: first_container(s)["ports"].append({"containerPort": 80, "hostPort": 80}),
    ),
    "app-armor": (
        app_armor,
        lambda s: s["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
    ),
    "selinux-type": (
        se_linux,
        lambda s: ctx_of(s).update(seLinuxOptions={"type": "spc_t"}),
    ),
    "selinux-user": (
        se_linux,
        lambda s: s["securityContext"].update(seLinuxOptions={"user": "system_u"}),
    ),
    "proc-mount": (proc_mount, lambda s: ctx_of(s).update(procMount="Unmasked")),
    "seccomp-unconfined": (
        seccomp,
        lambda s: ctx_of(s).update(seccompProfile={"type": "Unconfined"}),
    ),
    "seccomp-unset": (seccomp, lambda s: s["securityContext"].pop("seccompProfile")),
    "unsafe-sysctl": (
        sysctls,
        lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    ),
    "volume-type": (
        volume_types,
        lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
    ),
    "privilege-escalation": (
        privilege_escalation,
        lambda s: ctx_of(s).pop("allowPrivilegeEscalation"),
    ),
    "root-allowed-by-container": (run_as_non_root, lambda s: ctx_of(s).update(runAsNonRoot=False)),
    "root-allowed-by-pod": (
        run_as_non_root,
        lambda s: (s["securityContext"].pop("runAsNonRoot"), ctx_of(s).pop("runAsNonRoot")),
    ),
    "uid-0": (run_as_user, lambda s: ctx_of(s).update(runAsUser=0)),
    "init-container": (
        privilege_escalation,
        lambda s: s.setdefault("initContainers", []).append({"name": "init", "image": "x"}),
    ),
    "writable-root": (read_only_root, lambda s: ctx_of(s).pop("readOnlyRootFilesystem")),
    "token-mounted": (no_token, lambda s: s.pop("automountServiceAccountToken")),
    "default-account": (own_service_account, lambda s: s.pop("serviceAccountName")),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_the_checker_catches_each_violation(case: str) -> None:
    control, breaks = BREAKS[case]
    spec = compliant()
    assert violations(spec) == []
    breaks(spec)
    found = violations(spec)
    assert found, case
    assert {line.split(":")[0] for line in found} >= {control.__name__}, found
    assert control(spec), case


def test_every_control_has_a_negative_case() -> None:
    assert {control for control, _ in BREAKS.values()} == set(RESTRICTED + PROJECT)
