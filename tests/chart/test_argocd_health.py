"""The chart's Argo CD health check (charts/lora-operator/argocd/health.lua), run as Argo CD runs
it (Lua 5.1 through lupa), on LoRAJobs the real operator wrote and on the edge cases a cluster
can hold: no status yet, a spec the operator has not seen, an object from an operator older than
the kstatus conditions. And the documented argocd-cm snippets carry exactly this script under the
key Argo CD looks up for the CRD's group and kind.

`lorajob_status_samples.json`: the objects tests/operator/test_kstatus_transitions.py checked, one
per step (`LORAJOB_CAPTURE_STATUS=<file> pytest tests/operator/test_kstatus_transitions.py`),
with status.plan and the runs' forecasts dropped (the health check reads neither). The expected
health of each is that step's row in that test's table, written by hand."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from argocd_health import SCRIPT, argo_health

REPO = Path(__file__).resolve().parents[2]
SAMPLES = json.loads((Path(__file__).parent / "lorajob_status_samples.json").read_text())
README = REPO / "charts" / "lora-operator" / "argocd" / "README.md"
CRD = REPO / "charts" / "lora-operator" / "crds" / "finetune.lora-operator.io_lorajobs.yaml"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in obj["status"]["conditions"] if c["type"] == type_]
    assert len(found) == 1, (type_, obj["status"]["conditions"])
    return found[0]  # type: ignore[no-any-return]


# Which condition Argo CD's message quotes, for each health.
QUOTED = {
    "Degraded": "Stalled",
    "Healthy": "Ready",
    "Progressing": "Reconciling",
    "Suspended": "Ready",
}


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["step"] for s in SAMPLES])
def test_health_of_what_the_operator_wrote(sample: dict[str, Any]) -> None:
    obj = sample["object"]
    status, message = argo_health(obj)
    assert status == sample["argo"]
    quoted = condition(obj, QUOTED[status])
    assert message == f"{quoted['reason']}: {quoted['message']}"


def test_the_samples_cover_every_health_and_failure() -> None:
    assert {s["argo"] for s in SAMPLES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    degraded = {
        condition(s["object"], "Stalled")["reason"] for s in SAMPLES if s["argo"] == "Degraded"
    }
    assert degraded == {"Failed", "InvalidSpec"}


def job(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "j", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


def summary(ready: str, reconciling: str, stalled: str, reason: str, message: str) -> list[Any]:
    return [
        {"type": t, "status": s, "reason": reason, "message": message}
        for t, s in (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled))
    ]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (job(None), ("Progressing", "waiting for the lora-operator to reconcile this LoRAJob")),
        (job({}), ("Progressing", "waiting for the lora-operator to reconcile this LoRAJob")),
        (
            job(
                {
                    "phase": "Succeeded",
                    "observedGeneration": 1,
                    "conditions": summary(
                        "True", "False", "False", "Succeeded", "adapter at s3://b/f"
                    ),
                },
                generation=2,
            ),
            ("Progressing", "the operator has not seen generation 2 yet"),
        ),
        (
            job(
                {
                    "phase": "Failed",
                    "observedGeneration": 3,
                    "conditions": summary(
                        "False", "False", "True", "PlanningFailed", "no GPU fits"
                    ),
                },
                generation=3,
            ),
            ("Degraded", "PlanningFailed: no GPU fits"),
        ),
        (
            job(
                {
                    "phase": "Succeeded",
                    "observedGeneration": 1,
                    "conditions": summary(
                        "False", "False", "True", "KServeNotInstalled", "install KServe"
                    ),
                }
            ),
            ("Degraded", "KServeNotInstalled: install KServe"),
        ),
        # an older operator: no summary conditions, the phase decides
        (
            job({"phase": "Succeeded", "message": "adapter at s3://b/f"}),
            ("Healthy", "adapter at s3://b/f"),
        ),
        (job({"phase": "Failed", "message": "OOMKilled"}), ("Degraded", "OOMKilled")),
        (job({"phase": "Queued"}), ("Progressing", "Queued")),
        (
            job({"phase": "Suspended", "message": "suspended; checkpoints kept"}),
            ("Suspended", "suspended; checkpoints kept"),
        ),
        # a condition without words still says something
        (
            job(
                {
                    "phase": "Running",
                    "observedGeneration": 1,
                    "conditions": summary("False", "True", "False", "", ""),
                }
            ),
            ("Progressing", "Running"),
        ),
        (
            job(
                {
                    "phase": "Running",
                    "observedGeneration": 1,
                    "conditions": summary("False", "True", "False", "Training", ""),
                }
            ),
            ("Progressing", "Training"),
        ),
    ],
)
def test_edge_cases(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert argo_health(obj) == expected


def test_the_documented_snippets_carry_the_script_under_the_crds_key() -> None:
    crd = yaml.safe_load(CRD.read_text())
    key = f"resource.customizations.health.{crd['spec']['group']}_{crd['spec']['names']['kind']}"
    assert key == "resource.customizations.health.finetune.lora-operator.io_LoRAJob"
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 2
    helm_values, cm_patch = (yaml.safe_load(b) for b in blocks)
    assert helm_values["configs"]["cm"][key] == SCRIPT
    assert cm_patch["data"][key] == SCRIPT
    assert textwrap.dedent(SCRIPT) == SCRIPT  # no stray indentation in the file itself


def test_without_the_script_argo_cd_would_call_a_failed_job_healthy() -> None:
    """What the script is for: the failed sample is Degraded with it (Argo CD's default for a
    kind without a health check is Healthy)."""
    failed = next(s["object"] for s in SAMPLES if s["step"] == "failed/bad config")
    assert failed["status"]["phase"] == "Failed"
    assert argo_health(failed)[0] == "Degraded"
