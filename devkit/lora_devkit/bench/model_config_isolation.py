"""Model-config isolation: how long a job waits for its first status while other jobs' config.json
URLs point at a server that trickles one byte every 2 s (allow-listed, so the operator fetches).

The real operator process runs against the emulator. First one shipped-model job is timed alone
(the baseline), then `--slow` jobs start fetching from the trickling server, and while those
fetches hang, `--jobs` shipped-model jobs are created one by one and each is timed from its create
until its status has a phase. Goal: every one under 1 s. (A blocking fetch on the event loop made
this 58.8 s.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lora_contract.types import GROUP, PLURAL, VERSION

from ..config_server import ConfigServer
from ..emulator import EmulatedCluster, RestClient
from ..operator_process import secret_manifest, start_operator, stop_operator
from ..s3server import S3Server
from .goals import record
from .operator_scale import lorajob

LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"
NAMESPACE = "bench"
SECRET = "bench-s3"
BUCKET = "bench"
FETCH_DEADLINE_SECONDS = 120  # the slow fetches must still hang when the last job is timed


def slow_job(name: str, url: str) -> dict[str, Any]:
    job = lorajob(name)
    job["spec"]["baseModel"]["config"] = url
    return job


def first_status_seconds(client: RestClient, body: dict[str, Any], timeout: float) -> float:
    """Seconds from creating `body` until its status shows a phase (polled every 10 ms)."""
    name = body["metadata"]["name"]
    started = time.monotonic()
    client.create(LORAJOBS, NAMESPACE, body)
    while time.monotonic() - started < timeout:
        obj = client.get(LORAJOBS, NAMESPACE, name) or {}
        if (obj.get("status") or {}).get("phase"):
            return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError(f"{name} got no status within {timeout:.0f} s")


def still_fetching(client: RestClient, names: list[str]) -> int:
    """How many of `names` still wait for their config (Planned=Unknown)."""
    count = 0
    for name in names:
        status = (client.get(LORAJOBS, NAMESPACE, name) or {}).get("status") or {}
        reasons = {c.get("type"): c.get("reason") for c in status.get("conditions") or []}
        count += reasons.get("Planned") == "FetchingModelConfig"
    return count


def run(jobs: int, slow: int, trickle_seconds: float, workdir: Path) -> dict[str, Any]:
    with (
        S3Server() as s3,
        EmulatedCluster(workdir / "k8s", kserve=False) as cluster,
        ConfigServer(trickle_seconds=trickle_seconds) as server,
    ):
        s3.ensure_bucket(BUCKET)
        client = cluster.client()
        secret = secret_manifest(SECRET, NAMESPACE, s3.access_key, s3.secret_key)
        client.create("v1/secrets", NAMESPACE, secret)
        config = workdir / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "trainerImage": "lora-trainer:bench",
                    "s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}},
                    "policy": {
                        "allowedModelConfigUrls": [server.url("/")],
                        "modelConfigTimeoutSeconds": FETCH_DEADLINE_SECONDS,
                    },
                }
            )
        )
        log = workdir / "operator.log"
        operator = start_operator(cluster.kubeconfig, config, NAMESPACE, log)
        try:
            # warm-up: the operator's start and the shipped model's first count are not measured
            first_status_seconds(client, lorajob("warm-up"), timeout=120)
            baseline = first_status_seconds(client, lorajob("baseline"), timeout=60)
            slow_names = [f"slow-{i}" for i in range(slow)]
            for name in slow_names:
                client.create(
                    LORAJOBS, NAMESPACE, slow_job(name, server.url(f"/trickle/{name}/config.json"))
                )
            waited = time.monotonic()
            while still_fetching(client, slow_names) < slow and time.monotonic() - waited < 60:
                time.sleep(0.1)
            timed = [
                first_status_seconds(client, lorajob(f"bystander-{i}"), timeout=120)
                for i in range(jobs)
            ]
            hanging = still_fetching(client, slow_names)
        finally:
            stop_operator(operator, grace_seconds=20)
    return {"baseline": baseline, "timed": timed, "hanging": hanging, "slow": slow}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model_config_isolation", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10, help="jobs timed while fetches hang")
    parser.add_argument("--slow", type=int, default=3, help="jobs with a trickling config URL")
    parser.add_argument("--trickle-seconds", type=float, default=2.0)
    parser.add_argument("--goal", type=float, default=1.0, help="seconds")
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="lorajob-bench-") as tmp:
        result = run(args.jobs, args.slow, args.trickle_seconds, Path(tmp))
    timed: list[float] = result["timed"]
    rows = [
        ("first status, no slow fetch", f"{result['baseline']:.2f} s"),
        (
            f"first status, {args.slow} fetches trickling",
            f"median {statistics.median(timed):.2f} s, max {max(timed):.2f} s ({len(timed)} jobs)",
        ),
        ("slow fetches still hanging after", f"{result['hanging']} of {result['slow']}"),
        ("goal", f"< {args.goal:g} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    isolated = result["hanging"] == result["slow"]
    record(
        "model-config isolation",
        f"another job's first status in < {args.goal:g} s while config URLs trickle",
        f"max {max(timed):.2f} s" + ("" if isolated else " (the slow fetches ended first)"),
        isolated and max(timed) < args.goal,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
