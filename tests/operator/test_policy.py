"""The platform policy's rules, pure: each refusal names the spec field and the policy field, the
defaults are the safe ones, and a policy edit applies through the hot-reloaded config file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube import FakeKube
from operator_harness import base_job

from lora_contract.types import LoRAJobSpec
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import CREDENTIALS_OPT_IN_LABEL, OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.policy import (
    endpoint_key,
    forbidden_address,
    policy_refusals,
    spec_refusals,
)

IMAGE = "ghcr.io/lora-operator/trainer:0.1.0"
PLATFORM_S3 = "http://minio.lora-system.svc:9000"
SECRETS = "/api/v1/namespaces/default/secrets"


def spec(**overrides: Any) -> LoRAJobSpec:
    return parse_lorajob(base_job("p", **overrides), "test").spec


def config(**policy: Any) -> OperatorConfig:
    return OperatorConfig.model_validate(
        {
            "trainerImage": IMAGE,
            "s3": {"endpoint": PLATFORM_S3, "credentialsSecret": {"name": "platform-s3"}},
            "policy": policy,
        }
    )


def refusals(job_spec: LoRAJobSpec, cfg: OperatorConfig | None = None) -> list[str]:
    return spec_refusals(job_spec, cfg or config())


def test_a_plain_job_passes_every_rule() -> None:
    assert refusals(spec()) == []


# ---------------------------------------------------------------------- trainer image


def test_a_foreign_trainer_image_is_refused_naming_both_fields() -> None:
    (refusal,) = refusals(spec(trainerImage="evil/img:1"))
    assert refusal == (
        "spec.trainerImage: 'evil/img:1' is not allowed by the platform policy "
        f"(policy.allowedTrainerImages: {IMAGE})"
    )


def test_the_configured_trainer_image_is_always_allowed() -> None:
    assert refusals(spec(trainerImage=IMAGE)) == []
    assert refusals(spec(trainerImage=IMAGE), config(allowedTrainerImages=["x/y:1"])) == []


@pytest.mark.parametrize(
    ("entry", "image", "allowed"),
    [
        ("registry.corp/ml/", "registry.corp/ml/trainer:2", True),
        ("registry.corp/ml/", "registry.corp/mlx/trainer:2", False),
        ("registry.corp/ml/trainer:", "registry.corp/ml/trainer:2.1-cuda", True),
        ("registry.corp/ml/trainer:", "registry.corp/ml/trainer-evil:2", False),
        ("registry.corp/ml/trainer@", "registry.corp/ml/trainer@sha256:" + "a" * 64, True),
        ("registry.corp/ml/trainer@", "registry.corp/ml/trainer:latest", False),
        ("registry.corp/ml/trainer:2", "registry.corp/ml/trainer:2", True),
        ("registry.corp/ml/trainer:2", "registry.corp/ml/trainer:20", False),  # exact
        ("registry.corp/ml", "registry.corp/ml/trainer:2", False),  # no '/' end: exact
    ],
)
def test_image_entries_are_exact_or_prefixes_ending_in_a_separator(
    entry: str, image: str, allowed: bool
) -> None:
    found = refusals(spec(trainerImage=image), config(allowedTrainerImages=[entry]))
    assert (found == []) is allowed, found


# ---------------------------------------------------------------------- S3 endpoint


def test_only_the_platforms_endpoint_by_default() -> None:
    assert refusals(spec(**{"output.endpoint": PLATFORM_S3})) == []
    (refusal,) = refusals(spec(**{"output.endpoint": "https://attacker.example"}))
    assert refusal == (
        "spec.output.endpoint: 'https://attacker.example' is not allowed by the platform policy "
        f"(policy.allowedS3Endpoints: {PLATFORM_S3})"
    )


def test_endpoints_compare_after_normalising_scheme_port_and_case() -> None:
    cfg = config(allowedS3Endpoints=["s3.example.com", "http://store:9000"])
    for same in ("https://s3.example.com", "https://S3.Example.com:443", "http://store:9000"):
        assert refusals(spec(**{"output.endpoint": same}), cfg) == [], same
    for other in ("http://s3.example.com", "https://s3.example.com:8443", "http://store:9001"):
        assert refusals(spec(**{"output.endpoint": other}), cfg), other
    assert endpoint_key("http://H:80") == endpoint_key("http://h") == (False, "h")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254",
        "http://169.254.169.254:80",
        "http://[fd00:ec2::254]",
        "http://[fe80::1]:9000",
        "http://[::ffff:169.254.169.254]",
        "http://2852039166",  # 169.254.169.254 as one number
        "http://metadata.google.internal",
        "http://Metadata.Google.Internal.",
        "http://user@169.254.169.254",
        "http://127.0.0.1:9000",
        "http://localhost:9000",
        "http://[::1]:9000",
        "http://0.0.0.0:9000",
    ],
)
def test_metadata_and_loopback_addresses_are_refused_by_name(endpoint: str) -> None:
    (refusal,) = refusals(spec(**{"output.endpoint": endpoint}))
    assert refusal.startswith(f"spec.output.endpoint: {endpoint!r} is a")
    assert "refused by the platform policy unless listed in policy.allowedS3Endpoints" in refusal


def test_an_explicit_entry_wins_over_the_address_rule() -> None:
    cfg = config(allowedS3Endpoints=["http://127.0.0.1:9000"])
    assert refusals(spec(**{"output.endpoint": "http://127.0.0.1:9000"}), cfg) == []
    assert refusals(spec(**{"output.endpoint": "http://127.0.0.1:9001"}), cfg)


def test_without_any_platform_endpoint_no_endpoint_is_allowed() -> None:
    cfg = OperatorConfig.model_validate({"trainerImage": IMAGE})
    (refusal,) = refusals(spec(**{"output.endpoint": "https://s3.example.com"}), cfg)
    assert "(policy.allowedS3Endpoints: none: it is empty and the config has no s3.endpoint)" in (
        refusal
    )


def test_an_unparsable_endpoint_is_refused_not_raised() -> None:
    (refusal,) = refusals(spec(**{"output.endpoint": "http://[fd00:ec2::254"}))
    assert refusal.startswith("spec.output.endpoint: S3 endpoint 'http://[fd00:ec2::254'")


def test_ordinary_hosts_are_not_special() -> None:
    for host in ("minio.s3.svc", "10.0.0.5", "s3.amazonaws.com", "1e100.net", "metadata-store"):
        assert forbidden_address(host) is None, host


def test_a_malformed_allowed_endpoint_is_a_config_error() -> None:
    for bad in ("ftp://x", "not a url", "http://h/path", ""):
        with pytest.raises(ValueError, match="allowedS3Endpoints"):
            config(allowedS3Endpoints=[bad])


# ---------------------------------------------------------------------- priority class


def test_system_priority_classes_are_refused_by_default() -> None:
    (refusal,) = refusals(spec(**{"resources.priorityClassName": "system-node-critical"}))
    assert refusal == (
        "spec.resources.priorityClassName: 'system-node-critical' is not allowed by the platform "
        "policy (policy.allowedPriorityClasses is unset: any class but system-*)"
    )
    assert refusals(spec(**{"resources.priorityClassName": "batch-low"})) == []


def test_a_priority_class_list_allows_only_its_entries() -> None:
    cfg = config(allowedPriorityClasses=["batch-low", "system-cluster-critical"])
    assert refusals(spec(**{"resources.priorityClassName": "batch-low"}), cfg) == []
    assert refusals(spec(**{"resources.priorityClassName": "system-cluster-critical"}), cfg) == []
    (refusal,) = refusals(spec(**{"resources.priorityClassName": "batch-high"}), cfg)
    assert "(policy.allowedPriorityClasses: batch-low, system-cluster-critical)" in refusal
    (refusal,) = refusals(
        spec(**{"resources.priorityClassName": "batch-low"}), config(allowedPriorityClasses=[])
    )
    assert "(policy.allowedPriorityClasses: none)" in refusal


# ---------------------------------------------------------------------- credentials Secret


def secret_refusals(kube: FakeKube, job_spec: LoRAJobSpec, cfg: OperatorConfig) -> list[str]:
    return asyncio.run(policy_refusals(kube, "default", job_spec, cfg))


def put_secret(kube: FakeKube, name: str, labels: dict[str, str] | None = None) -> None:
    kube.put(
        SECRETS,
        {"metadata": {"name": name, "namespace": "default", "labels": labels or {}}, "data": {}},
    )


def test_a_secret_without_the_opt_in_label_is_refused() -> None:
    kube = FakeKube()
    put_secret(kube, "db-password")
    job = spec(**{"output.credentialsSecret": {"name": "db-password", "accessKeyKey": "user"}})
    (refusal,) = secret_refusals(kube, job, config())
    assert refusal == (
        "spec.output.credentialsSecret: Secret 'db-password' is not usable as job credentials by "
        "the platform policy (policy.requireSecretOptIn: the Secret must carry the label "
        f"{CREDENTIALS_OPT_IN_LABEL}=true)"
    )
    put_secret(kube, "db-password", {CREDENTIALS_OPT_IN_LABEL: "yes"})
    assert secret_refusals(kube, job, config())  # only 'true' opts in
    put_secret(kube, "db-password", {CREDENTIALS_OPT_IN_LABEL: "true"})
    assert secret_refusals(kube, job, config()) == []


def test_a_missing_secret_is_refused_and_a_custom_label_is_used() -> None:
    kube = FakeKube()
    job = spec(**{"output.credentialsSecret": {"name": "team-s3"}})
    (refusal,) = secret_refusals(kube, job, config())
    assert "Secret 'team-s3' not found in default" in refusal
    put_secret(kube, "team-s3", {CREDENTIALS_OPT_IN_LABEL: "true"})
    cfg = config(secretOptInLabel="corp.example/ml-credentials")
    (refusal,) = secret_refusals(kube, job, cfg)
    assert "corp.example/ml-credentials=true" in refusal


def test_the_platforms_own_secret_and_a_disabled_check_need_no_label() -> None:
    kube = FakeKube()
    put_secret(kube, "platform-s3")
    put_secret(kube, "anything")
    own = spec(**{"output.credentialsSecret": {"name": "platform-s3"}})
    assert secret_refusals(kube, own, config()) == []
    assert secret_refusals(kube, spec(), config()) == []  # the default Secret
    anything = spec(**{"output.credentialsSecret": {"name": "anything"}})
    assert secret_refusals(kube, anything, config(requireSecretOptIn=False)) == []
    assert kube.calls == []  # none of these read a Secret


def test_every_refusal_is_reported_at_once() -> None:
    kube = FakeKube()
    job = spec(
        trainerImage="evil/img:1",
        **{
            "output.endpoint": "http://169.254.169.254",
            "output.credentialsSecret": {"name": "db-password"},
            "resources.priorityClassName": "system-node-critical",
        },
    )
    found = secret_refusals(kube, job, config())
    fields = [r.split(":", 1)[0] for r in found]
    assert fields == [
        "spec.trainerImage",
        "spec.output.endpoint",
        "spec.resources.priorityClassName",
        "spec.output.credentialsSecret",
    ]


# ---------------------------------------------------------------------- hot reload


def test_a_policy_edit_applies_through_the_reloaded_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    raw: dict[str, Any] = {"trainerImage": IMAGE, "s3": {"endpoint": PLATFORM_S3}}
    path.write_text(yaml.safe_dump(raw))
    source = ConfigSource.load(path)
    job = spec(trainerImage="registry.corp/ml/trainer:2")
    assert refusals(job, source.get())
    raw["policy"] = {"allowedTrainerImages": ["registry.corp/ml/"]}
    path.write_text(yaml.safe_dump(raw))
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
    assert refusals(job, source.get()) == []
    # a broken policy edit keeps the last good one
    raw["policy"] = {"allowedS3Endpoints": ["not a url"], "allowedTrainerImages": []}
    path.write_text(yaml.safe_dump(raw))
    os.utime(path, (stamp + 5, stamp + 5))
    assert refusals(job, source.get()) == []
    assert source.last_error is not None and "policy.allowedS3Endpoints" in source.last_error
