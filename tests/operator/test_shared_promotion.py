"""Shared serving through the real operator process against the emulator, level-based: the
promoted run's adapter is the one registered (a retrain under `latest`, a rollback by
`promote: manual`), an adapter vLLM would refuse changes nothing on the registry, a deleted job's
entry goes at once (the watch's DELETED event, not a resync of another job), one deleted while
the operator was down goes at its next start, and a restart keeps every registration. Jobs
succeed through the Job stand-in and a written progress.json (no training). One operator for
all of it (the suite's time budget)."""

from __future__ import annotations

import json
import time
from typing import Any

from job_driver import JobDriver
from operator_harness import LORAJOBS, NAMESPACE, Harness, base_job, start_operator

from lora_contract.layout import S3Location
from lora_devkit.operator_process import stop_operator
from lora_operator.controller.reconcile import SERVED_RESYNC_SECONDS

CMS = "v1/configmaps"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
SHARED = {"serving.enabled": True, "serving.mode": "shared"}


def final(h: Harness, name: str, run: str) -> str:
    return f"{h.run_uri(name, run)}/final"


def succeed_run(h: Harness, name: str, run: str) -> None:
    """Play the Job controller and the trainer for run `run` of `name`: it succeeds."""
    job = f"{name}-{run}"
    h.wait(f"Job {job}", lambda: h.job(job))
    driver = JobDriver(h.client, NAMESPACE)
    driver.start(job)
    h.write_progress(name, run, state="succeeded", step=40, adapterUri=final(h, name, run))
    driver.succeed(job)


def served(h: Harness, name: str) -> str:
    """Wait until `name` serves on a shared server; its name."""
    server: str = h.wait(
        f"{name} on a shared server",
        lambda: (
            (s := h.status(name)).get("inferenceService", "").startswith("lora-server-")
            and s["inferenceService"]
        ),
    )
    return server


def registry(h: Harness, server: str) -> dict[str, Any]:
    obj = h.client.get(CMS, NAMESPACE, server)
    assert obj is not None, f"no registry {server}"
    return obj


def entries(h: Harness, server: str) -> dict[str, dict[str, Any]]:
    """The registry's entries by job name."""
    data = registry(h, server).get("data") or {}
    return {
        json.loads(text)["job"]: json.loads(text)
        for key, text in data.items()
        if key.startswith("adapter.")
    }


def serving_condition(h: Harness, name: str) -> dict[str, Any]:
    return next((c for c in h.status(name).get("conditions") or [] if c["type"] == "Serving"), {})


