"""Shared serving on KServe's LLMInferenceService, end to end: the real operator process against
an emulator that also serves LLMInferenceService and the Inference Extension's InferencePool
(EmulatedCluster's opt-in flags). Two succeeded shared jobs on one base model get one
LLMInferenceService (with the scheduler asked for) and no InferenceService or ServingRuntime; a
deleted LLMInferenceService comes back at the next reconcile; deleting the last job removes it
(the garbage collector: registry owned by the jobs, server by the registry)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from operator_harness import LORAJOBS, Harness, prepare_harness, start_operator
from test_shared_serving import CMS, ISVCS, RUNTIMES, registry_of, succeed

from lora_devkit.emulator import EmulatedCluster
from lora_devkit.operator_process import stop_operator
from lora_devkit.s3server import S3Server

LLMISVCS = "serving.kserve.io/v1alpha1/llminferenceservices"


@pytest.fixture(scope="module")
def llm_cluster(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("llmisvc")
    with EmulatedCluster(
        workdir / "k8s", kserve=True, llm_inference_service=True, inference_extension=True
    ) as emulated:
        harness = prepare_harness(emulated.client(), s3, emulated.kubeconfig, workdir)
        harness.log_path = workdir / "operator.log"
        harness.operator = start_operator(
            emulated.kubeconfig, harness.config_path, harness.log_path
        )
        yield harness
        stop_operator(harness.operator)


def names(harness: Harness, resource: str) -> list[str]:
    return sorted(i["metadata"]["name"] for i in harness.client.list(resource, harness.namespace))


def test_two_shared_jobs_get_one_llm_inference_service(llm_cluster: Harness) -> None:
    h, home = llm_cluster, llm_cluster.namespace
    server = succeed(h, home, "alpha")["status"]["inferenceService"]
    assert succeed(h, home, "beta")["status"]["inferenceService"] == server
    assert names(h, LLMISVCS) == [server]
    assert names(h, ISVCS) == [] and names(h, RUNTIMES) == []
    reg = registry_of(h, home, server)
    assert sorted(reg["entries"]) == ["alpha", "beta"]
    llmisvc = h.client.get(LLMISVCS, home, server)
    assert llmisvc is not None
    assert llmisvc["metadata"]["ownerReferences"][0]["uid"] == reg["meta"]["uid"]
    assert llmisvc["spec"]["router"] == {"route": {}, "gateway": {}, "scheduler": {}}
    main, sync = llmisvc["spec"]["template"]["containers"]
    assert main["name"] == "main" and sync["name"] == "adapter-sync"

    # deleted: put back at the next reconcile (beta's spec touched to run one now)
    h.client.delete(LLMISVCS, home, server)
    h.client.patch(LORAJOBS, home, "beta", {"spec": {"serving": {"replicas": 2}}}, status=False)
    back = h.wait("LLMInferenceService restored", lambda: h.client.get(LLMISVCS, home, server))
    assert back["spec"] == llmisvc["spec"]

    # the last job out: the registry goes with its owners, the server with the registry
    h.wait(
        "beta's reconcile done",
        lambda: (
            h.status("beta").get("observedGeneration") == h.get("beta")["metadata"]["generation"]
        ),
    )
    h.client.delete(LORAJOBS, home, "alpha")
    h.client.delete(LORAJOBS, home, "beta")
    h.wait(
        "server gone",
        lambda: names(h, LLMISVCS) == [] and h.client.get(CMS, home, server) is None,
    )
    assert names(h, ISVCS) == [] and names(h, RUNTIMES) == []
