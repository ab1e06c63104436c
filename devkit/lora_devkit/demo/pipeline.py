"""`lorajob-demo --pipeline`: after the first job, the rest of the serving story on one shared
server (docs/serving.md). A second LoRAJob on the same tiny base model in the same namespace
(`examples/sft-then-dpo-tiny-cpu.yaml`: DPO from the first job's adapter through
`spec.baseAdapter`) joins the first job's shared server while the first job retrains (a
learning-rate change retrains; side by side to save minutes: the second job starts from r1, the
run serving when it starts); the KServe stand-in's `/v1/models` lists both adapters and r2 is
promoted (`promote: latest`); then the real `lorajob promote NS/JOB r1` rolls back, and the
registry entry and the folder the syncer downloaded are back on r1's URI.

Why a module of its own: the single-job flow in main.py stays as it was; everything this adds
reads back what the operator recorded (LoRAJob status, the registry ConfigMap) and what the
server lists, so the summary is evidence, not the demo's own belief.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from lora_contract.adapter_registry import ENTRY_PREFIX, Entry
from lora_contract.types import LoRAJob

from ..emulator import ApiError, EmulatedCluster, RestClient
from ..executor import LocalExecutor
from ..kserve_standin import KServeStandIn
from ..tinymodel import example_pairs, write_jsonl
from .follow import LORAJOBS, Follower
from .workspace import REPO, DemoError, Kubectl, demo_manifest, pvc_path, write_manifest

DPO_EXAMPLE = REPO / "examples" / "sft-then-dpo-tiny-cpu.yaml"
DPO_ADAPTER = "tiny-dpo"
RETRAIN_LEARNING_RATE = 2.0e-3  # training.learningRate retrains (Retrain metadata): run r2
CONFIG_MAPS = "v1/configmaps"
T = TypeVar("T")


def shared(manifest: dict[str, Any], adapter: str) -> dict[str, Any]:
    """The manifest serving on its base model's shared server under `adapter`."""
    serving = manifest["spec"].setdefault("serving", {})
    serving.update({"enabled": True, "mode": "shared", "adapterName": adapter})
    return manifest


def second_manifest(first: dict[str, Any], steps: int | None) -> dict[str, Any]:
    """The SFT-then-DPO example, adapted as `demo_manifest` adapts the default: DPO from the
    first job's adapter, on its shared server."""
    manifest = demo_manifest(DPO_EXAMPLE, steps)
    manifest["spec"]["baseAdapter"] = {"job": first["metadata"]["name"]}
    return shared(manifest, DPO_ADAPTER)


def preference_rows(n: int) -> list[dict[str, str]]:
    """Pairs whose chosen answer follows the data's rule and whose rejected one never does."""
    return [
        {"prompt": f"Q: {q}\nA:", "chosen": f" {a}", "rejected": " coconut coconut coconut."}
        for q, a in example_pairs(n)
    ]


def served_models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
        body = json.loads(response.read())
    return [str(model["id"]) for model in body["data"]]


def listing_all(url: str, adapters: list[str]) -> list[str] | None:
    """`/v1/models` once it lists every adapter, else None."""
    models = served_models(url)
    return models if set(adapters) <= set(models) else None


def registry_entries(client: RestClient, namespace: str, server: str) -> dict[str, Entry]:
    """The registry ConfigMap's entries by job name."""
    registry = client.get(CONFIG_MAPS, namespace, server) or {}
    found: dict[str, Entry] = {}
    for key, value in (registry.get("data") or {}).items():
        entry = Entry.from_data(value) if key.startswith(ENTRY_PREFIX) else None
        if entry is not None:
            found[entry.job] = entry
    return found


def run_adapter(status: dict[str, Any], run_id: str) -> str | None:
    """The adapter URI the operator recorded for a run."""
    for run in status.get("runs") or []:
        if run.get("id") == run_id:
            return run.get("adapterURI") or (
                f"{str(run['outputURI']).rstrip('/')}/final" if run.get("outputURI") else None
            )
    return None


