"""Preemption through the real launcher: a SIGTERM to a pod's main process (what the kubelet
sends on Kueue preemption, a node drain or a spot reclaim) checkpoints the step every rank agreed
on, exits EXIT_PREEMPTED on every node, and the restarted run continues from that very step.
And the grace period running out mid-upload leaves the previous checkpoint the latest one."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_OK, EXIT_PREEMPTED
from lora_contract.storage import S3Store
from lora_contract.types import Progress
from lora_devkit.s3server import S3Server
from lora_trainer.checkpoints import latest_checkpoint, verify
from lora_trainer.launch import worker_exit_code
from lora_trainer.preemption import STOP_FILE, Preempted, StopRequest, process_exit_code

from .conftest import rendezvous_port
from .test_launch import finish_logged, kill_pod, node_env, start_node

MAX_STEPS = 8


def logged_steps(store: S3Store, run: S3Location) -> list[int]:
    """The optimizer steps metrics.jsonl has a loss for, in order (logInterval 1: every step)."""
    data = store.get_bytes(run.child("metrics.jsonl"))
    assert data is not None
    return [r["step"] for r in map(json.loads, data.decode().splitlines()) if "loss" in r]


def progress_of(store: S3Store, run: S3Location) -> Progress:
    return Progress.model_validate(store.get_json(run.child("progress.json")))


def wait_for_step(
    store: S3Store, run: S3Location, procs: list[Any], logs: list[Path], step: int
) -> int:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        raw = store.get_json(run.child("progress.json"))
        if isinstance(raw, dict) and int(raw.get("step", 0)) >= step:
            return int(raw["step"])
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"a node ended early:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached:\n{logs[0].read_text()[-4000:]}")


@pytest.mark.slow
def test_sigterm_on_two_nodes_checkpoints_the_agreed_step_and_resumes_there(
    make_run: Any, store: S3Store, tmp_path: Path
) -> None:
    """Only node 1's pod gets the SIGTERM (a drained node): the all-reduce stops node 0 at the
    same step, rank 0 saves it, both pods exit 76; the rerun resumes at that step and the run
    has each of the 8 optimizer steps exactly once, as an uninterrupted run would."""
    spec = {
        "training": {
            "maxSteps": MAX_STEPS,
            "checkpointInterval": 100,  # no regular checkpoint: only the preemption's and the end's
            "microBatchSize": 4,
            "logInterval": 1,
            "evalInterval": 100,
        }
    }
    run = make_run(spec=spec)
    port = rendezvous_port()
    slow = {"LORAJOB_STEP_DELAY_S": "0.4"}
    envs = [node_env(run, rank, 2, port, slow) for rank in range(2)]
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    procs = [start_node(envs[0], logs[0]), start_node(envs[1], logs[1])]
    try:
        seen = wait_for_step(store, run.location, procs, logs, 2)
        procs[1].send_signal(signal.SIGTERM)  # the container's main process, as the kubelet
        results = finish_logged(procs, logs, timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_pod(proc)
    assert [code for code, _ in results] == [EXIT_PREEMPTED, EXIT_PREEMPTED], results[1][1][-4000:]
    stops = {
        int(line.rsplit("step ", 1)[1].split(";")[0])
        for _, out in results
        for line in out.splitlines()
        if "every rank stops at step" in line
    }
    assert len(stops) == 1, stops  # one step, agreed by both ranks (each logs it)
    stopped = stops.pop()
    assert seen <= stopped < MAX_STEPS
    steps = logged_steps(store, run.location)
    assert steps == list(range(1, stopped + 1))  # the checkpoint holds the last completed step
    assert store.complete_checkpoints(run.location) == [stopped]
    assert verify(store, run.location.child(f"checkpoint-{stopped}")) is None
    files = set(store.list(run.location.child(f"checkpoint-{stopped}")))
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= files
    note = progress_of(store, run.location)
    assert note.state == "stopped" and note.step == stopped
    assert note.last_error and f"preempted (SIGTERM) at step {stopped}" in note.last_error
    assert not store.exists(run.location.child("final", "adapter_model.safetensors"))

    port = rendezvous_port()
    again = [node_env(run, rank, 2, port) for rank in range(2)]
    relogs = [tmp_path / "node0-again.log", tmp_path / "node1-again.log"]
    procs = [start_node(again[0], relogs[0]), start_node(again[1], relogs[1])]
    try:
        results = finish_logged(procs, relogs, timeout=90)
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_pod(proc)
    assert [code for code, _ in results] == [EXIT_OK, EXIT_OK], results[0][1][-4000:]
    assert f"resuming from checkpoint-{stopped}" in results[0][1]
    assert logged_steps(store, run.location) == list(range(1, MAX_STEPS + 1))
    done = progress_of(store, run.location)
    assert done.state == "succeeded" and done.step == done.total_steps == MAX_STEPS
    assert done.last_error is None


class SlowCheckpointProxy:
    """A loopback HTTP proxy in front of the S3 server that, once armed, delays each PUT into a
    checkpoint folder: a slow network during the preemption checkpoint's upload."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream = urlsplit(upstream)
        self.delay_s = delay_s
        self.armed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "PUT" and "/checkpoint-" in self.path and proxy.armed.is_set():
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> SlowCheckpointProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_proxy(s3: S3Server) -> Iterator[SlowCheckpointProxy]:
    with SlowCheckpointProxy(s3.endpoint, delay_s=0.5) as proxy:
        yield proxy


