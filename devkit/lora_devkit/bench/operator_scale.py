"""Operator scale: create 1000 LoRAJobs in the emulated cluster and time until every one is
planned (status.plan) and its trainer Job exists, with the operator's peak memory.

The real operator process (`lorajob run`) runs against the kmock emulator and a moto S3 on
loopback (progress reads are real); quotas do not block. Goal: under 30 s on 2 cores (issue 12).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lora_contract.types import GROUP, PLURAL, VERSION

from ..emulator import EmulatedCluster, RestClient
from ..operator_process import secret_manifest, stop_operator
from ..operator_process import start_operator as shared_start_operator
from ..s3server import S3Server
from .goals import record

LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"
NAMESPACE = "bench"
SECRET = "bench-s3"
BUCKET = "bench"


def lorajob(name: str) -> dict[str, Any]:
    """A small CPU job: the planner's work is real but cached per base model, as in practice."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"name": "meta-llama/Llama-3.2-1B", "source": "pvc://models/llama-1b"},
            "lora": {"r": 8, "alpha": 16},
            "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
            "training": {"maxSteps": 100},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": BUCKET, "prefix": "runs"},
        },
    }


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict (VmHWM = peak resident memory), {} once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    value = proc_status(pid).get("VmHWM", "0 kB").split()[0]
    return int(value) / 1024


def count_done(client: RestClient) -> tuple[int, int]:
    """(LoRAJobs with a plan, trainer Jobs)."""
    planned = sum(
        1 for obj in client.list(LORAJOBS, NAMESPACE) if (obj.get("status") or {}).get("plan")
    )
    jobs = len(client.list("batch/v1/jobs", NAMESPACE))
    return planned, jobs


def start_operator(
    kubeconfig: Path, config: Path, log: Path, concurrency: int
) -> subprocess.Popen[bytes]:
    return shared_start_operator(
        kubeconfig, config, NAMESPACE, log, "--concurrency", str(concurrency)
    )


def run(jobs: int, timeout: float, concurrency: int, workdir: Path) -> dict[str, Any]:
    with S3Server() as s3, EmulatedCluster(workdir / "k8s", kserve=False) as cluster:
        s3.ensure_bucket(BUCKET)
        client = cluster.client()
        client.create(
            "v1/secrets",
            NAMESPACE,
            secret_manifest(SECRET, NAMESPACE, s3.access_key, s3.secret_key),
        )
        config = workdir / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "trainerImage": "lora-trainer:bench",
                    "s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}},
                    "progressIntervalSeconds": 15,
                }
            )
        )
        log = workdir / "operator.log"
        operator = start_operator(cluster.kubeconfig, config, log, concurrency)
        result: dict[str, Any] = {"jobs": jobs}
        try:
            started = time.monotonic()
            for i in range(jobs):
                client.create(LORAJOBS, NAMESPACE, lorajob(f"job-{i:04d}"))
            result["create_s"] = time.monotonic() - started
            planned_at = jobs_at = None
            planned = created = 0
            while time.monotonic() - started < timeout:
                if operator.poll() is not None:
                    raise RuntimeError(f"the operator exited ({operator.returncode}); see {log}")
                planned, created = count_done(client)
                now = time.monotonic() - started
                if planned_at is None and planned >= jobs:
                    planned_at = now
                if jobs_at is None and created >= jobs:
                    jobs_at = now
                if planned_at is not None and jobs_at is not None:
                    break
                time.sleep(0.5)
            if planned_at is None or jobs_at is None:
                text = log.read_text(errors="replace")
                result["log_tail"] = text[-4000:]
            result.update(
                planned=planned,
                created=created,
                planned_s=planned_at,
                jobs_s=jobs_at,
                peak_rss_mib=peak_rss_mib(operator.pid),
                cpu_s=cpu_seconds(operator.pid),
            )
        finally:
            stop_operator(operator, grace_seconds=20)
        return result


def _fmt(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="operator_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--goal", type=float, default=30.0, help="seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the operator log here")
    args = parser.parse_args(argv if argv is not None else [])
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.jobs, args.timeout, args.concurrency, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="lorajob-bench-") as tmp:
            result = run(args.jobs, args.timeout, args.concurrency, Path(tmp))
    done = result["jobs_s"] is not None and result["planned_s"] is not None
    rows = [
        ("LoRAJobs created", f"{result['jobs']} in {result['create_s']:.1f} s"),
        ("all planned (status.plan)", f"{_fmt(result['planned_s'])} s ({result['planned']})"),
        ("all trainer Jobs created", f"{_fmt(result['jobs_s'])} s ({result['created']})"),
        ("operator CPU time", f"{result['cpu_s']:.1f} s"),
        ("operator peak RSS (VmHWM)", f"{result['peak_rss_mib']:.0f} MiB"),
        ("CPU cores", str(os.cpu_count())),
        ("goal", f"< {args.goal:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    took = max(result["jobs_s"], result["planned_s"]) if done else None
    record(
        "operator scale",
        f"{args.jobs} LoRAJobs planned and their Jobs created in < {args.goal:.0f} s",
        f"{took:.1f} s" if took is not None else f"not all done in {args.timeout:.0f} s",
        took is not None and took < args.goal,
    )
    if not done:
        print("not all jobs were planned and created before the timeout; operator log tail:")
        print(result.get("log_tail", ""))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