@dataclass
class Pipeline:
    """The steps after the first job; `run()` returns the facts for the summary."""

    first: dict[str, Any]  # the first job's manifest (already Succeeded, serving shared)
    cluster: EmulatedCluster
    kubectl: Kubectl
    executor: LocalExecutor
    kserve: KServeStandIn
    operator: subprocess.Popen[bytes]
    workdir: Path
    out: TextIO
    say: Callable[[str], None]
    steps: int | None
    deadline: float  # time.monotonic() by which everything must be done
    started: float

    @property
    def namespace(self) -> str:
        return str(self.first["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.first["metadata"]["name"])

    def run(self) -> dict[str, Any]:
        """The second job and the first one's retrain run side by side (the second starts from
        r1, the run serving when it starts); then both adapters are listed and r2 serves; then
        the rollback."""
        client = self.cluster.client()
        second = self.apply_second()
        self.start_retrain()
        done = self.follow(second.metadata.name)
        retrain = self.retrain(client)
        server = retrain["server"]
        if (done.get("status") or {}).get("inferenceService") != server:
            raise DemoError(
                f"the two jobs are not on one shared server ({server} and "
                f"{(done.get('status') or {}).get('inferenceService')})"
            )
        adapters = [self.adapter_name(self.first), self.adapter_name(second)]
        url = self.wait(lambda: self.kserve.url(self.namespace, server), "the shared server")
        models = self.wait(
            lambda: listing_all(url, adapters),
            f"{' and '.join(adapters)} in {url}/v1/models",
        )
        self.say(f"shared server {server} at {url}: GET /v1/models lists {', '.join(models)}")
        listing = self.kubectl.run("get", "lj", "-o", "wide", "-n", self.namespace)
        print(f"$ kubectl get lj -o wide\n{listing.rstrip()}", file=self.out, flush=True)

        rollback = self.rollback(client, server)
        final_listing = self.kubectl.run("get", "lj", "-o", "wide", "-n", self.namespace)
        print(f"$ kubectl get lj -o wide\n{final_listing.rstrip()}", file=self.out, flush=True)
        runs = (done.get("status") or {}).get("runs") or [{}]
        return {
            "server": server,
            "serverURL": url,
            "secondJob": second.metadata.name,
            "secondMethod": second.spec.method.value,
            "secondStartedFrom": runs[-1].get("baseAdapter"),
            "secondPhase": (done.get("status") or {}).get("phase"),
            "adapters": adapters,
            "models": models,
            "kubectlGetLJ": listing,
            "retrain": {k: v for k, v in retrain.items() if k != "server"},
            "rollback": rollback,
            "finalKubectlGetLJ": final_listing,
        }

    # -- the steps

    def apply_second(self) -> LoRAJob:
        manifest = second_manifest(self.first, self.steps)
        job = write_manifest(manifest, self.workdir / f"{manifest['metadata']['name']}.yaml")
        if job.spec.method == "dpo":
            rows = preference_rows(job.spec.dataset.num_examples or 400)
            write_jsonl(pvc_path(self.workdir / "pvc", job.spec.dataset.source), rows)
        applied = self.kubectl.apply_file(self.workdir / f"{job.metadata.name}.yaml")
        what = f"{job.spec.method.value} from {self.name}'s adapter"
        self.say(f"second job ({what}), same base model, shared serving: {applied.strip()}")
        return job

    def start_retrain(self) -> None:
        patch = json.dumps({"spec": {"training": {"learningRate": RETRAIN_LEARNING_RATE}}})
        out = self.kubectl.run(
            "patch", "lj", self.name, "-n", self.namespace, "--type=merge", "-p", patch
        )
        self.say(f"retrain {self.name} (training.learningRate retrains): {out.strip()}")

    def retrain(self, client: RestClient) -> dict[str, Any]:
        """Run r2 to its end and its promotion (`promote: latest`) on the shared server."""
        self.wait(lambda: self.status(self.name).get("currentRun") == "r2", "run r2 to start")
        self.follow(self.name)
        status = self.wait(lambda: self.serving("r2"), "r2 to be promoted (status.servingRun)")
        server = str(status.get("inferenceService") or "")
        entry = self.wait_entry(client, server, run_adapter(status, "r2"))
        self.say(f"r2 promoted (promote: latest): the registry entry serves {entry.uri}")
        return {
            "server": server,
            "servingRun": status.get("servingRun"),
            "entryURI": entry.uri,
            "entryRun": entry.run,
        }

    def rollback(self, client: RestClient, server: str) -> dict[str, Any]:
        target = f"{self.namespace}/{self.name}"
        command = [sys.executable, "-m", "lora_operator.cli", "promote", target, "r1"]
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise DemoError(f"lorajob promote {target} r1 failed: {result.stderr.strip()}")
        self.say(f"$ lorajob promote {target} r1\n{result.stdout.rstrip()}")
        status = self.wait(
            lambda: self.serving("r1"),
            "the rollback to r1 (status.servingRun)",
        )
        obj = self.cluster.client().get(LORAJOBS, self.namespace, self.name) or {}
        serving = (obj.get("spec") or {}).get("serving") or {}
        r1 = run_adapter(status, "r1")
        entry = self.wait_entry(client, server, r1)
        synced = self.wait(lambda: self.synced_uri(server, entry.adapter, r1), "the r1 folder")
        self.say(
            f"rolled back: status.servingRun r1, the registry entry and the synced folder "
            f"serve {entry.uri}"
        )
        return {
            "servingRun": status.get("servingRun"),
            "promote": serving.get("promote"),
            "run": serving.get("run"),
            "r1AdapterURI": r1,
            "entryURI": entry.uri,
            "entryRun": entry.run,
            "syncedURI": synced,
        }

    # -- reading back

    def status(self, name: str) -> dict[str, Any]:
        try:
            obj = self.cluster.client().get(LORAJOBS, self.namespace, name)
        except (ApiError, OSError):
            return {}
        return dict((obj or {}).get("status") or {})

    def serving(self, run_id: str) -> dict[str, Any] | None:
        """The first job's status once `run_id` serves (status.servingRun), else None."""
        status = self.status(self.name)
        return status if status.get("servingRun") == run_id else None

    @staticmethod
    def adapter_name(manifest: dict[str, Any] | LoRAJob) -> str:
        if isinstance(manifest, LoRAJob):
            return manifest.spec.serving.adapter_name or manifest.metadata.name
        serving = manifest["spec"].get("serving") or {}
        return str(serving.get("adapterName") or manifest["metadata"]["name"])

    def synced_uri(self, server: str, adapter: str, uri: str | None) -> str | None:
        """The URI the syncer last downloaded into the server's folder for `adapter`."""
        for running in self.kserve.servers.values():
            if running.name == server:
                marker = running.adapters / adapter / ".lora-source"
                text = marker.read_text() if marker.is_file() else None
                return text if text == uri else None
        return None

    def wait_entry(self, client: RestClient, server: str, uri: str | None) -> Entry:
        if uri is None:
            raise DemoError(f"{self.name}: the run has no recorded adapter URI")

        def entry() -> Entry | None:
            found = registry_entries(client, self.namespace, server).get(self.name)
            return found if found is not None and found.uri == uri else None

        return self.wait(entry, f"the registry entry of {self.name} to serve {uri}")

    def follow(self, name: str) -> dict[str, Any]:
        follower = Follower(
            self.cluster.client(),
            self.namespace,
            name,
            self.executor,
            self.operator,
            self.out,
            clock=time.monotonic,
            started=self.started,
        )
        return follower.follow(self.deadline - self.started)

    def wait(self, probe: Callable[[], T | None], what: str) -> T:
        while True:
            if self.operator.poll() is not None:
                raise DemoError(f"the operator exited with code {self.operator.returncode}")
            try:
                value = probe()
            except (ApiError, OSError):
                value = None
            if value:
                return value
            if time.monotonic() > self.deadline:
                raise DemoError(f"timed out waiting for {what}")
            time.sleep(0.3)
