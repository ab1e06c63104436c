"""A run's progress never goes backwards or blank across a resume (the restarted trainer first
writes "starting" at step 0, then the checkpoint's step), the status says it resumed, and an
early-stopped run says so, with its best step, in the message and an Event."""

from __future__ import annotations

from operator_harness import base_job
from test_reconcile_units import World

from lora_contract.types import LoRAJobStatus, Progress, Reason
from lora_devkit.s3server import S3Server
from lora_operator.controller.progress import early_stop_note, never_backwards, record_progress


def summaries(*writes: Progress) -> list[str | None]:
    status = LoRAJobStatus()
    seen = []
    for progress in writes:
        record_progress(status, progress)
        seen.append(status.progress_summary)
    return seen


def test_a_resume_neither_blanks_nor_steps_back() -> None:
    assert summaries(
        Progress(state="running", step=22, total_steps=100),
        Progress(state="starting"),  # the restarted pod, before it found its checkpoint
        Progress(state="starting", step=20, total_steps=100, resumed_from=20),
        Progress(state="running", step=21, total_steps=100, resumed_from=20),
        Progress(state="running", step=23, total_steps=100, resumed_from=20),
        Progress(state="succeeded", step=100, total_steps=100, resumed_from=20),
    ) == [
        "22/100 (22%)",
        "22/100 (22%)",
        "22/100 (22%), resumed from step 20",
        "22/100 (22%), resumed from step 20",
        "23/100 (23%), resumed from step 20",
        "100/100 (100%)",
    ]


def test_what_is_kept_from_the_previous_write() -> None:
    previous = Progress(
        step=28,
        total_steps=40,
        latest_checkpoint="s3://b/r1/checkpoint-28",
        best_step=24,
        best_eval_loss=5.6168,
    )
    restarted = never_backwards(previous, Progress(state="starting"))
    assert (restarted.step, restarted.total_steps, restarted.state) == (28, 40, "starting")
    assert restarted.latest_checkpoint == "s3://b/r1/checkpoint-28"
    assert (restarted.best_step, restarted.best_eval_loss) == (24, 5.6168)
    ahead = Progress(
        step=30,
        total_steps=40,
        latest_checkpoint="s3://b/r1/checkpoint-30",
        best_step=30,
        best_eval_loss=5.5,
    )
    assert never_backwards(previous, ahead) is ahead  # nothing to keep: the same object
    assert never_backwards(None, Progress()) == Progress()  # a new run starts blank


def test_the_early_stop_note() -> None:
    assert early_stop_note(None) is None
    assert early_stop_note(Progress(step=36, stopped_early=False)) is None
    stopped = Progress(step=36, stopped_early=True, best_step=28, best_eval_loss=5.61679)
    assert early_stop_note(stopped) == "stopped early at step 36; best step 28 (eval loss 5.6168)"
    assert early_stop_note(Progress(step=36, stopped_early=True)) == "stopped early at step 36"


def test_through_the_reconciler_resume_then_early_stop(s3: S3Server) -> None:
    world = World(s3)
    world.add(base_job("u-mono"))
    assert world.reconcile("u-mono")["phase"] == "Running"
    world.job_status("u-mono-r1", active=1)
    world.progress("u-mono", "r1", step=22, totalSteps=100)
    assert world.reconcile("u-mono")["message"] == "training, step 22/100 (22%)"
    world.progress("u-mono", "r1", state="starting", step=0, totalSteps=0)
    status = world.reconcile("u-mono")
    assert status["message"] == "training, step 22/100 (22%)"
    assert (status["progress"]["step"], status["progress"]["totalSteps"]) == (22, 100)
    world.progress("u-mono", "r1", state="starting", step=20, totalSteps=100, resumedFrom=20)
    status = world.reconcile("u-mono")
    assert status["message"] == "training, step 22/100 (22%), resumed from step 20"
    assert "StoppedEarly" not in world.reasons("u-mono")

    world.progress(
        "u-mono",
        "r1",
        state="succeeded",
        step=36,
        totalSteps=100,
        evalLoss=5.6405,
        stoppedEarly=True,
        bestStep=28,
        bestEvalLoss=5.61679,
        resumedFrom=20,
    )
    world.job_status("u-mono-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    status = world.reconcile("u-mono")
    assert status["phase"] == "Succeeded"
    assert status["message"].endswith("; stopped early at step 36; best step 28 (eval loss 5.6168)")
    assert status["runs"][-1]["finalEvalLoss"] == 5.61679  # final/ is step 28's adapter
    assert world.reasons("u-mono").count(Reason.StoppedEarly) == 1
