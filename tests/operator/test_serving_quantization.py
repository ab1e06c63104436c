"""`serving.quantization` (none | nf4; int8 refused): the refusals naming the field, the spec hash
it leaves alone, vLLM's flags through `server_size` (dedicated and shared servers alike), and
the shared server key that follows the served weights, not the training's: a QLoRA-trained and a
LoRA-trained job of one base model share one 16-bit server, and a QLoRA job an older operator
put on an nf4-keyed server moves to the new one at its next reconcile, leaving the old one
through `leave_shared_serving`. The reconciler in-process against `FakeKube`; no training."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import SECRET, base_job, gpu_job

from lora_contract.types import LoRAJobSpec, ResourceAmounts, ServingPlanStatus
from lora_devkit.s3server import S3Server
from lora_operator.api.hashing import training_spec_hash
from lora_operator.api.loading import SpecError, parse_lorajob
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller import shared_serving
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler
from lora_operator.controller.serving import build_inference_service, server_size
from lora_operator.controller.shared_registry import ServerKey, server_key

LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
CMS = "/api/v1/namespaces/default/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
SECRETS = "/api/v1/namespaces/default/secrets"
COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
BNB = ["--quantization=bitsandbytes", "--load-format=bitsandbytes"]
BASE = "meta-llama/Llama-3.2-1B"
SOURCE = "pvc://models/llama-1b"


def spec_of(name: str = "q", **overrides: Any) -> LoRAJobSpec:
    return parse_lorajob(gpu_job(name, 1, **overrides), "test").spec


def refusal(job: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as refused:
        parse_lorajob(job, "test")
    (problem,) = refused.value.problems
    return problem


def test_int8_is_refused_naming_the_field_and_why() -> None:
    assert refusal(gpu_job("q", 1, **{"serving.quantization": "int8"})) == (
        "spec.serving.quantization: int8 is not servable: vLLM quantizes a 16-bit checkpoint "
        "in flight to 4-bit only (bitsandbytes); use nf4 or none (got 'int8')"
    )


ON_CPU = (
    "spec: spec.serving.quantization nf4 needs a CUDA GPU (bitsandbytes): the server runs on "
    "'cpu' (serving.gpuType, else resources.gpuType); use none"
)


def test_nf4_served_on_cpu_is_refused_and_a_gpu_serving_type_is_not() -> None:
    assert refusal(base_job("q", **{"serving.quantization": "nf4"})) == ON_CPU
    on_a100 = gpu_job("q", 1, **{"serving.quantization": "nf4", "serving.gpuType": "cpu"})
    assert refusal(on_a100) == ON_CPU
    # trained on CPU, served on an A100: bitsandbytes runs where vLLM runs
    job = base_job("q", **{"serving.quantization": "nf4", "serving.gpuType": "A100-80GB"})
    assert parse_lorajob(job, "test").spec.serving.quantization.value == "nf4"


def test_the_served_precision_never_moves_the_spec_hash() -> None:
    plain = training_spec_hash(spec_of())
    assert training_spec_hash(spec_of(**{"serving.quantization": "none"})) == plain
    assert training_spec_hash(spec_of(**{"serving.quantization": "nf4"})) == plain
    # while the training's quantization does (a control: the hash is not blind)
    assert training_spec_hash(spec_of(**{"quantization.mode": "nf4"})) != plain


def plan(*args: str) -> ServingPlanStatus:
    return ServingPlanStatus(
        gpu_type="A100-80GB",
        gpus=1,
        tensor_parallel_size=1,
        vllm_args=["--max-model-len=8192", *args, "--tensor-parallel-size=1"],
        requests=ResourceAmounts(cpu="4", memory="12Gi"),
        limits=ResourceAmounts(memory="12Gi"),
    )


def test_server_size_takes_the_flags_from_the_spec() -> None:
    nf4 = spec_of(**{"serving.quantization": "nf4"})
    # no plan (serving was off when it planned): vLLM's defaults and the flags
    assert server_size(nf4, None).vllm_args == tuple(BNB)
    assert server_size(spec_of(), None).vllm_args == ()
    # the plan's sizing flags kept, its quantization flags replaced by the spec's
    sized = ("--max-model-len=8192", "--tensor-parallel-size=1")
    assert server_size(nf4, plan(*BNB)).vllm_args == (*sized, *BNB)
    assert server_size(nf4, plan()).vllm_args == (*sized, *BNB)
    assert server_size(spec_of(), plan(*BNB)).vllm_args == sized


def test_the_dedicated_server_runs_vllm_with_the_flags() -> None:
    nf4 = spec_of("ded", **{"serving.quantization": "nf4"})
    isvc = build_inference_service("ded", "default", "uid-ded", nf4, "s3://b/a", "r1", True)
    args = isvc["spec"]["predictor"]["model"]["args"]
    assert args[-2:] == BNB and args.count("--quantization=bitsandbytes") == 1
    plain = build_inference_service("ded", "default", "uid", spec_of(), "s3://b/a", "r1", True)
    assert not [a for a in plain["spec"]["predictor"]["model"]["args"] if "bitsandbytes" in a]


def digest(quantization: str) -> str:
    """The registry name's digest, worked out from the key's definition."""
    text = json.dumps([BASE, "", SOURCE, quantization], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_the_key_is_the_served_precision_not_the_trained_one() -> None:
    lora, qlora = spec_of(), spec_of(**{"quantization.mode": "nf4"})
    assert server_key(lora) == server_key(qlora) == ServerKey(BASE, "", SOURCE, "none")
    assert server_key(lora).name == f"lora-server-{digest('none')}"  # LoRA jobs keep their name
    served4 = spec_of(**{"quantization.mode": "nf4", "serving.quantization": "nf4"})
    assert server_key(served4).name == f"lora-server-{digest('nf4')}"


class World:
    def __init__(self, s3: S3Server) -> None:
        self.kube = FakeKube()
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(
            {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
        )
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
        self.kube.put(SECRETS, {"metadata": {"name": SECRET}, "stringData": keys})

    def served(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A shared job on one A100 with its run r1 succeeded and served; its status."""
        shared = {"serving.enabled": True, "serving.mode": "shared"}
        job = gpu_job(name, 1, **shared, **overrides)
        job["metadata"].update({"namespace": "default", "uid": f"uid-{name}", "generation": 1})
        self.kube.put(LJ, job)
        self.reconcile(name)
        self.kube.obj(JOBS, f"{name}-r1")["status"] = copy.deepcopy(COMPLETE)  # type: ignore[index]
        return self.reconcile(name)

    def reconcile(self, name: str) -> dict[str, Any]:
        asyncio.run(self.reconciler.reconcile("default", name))
        status: dict[str, Any] = self.kube.obj(LJ, name)["status"]  # type: ignore[index]
        return status

    def uids_on(self, server: str) -> list[str]:
        data = self.kube.obj(CMS, server)["data"]  # type: ignore[index]
        return sorted(k.removeprefix("adapter.") for k in data if k.startswith("adapter."))

    def server_args(self, server: str) -> list[str]:
        data = self.kube.obj(CMS, server)["data"]  # type: ignore[index]
        args: list[str] = json.loads(data["server.json"])["vllmArgs"]
        return args

    def ready(self, server: str) -> None:
        self.kube.obj(ISVCS, server)["status"] = {  # type: ignore[index]
            "conditions": [{"type": "Ready", "status": "True"}]
        }