@pytest.mark.slow
def test_sigterm_during_checkpoint_upload_keeps_the_previous_checkpoint_latest(
    make_run: Any, store: S3Store, slow_proxy: SlowCheckpointProxy
) -> None:
    """SIGTERM, then the grace period ends (SIGKILL) while the preemption checkpoint is half
    uploaded: checkpoint-4 still verifies and stays the latest, the partial one has no
    manifest, and the next run resumes from checkpoint-4 and finishes."""
    spec = {"training": {"maxSteps": 8, "checkpointInterval": 4, "logInterval": 1}}
    run = make_run(spec=spec)
    env = {**run.env, "S3_ENDPOINT": slow_proxy.endpoint, "LORAJOB_STEP_DELAY_S": "0.25"}
    proc = subprocess.Popen(
        [__import__("sys").executable, "-m", "lora_trainer.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    partial: int | None = None
    try:
        deadline = time.monotonic() + 90
        while not store.complete_checkpoints(run.location):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        slow_proxy.armed.set()
        proc.send_signal(signal.SIGTERM)
        while partial is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            started = [
                int(name.split("-")[1].rstrip("/"))
                for name in store.list(run.location)
                if name.startswith("checkpoint-") and name.rstrip("/") != "checkpoint-4"
            ]
            partial = started[0] if started else None
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the grace period is over
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "SIGTERM: finishing this step" in out
    assert partial is not None and partial > 4
    assert store.complete_checkpoints(run.location) == [4]
    assert verify(store, run.location.child("checkpoint-4")) is None
    assert latest_checkpoint(store, run.location) == 4

    slow_proxy.armed.clear()
    result = run.run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint-4" in result.stderr
    assert logged_steps(store, run.location) == list(range(1, 9))
    assert progress_of(store, run.location).state == "succeeded"


def test_stop_request_reads_the_launcher_stop_file(tmp_path: Path) -> None:
    request = StopRequest(str(tmp_path))
    assert not request.requested()
    (tmp_path / STOP_FILE).touch()
    assert request.requested()
    (tmp_path / STOP_FILE).unlink()
    assert request.requested()  # once asked, it stays asked
    alone = StopRequest(None)
    assert not alone.requested()
    alone.set()
    assert alone.requested()


def test_preemption_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAJOB_EXIT_CODE_DIR", raising=False)
    assert process_exit_code(EXIT_PREEMPTED) == 76  # alone: the pod's own exit code
    monkeypatch.setenv("LORAJOB_EXIT_CODE_DIR", str(tmp_path))
    assert process_exit_code(EXIT_PREEMPTED) == 0  # under torchrun: no worker restart
    assert process_exit_code(75) == 75 and process_exit_code(3) == 3
    # the launcher: a preempted worker's 76 wins over torchrun's 0 and over older failures
    (tmp_path / "exit-1").write_text("75")
    assert worker_exit_code(tmp_path, 1) == 75
    (tmp_path / "exit-0").write_text("76")
    assert worker_exit_code(tmp_path, 0) == 76 and worker_exit_code(tmp_path, 1) == 76
    stopped = Preempted(7, checkpoint_saved=True)
    assert stopped.exit_code == 76 and stopped.step == 7
    assert stopped.message == (
        "preempted (SIGTERM) at step 7: checkpoint-7 saved; the restarted pod resumes from the "
        "latest complete checkpoint"
    )
    assert Preempted(7, checkpoint_saved=False).message.startswith(
        "preempted (SIGTERM) at step 7: no new checkpoint; the restarted"
    )


def test_stop_request_from_env_reads_the_launchers_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAJOB_EXIT_CODE_DIR", str(tmp_path))
    assert StopRequest.from_env().stop_file == tmp_path / "preempt"
    monkeypatch.setenv("LORAJOB_EXIT_CODE_DIR", "")
    assert StopRequest.from_env().stop_file is None
    monkeypatch.delenv("LORAJOB_EXIT_CODE_DIR")
    assert StopRequest.from_env().stop_file is None


def test_sigterm_handler_sets_the_stop_request_in_the_main_thread_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    previous = signal.getsignal(signal.SIGTERM)
    try:
        request = StopRequest(None)
        worker = threading.Thread(target=request.install)
        worker.start()
        worker.join()
        assert signal.getsignal(signal.SIGTERM) is previous  # Python allows main thread only
        request.install()
        assert signal.getsignal(signal.SIGTERM) is not previous  # else the kill ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.requested()
        said = "[lora-trainer] SIGTERM: finishing this step, then checkpointing and exiting\n"
        assert capsys.readouterr().err == said
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing, says nothing
        assert request.requested() and capsys.readouterr().err == ""
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_any_rank_is_the_flag_alone_and_through_a_process_group() -> None:
    import torch.distributed as dist

    from lora_trainer.preemption import any_rank

    assert any_rank(True) is True and any_rank(False) is False
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        assert any_rank(False) is False
        assert any_rank(True) is True
    finally:
        dist.destroy_process_group()


def test_preemption_callback_stops_and_saves_the_agreed_step_once() -> None:
    from types import SimpleNamespace

    from transformers import TrainerControl

    from lora_trainer.callbacks import PreemptionCallback

    request = StopRequest(None)
    callback = PreemptionCallback(request)
    args = SimpleNamespace(device="cpu")
    control = TrainerControl(should_evaluate=True)
    callback.on_step_end(args, SimpleNamespace(global_step=5, max_steps=8), control)
    assert callback.stopped_at is None and not control.should_save  # nothing asked yet
    request.set()
    callback.on_step_end(args, SimpleNamespace(global_step=6, max_steps=8), control)
    assert callback.stopped_at == 6
    assert control.should_save and control.should_training_stop and not control.should_evaluate
    callback.on_step_end(args, SimpleNamespace(global_step=7, max_steps=8), TrainerControl())
    assert callback.stopped_at == 6  # the first agreed step stays the stop step
    last = PreemptionCallback(request)
    done = TrainerControl()
    last.on_step_end(args, SimpleNamespace(global_step=8, max_steps=8), done)
    assert last.stopped_at is None and not done.should_training_stop  # the run ends anyway
