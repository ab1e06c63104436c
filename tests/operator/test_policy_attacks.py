"""The platform policy in the real operator process against the emulator: a LoRAJob naming a
foreign trainer image gets nothing (no Job, so no pod that could read the job's credentials),
says why on its Validated condition and in a Warning Event, and starts once the platform allows
that image in the live-reloaded operator config."""

from __future__ import annotations

from operator_harness import NAMESPACE, Harness, base_job

FOREIGN_IMAGE = "registry.corp/ml/trainer:2"


def validated(harness: Harness, name: str) -> dict[str, object]:
    conditions = harness.status(name).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Validated"), {})


def test_a_foreign_trainer_image_is_refused_until_the_platform_allows_it(
    harness: Harness,
) -> None:
    name = "policy-image"
    harness.apply(base_job(name, trainerImage=FOREIGN_IMAGE))
    status = harness.wait_phase(name, "Failed")
    condition = validated(harness, name)
    assert condition["status"] == "False" and condition["reason"] == "PolicyViolation"
    assert (
        condition["message"]
        == status["message"]
        == (
            f"spec.trainerImage: {FOREIGN_IMAGE!r} is not allowed by the platform policy "
            "(policy.allowedTrainerImages: lora-trainer:test)"
        )
    )
    harness.wait(
        "a PolicyViolation Warning Event",
        lambda: [e for e in harness.events(name) if e.get("reason") == "PolicyViolation"],
    )
    (event,) = [e for e in harness.events(name) if e.get("reason") == "PolicyViolation"]
    assert event["type"] == "Warning" and FOREIGN_IMAGE in event["message"]
    assert harness.job(f"{name}-r1") is None
    try:
        harness.set_config(policy={"allowedTrainerImages": ["registry.corp/ml/"]})
        harness.patch_spec(name, {"serving": {"replicas": 2}})  # any edit reconciles at once
        harness.wait_phase(name, "Running")
        job = harness.job(f"{name}-r1")
        assert job is not None
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == FOREIGN_IMAGE
        assert validated(harness, name)["reason"] == "Valid"
    finally:
        harness.set_config()
        harness.clean_up()


def test_a_database_secret_and_the_metadata_address_are_refused_together(
    harness: Harness,
) -> None:
    """Issue 11's copy attack: a Secret that never opted in (a database password) named as the
    job's credentials, sent to the cloud metadata address. Both refusals are listed, nothing is
    created, and the Secret is neither copied nor changed."""
    name = "policy-exfil"
    database = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "team-db", "namespace": NAMESPACE},
        "stringData": {"password": "hunter2"},
    }
    harness.client.create("v1/secrets", NAMESPACE, database)
    try:
        before = harness.client.get("v1/secrets", NAMESPACE, "team-db")
        harness.apply(
            base_job(
                name,
                **{
                    "output.endpoint": "http://169.254.169.254",
                    "output.credentialsSecret": {
                        "name": "team-db",
                        "accessKeyKey": "password",
                        "secretKeyKey": "password",
                    },
                },
            )
        )
        status = harness.wait_phase(name, "Failed")
        condition = validated(harness, name)
        assert condition["reason"] == "PolicyViolation"
        message = str(condition["message"])
        assert message.startswith("spec.output.endpoint: 'http://169.254.169.254' is a link-local")
        assert "spec.output.credentialsSecret: Secret 'team-db' is not usable" in message
        assert status["message"] == message
        assert harness.job(f"{name}-r1") is None
        assert harness.client.get("v1/secrets", NAMESPACE, f"{name}-s3") is None
        assert harness.client.get("v1/secrets", NAMESPACE, "team-db") == before
    finally:
        harness.clean_up()
        harness.client.delete("v1/secrets", NAMESPACE, "team-db")
