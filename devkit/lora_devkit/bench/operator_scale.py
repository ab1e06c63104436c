"""Operator scale: create LoRAJobs in the emulated cluster and time until every one is planned
(status.plan) and admitted (its trainer Job exists) or queued by a GPU quota, with the operator's
peak memory.

The real operator process (`lorajob run`) runs against the kmock emulator and a moto S3 on
loopback (progress reads are real). Two cases: 1000 CPU jobs in one namespace, no quota
(goal: under 30 s on 2 cores, issue 12); `--quotas`: 10,000 GPU jobs in 50 namespaces under
namespace and cluster GPU quotas, most of them queued (goal: under 60 s and 1 GiB, issue 17).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lora_contract.types import GROUP, PLURAL, VERSION

from ..emulator import EmulatedCluster, LoRAJobEmulator
from ..operator_process import secret_manifest, stop_operator
from ..operator_process import start_operator as shared_start_operator
from ..s3server import S3Server
from .goals import record

LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"
NAMESPACE = "bench"
SECRET = "bench-s3"
BUCKET = "bench"


def lorajob(name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A small CPU job: the planner's work is real but cached per base model, as in practice."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"name": "meta-llama/Llama-3.2-1B", "source": "pvc://models/llama-1b"},
            "lora": {"r": 8, "alpha": 16},
            "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
            "training": {"maxSteps": 100},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": BUCKET, "prefix": "runs"},
        },
    }


# (nodes, gpusPerNode, gpuType) in turn: multi-node jobs and two GPU types, 3.5 GPUs on average
GPU_SHAPES = [
    (1, 1, "A100-80GB"),
    (1, 2, "H100-80GB"),
    (2, 2, "A100-80GB"),
    (1, 8, "H100-80GB"),
    (1, 4, "A100-80GB"),
    (2, 1, "H100-80GB"),
]
# 16 GPUs per namespace (at most 8 H100), 400 in the cluster: 50 x 16 = 800 would fit without
# the cluster quota, so both quotas bind; ~130 of 10,000 jobs are admitted, the rest queue.
QUOTAS = {"default": {"gpus": 16, "gpuTypes": {"H100-80GB": 8}}, "cluster": {"gpus": 400}}


def gpu_lorajob(i: int, namespace: str) -> dict[str, Any]:
    """Job `i` of the quota case: one of GPU_SHAPES, placed as given (ddp)."""
    nodes, per_node, gpu = GPU_SHAPES[i % len(GPU_SHAPES)]
    job = lorajob(f"job-{i:05d}", namespace)
    job["spec"]["resources"] = {"gpuType": gpu}
    job["spec"]["distributed"] = {"nodes": nodes, "gpusPerNode": per_node, "strategy": "ddp"}
    return job


@dataclass(frozen=True)
class Case:
    """What one run creates, and the quotas the operator enforces."""

    jobs: int
    namespaces: list[str]
    quotas: dict[str, Any] | None = None

    def lorajob(self, i: int) -> dict[str, Any]:
        namespace = self.namespaces[i % len(self.namespaces)]
        return gpu_lorajob(i, namespace) if self.quotas else lorajob(f"job-{i:04d}", namespace)


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict (VmHWM = peak resident memory), {} once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU of a process, or of one of its threads (`thread`: its native id)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProfiledCluster(EmulatedCluster):
    """The emulator with cProfile on in its thread (`--profile`): cProfile sees one thread."""

    def __init__(self, workdir: Path, profiler: cProfile.Profile | None) -> None:
        super().__init__(workdir, kserve=False)
        self.profiler = profiler

    def _run(self) -> None:
        if self.profiler is None:
            super()._run()
            return
        self.profiler.enable()
        try:
            super()._run()
        finally:
            self.profiler.disable()

    def thread_cpu_seconds(self) -> float:
        native_id = self._thread.native_id if self._thread is not None else None
        return 0.0 if native_id is None else cpu_seconds(os.getpid(), native_id)


def print_profile(title: str, stats: pstats.Stats, top: int = 25) -> None:
    print(f"\n=== {title}: top {top} by cumulative time ===", flush=True)
    stats.sort_stats("cumulative").print_stats(top)


def peak_rss_mib(pid: int) -> float:
    value = proc_status(pid).get("VmHWM", "0 kB").split()[0]
    return int(value) / 1024


def quota_queued(status: dict[str, Any]) -> bool:
    """Queued by a GPU quota: phase Queued, Admitted=False with reason QuotaExceeded."""
    if status.get("phase") != "Queued":
        return False
    conditions = status.get("conditions") or []
    return any(
        c.get("type") == "Admitted" and c.get("reason") == "QuotaExceeded" for c in conditions
    )


def count_done(cluster: EmulatedCluster, namespaces: list[str]) -> tuple[int, int, int]:
    """(LoRAJobs with a plan, trainer Jobs, LoRAJobs queued by a quota), counted in the
    emulator's store: listing over HTTP every half second (MBs of JSON) slowed the emulator the
    operator talks to."""
    wanted = set(namespaces)

    def count(emulator: LoRAJobEmulator) -> tuple[int, int, int]:
        planned = jobs = queued = 0
        for (resource, namespace, _), obj in emulator.objects.items():
            if namespace not in wanted or obj.deleted:
                continue
            if resource.plural == PLURAL:
                status = obj.get("status") or {}
                planned += bool(status.get("plan"))
                queued += quota_queued(status)
            elif resource.plural == "jobs" and resource.group == "batch":
                jobs += 1
        return planned, jobs, queued

    return cluster.inspect(count)


def start_operator(
    kubeconfig: Path,
    config: Path,
    log: Path,
    concurrency: int,
    profile: Path | None = None,
    namespaces: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """`profile`: run it under cProfile, which writes its stats there when the operator exits.
    More than one namespace: the operator watches all namespaces (one watch, as a platform's
    operator for many teams runs; 50 watches cost the emulator a wake-up per watch and event)."""
    python_args = ("-m", "cProfile", "-o", str(profile)) if profile is not None else ()
    scope = NAMESPACE if namespaces is None or len(namespaces) == 1 else None
    return shared_start_operator(
        kubeconfig,
        config,
        scope,
        log,
        "--concurrency",
        str(concurrency),
        python_args=python_args,
    )


def run(
    case: Case, timeout: float, concurrency: int, workdir: Path, profile: bool = False
) -> dict[str, Any]:
    emulator_profiler = cProfile.Profile() if profile else None
    operator_profile = workdir / "operator.prof" if profile else None
    with S3Server() as s3, ProfiledCluster(workdir / "k8s", emulator_profiler) as cluster:
        s3.ensure_bucket(BUCKET)
        client = cluster.client()
        for namespace in case.namespaces:
            client.create(
                "v1/secrets",
                namespace,
                secret_manifest(SECRET, namespace, s3.access_key, s3.secret_key),
            )
        settings: dict[str, Any] = {
            "trainerImage": "lora-trainer:bench",
            "s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}},
            "progressIntervalSeconds": 15,
        }
        if case.quotas:
            settings["quotas"] = case.quotas
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        log = workdir / "operator.log"
        operator = start_operator(
            cluster.kubeconfig, config, log, concurrency, operator_profile, case.namespaces
        )
        jobs = case.jobs
        result: dict[str, Any] = {"jobs": jobs}
        try:
            started = time.monotonic()
            for i in range(jobs):
                body = case.lorajob(i)
                client.create(LORAJOBS, body["metadata"]["namespace"], body)
            result["create_s"] = time.monotonic() - started
            planned_at = jobs_at = None
            planned = created = queued = 0
            timeline: list[tuple[float, int, int]] = []
            while time.monotonic() - started < timeout:
                if operator.poll() is not None:
                    raise RuntimeError(f"the operator exited ({operator.returncode}); see {log}")
                counting = time.monotonic()
                planned, created, queued = count_done(cluster, case.namespaces)
                counted_in = time.monotonic() - counting
                now = time.monotonic() - started
                timeline.append((now, planned, created + queued))
                if planned_at is None and planned >= jobs:
                    planned_at = now
                if jobs_at is None and created + queued >= jobs:
                    jobs_at = now
                if planned_at is not None and jobs_at is not None:
                    break
                # The count runs on the emulator's thread: at 10,000 jobs (30,000 objects with
                # their Events) a walk takes ~0.2 s, so keep it under a tenth of that thread.
                time.sleep(max(0.5, 10 * counted_in))
            if planned_at is None or jobs_at is None:
                text = log.read_text(errors="replace")
                result["log_tail"] = text[-4000:]
            result.update(
                timeline=timeline,
                planned=planned,
                created=created,
                queued=queued,
                planned_s=planned_at,
                jobs_s=jobs_at,
                peak_rss_mib=peak_rss_mib(operator.pid),
                cpu_s=cpu_seconds(operator.pid),
                emulator_cpu_s=cluster.thread_cpu_seconds(),
            )
        finally:
            stop_operator(operator, grace_seconds=60 if profile else 20)
    if emulator_profiler is not None:
        emulator_profiler.dump_stats(workdir / "emulator.prof")
        print_profile("emulator thread", pstats.Stats(emulator_profiler))
    if operator_profile is not None and operator_profile.exists():
        print_profile("operator process", pstats.Stats(str(operator_profile)))
    return result


def _fmt(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}"


def _timeline(samples: list[tuple[float, int, int]], every: float = 5.0) -> str:
    """One sample per `every` seconds: where the time went (creation, planning, Jobs)."""
    shown: list[str] = []
    next_at = 0.0
    for at, planned, created in samples:
        if at >= next_at:
            shown.append(f"{at:.0f}: {planned}/{created}")
            next_at = at + every
    return ", ".join(shown)


RSS_GOAL_MIB = 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="operator_scale", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quotas",
        action="store_true",
        help="the quota case: GPU jobs in --namespaces namespaces under QUOTAS (defaults: "
        "10,000 jobs, 50 namespaces, goal 60 s)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="default 1000 (--quotas: 10000)")
    parser.add_argument("--namespaces", type=int, default=None, help="default 1 (--quotas: 50)")
    parser.add_argument("--timeout", type=float, default=None, help="default 300 s (--quotas: 600)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--goal", type=float, default=None, help="seconds (30; --quotas: 60)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the operator log here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the emulator thread and the operator process; print the top 25 of each",
    )
    args = parser.parse_args(argv if argv is not None else [])
    quota = args.quotas
    jobs = args.jobs or (10_000 if quota else 1000)
    spaces = args.namespaces or (50 if quota else 1)
    timeout = args.timeout or (600.0 if quota else 300.0)
    goal = args.goal or (60.0 if quota else 30.0)
    names = [NAMESPACE] if spaces == 1 else [f"{NAMESPACE}-{i:02d}" for i in range(spaces)]
    case = Case(jobs, names, QUOTAS if quota else None)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(case, timeout, args.concurrency, args.workdir, args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="lorajob-bench-") as tmp:
            result = run(case, timeout, args.concurrency, Path(tmp), args.profile)
    done = result["jobs_s"] is not None and result["planned_s"] is not None
    what = "Jobs created or quota-queued" if quota else "trainer Jobs created"
    rows = [
        ("LoRAJobs created", f"{jobs} in {len(names)} namespace(s) in {result['create_s']:.1f} s"),
        ("all planned (status.plan)", f"{_fmt(result['planned_s'])} s ({result['planned']})"),
        (
            f"all {what}",
            f"{_fmt(result['jobs_s'])} s ({result['created']} Jobs, {result['queued']} queued)",
        ),
        ("operator CPU time", f"{result['cpu_s']:.1f} s"),
        ("emulator CPU time (its thread)", f"{result['emulator_cpu_s']:.1f} s"),
        ("operator peak RSS (VmHWM)", f"{result['peak_rss_mib']:.0f} MiB"),
        ("CPU cores", str(os.cpu_count())),
        ("goal", f"< {goal:.0f} s" + (f", RSS < {RSS_GOAL_MIB} MiB" if quota else "")),
    ]
    if args.profile:
        rows.append(("progress (s: planned/done)", _timeline(result.get("timeline", []))))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    took = max(result["jobs_s"], result["planned_s"]) if done else None
    benchmark = "operator scale, quotas" if quota else "operator scale"
    record(
        benchmark,
        f"{jobs} LoRAJobs planned and {'admitted or queued' if quota else 'their Jobs created'}"
        f" in < {goal:.0f} s",
        f"{took:.1f} s" if took is not None else f"not all done in {timeout:.0f} s",
        took is not None and took < goal,
    )
    if quota:
        rss = result["peak_rss_mib"]
        record(
            benchmark, f"operator RSS < {RSS_GOAL_MIB} MiB", f"{rss:.0f} MiB", rss < RSS_GOAL_MIB
        )
    if not done:
        print("not all jobs were planned and admitted or queued before the timeout; log tail:")
        print(result.get("log_tail", ""))
        return 1
    return 0


def main_quotas(argv: list[str] | None = None) -> int:
    """The quota case, for `make bench`'s list."""
    return main(["--quotas", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