@pytest.fixture
def world(s3: S3Server) -> Iterator[World]:
    yield World(s3)


def test_a_qlora_and_a_lora_job_share_one_16_bit_server(world: World) -> None:
    one = world.served("lora")
    two = world.served("qlora", **{"quantization.mode": "nf4"})
    server = f"lora-server-{digest('none')}"
    assert one["inferenceService"] == two["inferenceService"] == server
    assert sorted(world.kube.objects[ISVCS]) == [server]
    assert world.uids_on(server) == ["uid-lora", "uid-qlora"]
    assert not [a for a in world.server_args(server) if "bitsandbytes" in a]
    # served at 4 bits: a server of its own, vLLM told so (server.json sizes its runtime)
    four = world.served("four", **{"quantization.mode": "nf4", "serving.quantization": "nf4"})
    assert four["inferenceService"] == f"lora-server-{digest('nf4')}"
    assert world.server_args(four["inferenceService"])[-2:] == BNB


def old_server_key(spec: LoRAJobSpec) -> ServerKey:
    """The key before serving.quantization: the training's quantization.mode."""
    base = spec.base_model
    return ServerKey(base.name, base.revision or "", base.source, spec.quantization.mode.value)


def test_a_qlora_job_leaves_its_old_nf4_keyed_server_for_the_new_key(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = f"lora-server-{digest('nf4')}", f"lora-server-{digest('none')}"
    with monkeypatch.context() as before_upgrade:
        before_upgrade.setattr(shared_serving, "server_key", old_server_key)
        status = world.served("qlora", **{"quantization.mode": "nf4"})
        stays = world.served("other", **{"quantization.mode": "nf4"})
    assert status["inferenceService"] == stays["inferenceService"] == old
    assert world.uids_on(old) == ["uid-other", "uid-qlora"]

    status = world.reconcile("qlora")  # the upgraded operator's next pass
    world.ready(new)
    status = world.reconcile("qlora")
    assert status["inferenceService"] == new and status["servingRun"] == "r1"
    assert world.uids_on(new) == ["uid-qlora"]
    # left the old server through leave_shared_serving: its entry and owner reference gone
    assert world.uids_on(old) == ["uid-other"]
    owners = world.kube.obj(CMS, old)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [r["uid"] for r in owners] == ["uid-other"]
    assert world.kube.obj(ISVCS, old) is not None  # still serves "other"

    world.reconcile("other")  # the last one moves: the old server stops
    assert world.uids_on(old) == []
    assert world.kube.obj(ISVCS, old) is None
    assert world.uids_on(new) == ["uid-other", "uid-qlora"]
