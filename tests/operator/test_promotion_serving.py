"""Promotion, rollback, the compatibility check and lineage through the reconciler in-process:
`FakeKube` (the operator's real `Kube` client over an in-memory API) and moto's S3 holding what
the trainer writes (adapter_config.json, MANIFEST.json's lineage). Two runs: r1 (eval loss
0.9) and r2 after a retraining spec change; the InferenceService's adapter URI says which
serves, status.servingRun says the same."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import BUCKET, SECRET, base_job

from lora_contract.layout import S3Location
from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler

NS = "default"
NAME = "promo"
LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
SECRETS = "/api/v1/namespaces/default/secrets"
EVENTS = "/api/v1/namespaces/default/events"
COMPLETE = [{"type": "Complete", "status": "True"}]
LLAMA = "meta-llama/Llama-3.2-1B"


def final(run: str) -> str:
    return f"s3://{BUCKET}/runs/{NS}/{NAME}/{run}/final"


class World:
    def __init__(self, s3: S3Server, **overrides: Any) -> None:
        self.kube = FakeKube()
        self.store = s3.store()
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(
            {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
        )
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
        self.kube.put(SECRETS, {"metadata": {"name": SECRET, "namespace": NS}, "stringData": keys})
        job = base_job(NAME, **{"serving.enabled": True, "serving.mode": "dedicated", **overrides})
        job["metadata"].update({"uid": "uid-promo", "generation": 1})
        self.kube.put(LJ, job)
        # each test gets its own folder contents (the S3 server is shared by the session)
        self.store.delete_prefix(S3Location(BUCKET, f"runs/{NS}/{NAME}"))

    def reconcile(self) -> dict[str, Any]:
        self.kube.calls.clear()
        asyncio.run(self.reconciler.reconcile(NS, NAME))
        status: dict[str, Any] = (self.kube.obj(LJ, NAME) or {}).get("status", {})
        return status

    def spec(self) -> dict[str, Any]:
        lj = self.kube.obj(LJ, NAME)
        assert lj is not None
        spec: dict[str, Any] = lj["spec"]
        return spec

    def edit(self, path: str, value: Any) -> None:
        node = self.spec()
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        lj = self.kube.obj(LJ, NAME)
        assert lj is not None
        lj["metadata"]["generation"] += 1

    def trainer_wrote(self, run: str, eval_loss: float, **adapter: Any) -> None:
        config = {
            "base_model_name_or_path": LLAMA,
            "revision": None,
            "r": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "modules_to_save": None,
            **adapter,
        }
        folder = S3Location.parse(final(run))
        self.store.put_json(folder.child("adapter_config.json"), config)
        lineage = {
            "baseModel": LLAMA,
            "datasetURI": "pvc://data/train.jsonl",
            "datasetSha256": "d" * 64,
            "trainerImage": "registry.example/trainer@sha256:" + "e" * 64,
            "hyperparameters": {"lora": {"r": 8}},
            "bestEvalLoss": eval_loss - 0.05,
            "adapterSha256": "a" * 64,
            "gpuHours": 0.0,
        }
        self.store.put_json(folder.child("MANIFEST.json"), {"files": {}, "lineage": lineage})
        self.store.put_json(
            S3Location(BUCKET, f"runs/{NS}/{NAME}/{run}/progress.json"),
            {"state": "succeeded", "step": 40, "totalSteps": 40, "evalLoss": eval_loss},
        )

    def finish(self, run: str, eval_loss: float, **adapter: Any) -> dict[str, Any]:
        self.trainer_wrote(run, eval_loss, **adapter)
        job = self.kube.obj(JOBS, f"{NAME}-{run}")
        assert job is not None, f"no Job for {run}"
        job["status"] = {"succeeded": 1, "conditions": COMPLETE}
        return self.reconcile()

    def served(self) -> str:
        isvc = self.kube.obj(ISVC, NAME)
        assert isvc is not None
        uris = isvc["spec"]["predictor"]["model"]["storageUris"]
        return str(next(u["uri"] for u in uris if u["mountPath"].endswith("adapter")))

    def events(self, reason: str) -> list[str]:
        events = self.kube.objects.get(EVENTS, {}).values()
        return [e["message"] for e in events if e["reason"] == reason]

    def two_runs(self, r2_loss: float) -> dict[str, Any]:
        self.reconcile()
        self.finish("r1", 0.9)
        self.edit("training.maxSteps", 41)  # retrains: r2
        status = self.reconcile()
        assert status["currentRun"] == "r2"
        return self.finish("r2", r2_loss)


def serving(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Serving")


@pytest.fixture
def world(s3: S3Server) -> World:
    return World(s3)


def test_lineage_from_the_manifest_lands_in_status_runs(world: World) -> None:
    world.reconcile()
    status = world.finish("r1", 0.9)
    lineage = status["runs"][0]["lineage"]
    assert lineage["datasetSha256"] == "d" * 64
    assert lineage["trainerImage"].endswith("@sha256:" + "e" * 64)
    assert lineage["bestEvalLoss"] == pytest.approx(0.85)
    assert lineage["adapterSha256"] == "a" * 64
    assert lineage["hyperparameters"] == {"lora": {"r": 8}}
    assert status["runs"][0]["finalEvalLoss"] == 0.9
    assert status["servingRun"] == "r1" and world.served() == final("r1")


def test_latest_promotes_every_new_run(world: World) -> None:
    status = world.two_runs(r2_loss=1.2)  # worse, but latest does not look
    assert status["servingRun"] == "r2" and world.served() == final("r2")
    assert world.events("Promoted") == ["run r2 serves (was r1)"]


def test_best_keeps_r1_when_r2_is_worse(s3: S3Server) -> None:
    world = World(s3, **{"serving.promote": "best"})
    status = world.two_runs(r2_loss=1.2)
    assert status["servingRun"] == "r1" and world.served() == final("r1")
    assert status["adapterURI"] == final("r2")  # the newest adapter is still reported
    assert world.events("Promoted") == []


def test_best_promotes_r2_when_it_is_better(s3: S3Server) -> None:
    world = World(s3, **{"serving.promote": "best"})
    status = world.two_runs(r2_loss=0.5)
    assert status["servingRun"] == "r2" and world.served() == final("r2")


def test_manual_rollback_to_r1_is_a_spec_change(world: World) -> None:
    world.two_runs(r2_loss=0.5)
    world.edit("serving.promote", "manual")
    world.edit("serving.run", "r1")
    status = world.reconcile()
    assert status["servingRun"] == "r1" and world.served() == final("r1")
    assert status["currentRun"] == "r2" and len(status["runs"]) == 2  # no retrain
    assert world.events("Promoted") == ["run r2 serves (was r1)", "run r1 serves (was r2)"]


def test_manual_unknown_run_is_refused_and_nothing_changes(world: World) -> None:
    world.two_runs(r2_loss=0.5)
    before = copy.deepcopy(world.kube.obj(ISVC, NAME))
    world.edit("serving.promote", "manual")
    world.edit("serving.run", "r7")
    status = world.reconcile()
    assert serving(status)["status"] == "False" and serving(status)["reason"] == "UnknownRun"
    assert serving(status)["message"].startswith("serving.run: run r7 is not in status.runs")
    assert world.kube.obj(ISVC, NAME) == before and status["servingRun"] == "r2"
    assert not [c for c in world.kube.calls if c[1] == "inferenceservices" and c[2] != "get"]


def test_an_incompatible_adapter_is_not_served_and_names_the_field(world: World) -> None:
    world.reconcile()
    status = world.finish("r1", 0.9, target_modules=["q_proj", "lm_head"])
    condition = serving(status)
    assert (condition["status"], condition["reason"]) == ("False", "IncompatibleAdapter")
    assert condition["message"].startswith(
        "run r1 cannot be served by vLLM: adapter_config.json target_modules: vLLM serves no "
        "LoRA on lm_head for model_type llama"
    )
    assert world.kube.obj(ISVC, NAME) is None and "servingRun" not in status


def test_an_incompatible_r2_leaves_r1_serving(world: World) -> None:
    world.reconcile()
    world.finish("r1", 0.9)
    before = copy.deepcopy(world.kube.obj(ISVC, NAME))
    world.edit("training.maxSteps", 41)
    world.reconcile()
    status = world.finish("r2", 0.5, base_model_name_or_path="/scratch/base")
    assert serving(status)["reason"] == "IncompatibleAdapter"
    assert (
        "adapter_config.json base_model_name_or_path: '/scratch/base'" in serving(status)["message"]
    )
    assert world.kube.obj(ISVC, NAME) == before and status["servingRun"] == "r1"


def test_a_spec_vllm_would_not_serve_is_warned_about_when_the_run_starts(s3: S3Server) -> None:
    world = World(s3, **{"lora.targetModules": ["q_proj", "lm_head"]})
    status = world.reconcile()
    assert status["phase"] == "Running"  # training goes ahead
    assert world.events("IncompatibleAdapter") == [
        "vLLM will not serve this run's adapter: lora.targetModules: vLLM serves no LoRA on "
        "lm_head for model_type llama (supported: down_proj, gate_proj, k_proj, o_proj, q_proj, "
        "up_proj, v_proj)"
    ]


def test_a_servable_spec_or_serving_off_gets_no_warning(s3: S3Server) -> None:
    assert World(s3).events("IncompatibleAdapter") == []
    world = World(s3)
    world.reconcile()
    assert world.events("IncompatibleAdapter") == []
    off = World(s3, **{"serving.enabled": False, "lora.useDora": True})
    off.reconcile()
    assert off.events("IncompatibleAdapter") == []
