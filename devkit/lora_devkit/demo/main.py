"""`lorajob-demo [--kill-a-pod] [--pipeline]`: the whole flow on one machine, no cluster, no GPU.

An emulated Kubernetes API and an S3 server on loopback; the CRD, the credentials Secret and the
tiny CPU LoRAJob applied with the real kubectl; the real operator process; the pods it creates
run as local processes by the executor. The tiny model trains for real across two "nodes".
`--pipeline` goes on to a second job on the same shared server, a retrain and a rollback
(pipeline.py), served by the KServe stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import yaml

from lora_contract.layout import job_location
from lora_contract.types import LoRAJob

from ..emulator import EmulatedCluster
from ..executor import LocalExecutor
from ..kserve_standin import KServeStandIn
from ..operator_process import start_operator
from ..s3server import S3Server
from .children import (
    Interrupted,
    log_to,
    output_to,
    request_stop,
    signals_raise,
    stop_process_group,
    tail,
)
from .follow import Follower
from .pipeline import Pipeline, shared
from .summary import collect, render
from .workspace import (
    CRD,
    EXAMPLE,
    DemoError,
    Kubectl,
    demo_manifest,
    find_kubectl,
    operator_config,
    prepare_workdir,
    secret_manifest,
    write_manifest,
    write_model_and_data,
)

DEFAULT_TIMEOUT_S = 420.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorajob-demo",
        description=__doc__.splitlines()[0],
        epilog="S3_ENDPOINT (+ S3_ACCESS_KEY, S3_SECRET_KEY) set: use that S3/MinIO instead of "
        "the built-in server. Logs, the adapter, loss.png and summary.json stay in --workdir.",
    )
    parser.add_argument(
        "--kill-a-pod",
        action="store_true",
        help="SIGKILL one trainer pod after the first checkpoint; the Job retries and resumes",
    )
    parser.add_argument("--steps", type=int, help="training steps (default: the example's)")
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="default: ./.demo")
    parser.add_argument(
        "--keep", action="store_true", help="keep the model, data and pod folders afterwards"
    )
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="the LoRAJob to run")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="serve on a shared server, then a second job on it, a retrain (r2 promoted) and a "
        "rollback to r1 with `lorajob promote`",
    )
    parser.add_argument("--summary-json", type=Path, help="also write the outcome as JSON here")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="give up after this many seconds"
    )
    parser.add_argument(
        "--step-delay",
        type=float,
        default=None,
        help="seconds to sleep per training step (default: 0.3 with --kill-a-pod, else 0), so "
        "the kill lands mid-run",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.steps is not None and not 2 <= args.steps <= 10_000:
        print("lorajob-demo: --steps must be between 2 and 10000", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("lorajob-demo: --timeout must be > 0", file=sys.stderr)
        return 2
    try:
        with signals_raise():
            return Demo(args, sys.stdout).run()
    except Interrupted as exc:
        print(f"\nlorajob-demo: interrupted ({exc}); child processes stopped", file=sys.stderr)
        return 130


class Demo:
    """One run of the demo; `run()` cleans up every child process whatever happens."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.workdir: Path = args.workdir.resolve()
        self.logs = self.workdir / "logs"
        self.started = time.monotonic()
        self.manifest: dict[str, Any] = {}  # the first LoRAJob as applied

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", file=self.out, flush=True)

    def run(self) -> int:
        try:
            kubectl_binary = find_kubectl()
            prepare_workdir(self.workdir)
            manifest = demo_manifest(self.args.example, self.args.steps)
            if self.args.pipeline:
                manifest = shared(
                    manifest,
                    manifest["spec"].get("serving", {}).get("adapterName")
                    or manifest["metadata"]["name"],
                )
            self.manifest = manifest
            job = write_manifest(manifest, self.workdir / "lorajob.yaml")
        except DemoError as exc:
            print(f"lorajob-demo: {exc}", file=sys.stderr)
            return 1
        self.logs.mkdir()
        ok = False
        try:
            with EmulatedCluster(self.workdir / "cluster") as cluster, S3Server() as s3:
                kubectl = Kubectl(kubectl_binary, cluster.kubeconfig, self.workdir / "kube-cache")
                self.say(f"Kubernetes API emulator at {cluster.url}, S3 at {s3.endpoint}")
                ok = self.run_in(job, cluster, s3, kubectl)
        except DemoError as exc:
            print(f"\nlorajob-demo: {exc}", file=sys.stderr)
            self.print_log_tails()
        finally:
            if not self.args.keep and ok:
                for scratch in ("pvc", "executor/pods", "kserve/pods", "cluster", "kube-cache"):
                    shutil.rmtree(self.workdir / scratch, ignore_errors=True)
        return 0 if ok else 1

    def run_in(
        self, job: LoRAJob, cluster: EmulatedCluster, s3: S3Server, kubectl: Kubectl
    ) -> bool:
        namespace = job.metadata.namespace or "default"
        pvc_root = self.workdir / "pvc"
        self.say("writing the tiny random-init Llama, its tokenizer and the dataset to the PVC")
        with output_to(self.logs / "setup.log"):
            write_model_and_data(job, pvc_root)
            plan_table = self.plan_table(job)
        s3.ensure_bucket(job.spec.output.bucket)
        # A new emulated cluster gives the LoRAJob a new uid, and the trainer refuses a folder
        # another uid owns: the demo clears its own job folder from an earlier demo run.
        previous = job_location(job.spec.output, namespace, job.metadata.name)
        if s3.store().delete_prefix(previous):
            self.say(f"cleared an earlier demo run's outputs at {previous.uri}")
        secret = secret_manifest(job, s3.access_key, s3.secret_key)
        config_path = self.workdir / "operator-config.yaml"
        config = operator_config(s3.endpoint, secret["metadata"]["name"], 1.0)
        config_path.write_text(yaml.safe_dump(config))
        for output in (
            kubectl.apply_file(CRD),
            kubectl.apply_object(secret),
            kubectl.apply_file(self.workdir / "lorajob.yaml"),
        ):
            self.say(f"kubectl apply: {output.strip()}")
        operator = start_operator(
            cluster.kubeconfig,
            config_path,
            namespace,
            self.logs / "operator.log",
            "--resync-seconds=1.0",
            new_session=True,
        )
        self.say(f"operator started (pid {operator.pid}); log: {self.logs / 'operator.log'}")
        executor = LocalExecutor(
            cluster.client(),
            self.workdir / "executor",
            pvc_root=pvc_root,
            namespace=namespace,
            extra_env=self.trainer_env(),
        )
        kserve = KServeStandIn(cluster.client(), self.workdir / "kserve", namespace=namespace)
        try:
            with ExitStack() as stack:
                stack.enter_context(executor)
                stack.enter_context(log_to(self.logs / "executor.log", "lora_devkit.executor"))
                if self.args.pipeline:
                    stack.enter_context(kserve)
                    stack.enter_context(
                        log_to(self.logs / "kserve.log", "lora_devkit.kserve_standin")
                    )
                follower = Follower(
                    cluster.client(),
                    namespace,
                    job.metadata.name,
                    executor,
                    operator,
                    self.out,
                    kill_a_pod=self.args.kill_a_pod,
                    clock=time.monotonic,
                    started=self.started,
                )
                final = follower.follow(self.args.timeout - (time.monotonic() - self.started))
                summary = collect(
                    final, job, cluster.client(), s3.store(), self.workdir, executor.log_dir
                )
                if self.args.pipeline:
                    summary["pipeline"] = Pipeline(
                        self.manifest,
                        cluster,
                        kubectl,
                        executor,
                        kserve,
                        operator,
                        self.workdir,
                        self.out,
                        self.say,
                        self.args.steps,
                        self.started + self.args.timeout,
                        self.started,
                    ).run()
            request_stop(operator)  # kopf takes seconds to stop: let it while we finish
            summary["killedPod"] = follower.killed
            summary["seconds"] = round(time.monotonic() - self.started, 1)
            self.finish(summary, plan_table, kubectl)
        finally:
            stop_process_group(operator)
        return self.check(summary)

    def trainer_env(self) -> dict[str, str]:
        """One thread per trainer process (two "nodes" share the cores); an optional per-step
        delay so a `--kill-a-pod` lands mid-run on a fast machine."""
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        delay = self.args.step_delay
        if delay is None:
            delay = 0.3 if self.args.kill_a_pod else 0.0
        if delay > 0:
            env["LORAJOB_STEP_DELAY_S"] = str(delay)
        return env

    @staticmethod
    def plan_table(job: LoRAJob) -> str:
        """`lorajob plan`'s table: the same planner the operator runs on this spec."""
        from lora_operator.memory.catalog import GpuCatalog
        from lora_operator.memory.errors import PlanningError
        from lora_operator.memory.placement import plan_job
        from lora_operator.memory.report import render_table

        try:
            return render_table(job, plan_job(job.spec, GpuCatalog.default()))
        except PlanningError as exc:
            raise DemoError(f"the demo LoRAJob cannot be planned: {exc}") from None

    def finish(self, summary: dict[str, Any], table: str, kubectl: Kubectl) -> None:
        listing = kubectl.run("get", "lj", "-o", "wide", "-n", summary["namespace"])
        summary["kubectlGetLJ"] = listing
        print(render(summary, table, listing), file=self.out, flush=True)
        if self.args.summary_json:
            self.args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            self.args.summary_json.write_text(json.dumps(summary, indent=2))
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))

    def check(self, summary: dict[str, Any]) -> bool:
        problems = []
        if summary["phase"] != "Succeeded":
            problems.append(f"phase is {summary['phase']}")
        if not summary["adapterComplete"]:
            problems.append(f"adapter files missing at {summary['adapterURI']}")
        if self.args.kill_a_pod and not summary["killedPod"]:
            problems.append("--kill-a-pod: no pod was killed (training ended first)")
        pipeline = summary.get("pipeline")
        if self.args.pipeline and pipeline is not None:
            rollback = pipeline["rollback"]
            if not set(pipeline["adapters"]) <= set(pipeline["models"]):
                problems.append(f"--pipeline: /v1/models lists {pipeline['models']}")
            if rollback["entryURI"] != rollback["r1AdapterURI"]:
                problems.append(
                    f"--pipeline: the entry serves {rollback['entryURI']} after the rollback to r1"
                )
        if problems:
            raise DemoError("; ".join(problems))
        self.say(f"demo finished in {summary['seconds']:.0f}s; files in {self.workdir}")
        return True

    def print_log_tails(self) -> None:
        for path in sorted(self.logs.glob("*.log")) + sorted(
            (self.workdir / "executor" / "logs").glob("*.log")
        ):
            print(f"\n--- {path} (last lines)\n{tail(path)}", file=sys.stderr)


def cli() -> int:
    """Console script `lorajob-demo` (what `make demo` runs)."""
    return main(sys.argv[1:])