def test_shared_serving_promotes_refuses_sweeps_and_survives_a_restart(harness: Harness) -> None:
    h = harness
    for name in ("sp-a", "sp-b", "sp-d"):
        h.apply(base_job(name, **SHARED))
        succeed_run(h, name, "r1")
    server = served(h, "sp-a")
    assert served(h, "sp-b") == server and served(h, "sp-d") == server
    h.wait("three entries", lambda: sorted(entries(h, server)) == ["sp-a", "sp-b", "sp-d"])
    # KServe says the server is ready: served jobs are then resynced only every
    # SERVED_RESYNC_SECONDS, so nothing but the deletion itself can sweep in (c)
    ready = {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://shared"}
    h.client.patch(ISVCS, NAMESPACE, server, {"status": ready}, status=True)
    for name in ("sp-a", "sp-b", "sp-d"):
        h.wait(f"{name} Serving", lambda n=name: serving_condition(h, n).get("status") == "True")
    assert entries(h, server)["sp-a"]["run"] == "r1"
    assert h.status("sp-a")["servingRun"] == "r1"

    # (a) a retrain under promote: latest moves the entry to r2; a rollback to r1 moves it back
    h.patch_spec("sp-a", {"training": {"maxSteps": 41}})
    succeed_run(h, "sp-a", "r2")
    h.wait("sp-a's entry on r2", lambda: entries(h, server)["sp-a"]["run"] == "r2")
    assert entries(h, server)["sp-a"]["uri"] == final(h, "sp-a", "r2")
    h.wait("servingRun r2", lambda: h.status("sp-a").get("servingRun") == "r2")
    h.patch_spec("sp-a", {"serving": {"promote": "manual", "run": "r1"}})
    h.wait("sp-a's entry back on r1", lambda: entries(h, server)["sp-a"]["run"] == "r1")
    assert entries(h, server)["sp-a"]["uri"] == final(h, "sp-a", "r1")
    h.wait("servingRun r1", lambda: h.status("sp-a").get("servingRun") == "r1")
    promoted = [e["message"] for e in h.events("sp-a") if e["reason"] == "Promoted"]
    assert "run r2 serves (was r1)" in promoted and "run r1 serves (was r2)" in promoted
    # an unknown run: Serving=False naming it, the entry left on r1
    version = registry(h, server)["metadata"]["resourceVersion"]
    h.patch_spec("sp-a", {"serving": {"run": "r7"}})
    h.wait("UnknownRun", lambda: serving_condition(h, "sp-a").get("reason") == "UnknownRun")
    assert "serving.run" in serving_condition(h, "sp-a")["message"]
    assert registry(h, server)["metadata"]["resourceVersion"] == version
    h.patch_spec("sp-a", {"serving": {"run": "r1"}})
    h.wait("sp-a serving again", lambda: serving_condition(h, "sp-a").get("reason") != "UnknownRun")

    # (b) an adapter vLLM would refuse (modules_to_save): refused, the registry not written
    version = registry(h, server)["metadata"]["resourceVersion"]
    h.apply(base_job("sp-c", **SHARED))
    config = {
        "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
        "r": 8,
        "target_modules": ["q_proj", "v_proj"],
        "modules_to_save": ["lm_head"],
    }
    h.wait("sp-c's run r1", lambda: h.job("sp-c-r1"))
    folder = S3Location.parse(final(h, "sp-c", "r1"))
    h.s3.store().put_json(folder.child("adapter_config.json"), config)
    succeed_run(h, "sp-c", "r1")
    refused = h.wait(
        "sp-c refused",
        lambda: (c := serving_condition(h, "sp-c")).get("reason") == "IncompatibleAdapter" and c,
    )
    assert refused["status"] == "False" and "modules_to_save" in refused["message"]
    assert registry(h, server)["metadata"]["resourceVersion"] == version
    assert "sp-c" not in entries(h, server) and h.status("sp-c").get("servingRun") is None

    # (c) deleting sp-b takes its entry off at once, sp-a untouched (no spec change on it)
    h.wait("sp-a Serving", lambda: serving_condition(h, "sp-a").get("status") == "True")
    a_before = h.get("sp-a")["metadata"]
    start = time.monotonic()
    h.client.delete(LORAJOBS, NAMESPACE, "sp-b")
    h.wait("sp-b's entry swept", lambda: "sp-b" not in entries(h, server), timeout=10)
    took = time.monotonic() - start
    assert took < 5 < SERVED_RESYNC_SECONDS, f"swept after {took:.1f}s"
    owners = sorted(r["name"] for r in registry(h, server)["metadata"]["ownerReferences"])
    assert owners == ["sp-a", "sp-d"] and sorted(entries(h, server)) == ["sp-a", "sp-d"]
    a_after = h.get("sp-a")["metadata"]
    assert a_after["generation"] == a_before["generation"]

    # (d) sp-d deleted while the operator is down: swept by its next start; every other
    # registration survives the restart as it was
    kept = entries(h, server)["sp-a"]
    assert h.operator is not None and h.log_path is not None
    stop_operator(h.operator)
    h.client.delete(LORAJOBS, NAMESPACE, "sp-d")
    h.wait("sp-d gone", lambda: h.client.get(LORAJOBS, NAMESPACE, "sp-d") is None)
    assert "sp-d" in entries(h, server)  # nobody swept it: the operator is down
    h.operator = start_operator(h.kubeconfig, h.config_path, h.log_path)
    h.wait("sp-d's entry swept after the restart", lambda: "sp-d" not in entries(h, server))
    version = registry(h, server)["metadata"]["resourceVersion"]
    h.patch_spec("sp-a", {"serving": {"replicas": 2}})  # a reconcile of sp-a after the restart
    h.wait(
        "sp-a reconciled after the restart",
        lambda: (
            h.status("sp-a").get("observedGeneration") == h.get("sp-a")["metadata"]["generation"]
        ),
    )
    assert entries(h, server) == {"sp-a": kept}
    assert registry(h, server)["metadata"]["resourceVersion"] == version
    assert h.status("sp-a")["servingRun"] == "r1"
