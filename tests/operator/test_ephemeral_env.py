"""The trainer pod is told its ephemeral-storage request (LORAJOB_EPHEMERAL_STORAGE_REQUEST), so a
trainer that fills its disk can say how much it had and what to raise: the request as the pod
gets it, the user's override winning over the plan's."""

from __future__ import annotations

import dataclasses

from operator_harness import gpu_job
from test_manifests import context, env_of, spec_of

from lora_contract import pod
from lora_operator.controller.manifests import build_job


def test_the_planned_request_is_in_the_env() -> None:
    ctx = context(gpu_job("eph-env", 2))
    planned = ctx.plan.requests.ephemeral_storage
    assert planned  # the plan always sizes scratch disk
    job = build_job(ctx)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert env_of(job)[pod.ENV_EPHEMERAL_STORAGE] == planned
    assert resources["requests"]["ephemeral-storage"] == planned


def test_an_override_is_what_the_trainer_is_told() -> None:
    planned = context(gpu_job("eph-over", 2))
    overrides = {"resources.requests": {"ephemeralStorage": "50Gi"}}
    ctx = dataclasses.replace(planned, spec=spec_of(gpu_job("eph-over", 2, **overrides)))
    assert planned.plan.requests.ephemeral_storage != "50Gi"
    assert env_of(build_job(ctx))[pod.ENV_EPHEMERAL_STORAGE] == "50Gi"


def test_no_request_no_variable() -> None:
    ctx = context(gpu_job("eph-none", 2))
    requests = ctx.plan.requests.model_copy(update={"ephemeral_storage": None})
    bare = dataclasses.replace(ctx, plan=ctx.plan.model_copy(update={"requests": requests}))
    assert pod.ENV_EPHEMERAL_STORAGE not in env_of(build_job(bare))
