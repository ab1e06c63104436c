"""spec.baseAdapter through the real operator process: a DPO job naming an SFT job that does not
exist yet waits (Pending, WaitingForBaseAdapter, no Job), and once the SFT job's run succeeded
(its folder claimed by its uid) the DPO run starts from that run's adapter: its trainer config
carries baseAdapterURI and the run records {job, run, uri}."""

from __future__ import annotations

from typing import Any

import yaml
from operator_harness import BUCKET, Harness, base_job

from lora_contract.layout import JobOwner, S3Location, owner_marker

SFT = "ba-sft"
DPO = "ba-dpo"


def dpo_job() -> dict[str, Any]:
    return base_job(DPO, method="dpo", baseAdapter={"job": SFT})


def test_dpo_waits_for_the_sft_job_then_starts_from_its_adapter(harness: Harness) -> None:
    harness.apply(dpo_job())

    def waiting() -> dict[str, Any] | None:
        status = harness.status(DPO)
        running: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Running"), {}
        )
        ok = status.get("phase") == "Pending" and running.get("reason") == "WaitingForBaseAdapter"
        return status if ok else None

    status = harness.wait(f"{DPO} waiting for its base adapter", waiting)
    expected = f"waiting for spec.baseAdapter.job {SFT}: no LoRAJob {harness.namespace}/{SFT}"
    assert status["message"] == expected
    assert "baseAdapter" not in status["runs"][0]
    assert harness.job(f"{DPO}-r1") is None  # nothing created, no quota held

    sft = harness.apply(base_job(SFT))
    harness.wait(f"Job {SFT}-r1", lambda: harness.job(f"{SFT}-r1"))
    folder = harness.run_uri(SFT, "r1")
    assert folder == f"s3://{BUCKET}/runs/{harness.namespace}/{SFT}/r1"
    owner = JobOwner(namespace=harness.namespace, name=SFT, uid=sft["metadata"]["uid"])
    harness.s3.store().put_json(owner_marker(S3Location.parse(folder)), owner.model_dump())
    harness.driver.start(f"{SFT}-r1")
    harness.write_progress(SFT, "r1", state="succeeded", step=40)
    harness.driver.succeed(f"{SFT}-r1")
    harness.wait_phase(SFT, "Succeeded")

    harness.wait(f"Job {DPO}-r1", lambda: harness.job(f"{DPO}-r1"))
    adapter = f"{folder}/final"
    record = harness.status(DPO)["runs"][0]["baseAdapter"]
    assert record == {"job": SFT, "run": "r1", "uri": adapter}
    config_map = harness.client.get("v1/configmaps", harness.namespace, f"{DPO}-r1-config")
    assert config_map is not None
    trainer_config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert trainer_config["baseAdapterURI"] == adapter
    assert trainer_config["spec"]["baseAdapter"] == {"job": SFT}
