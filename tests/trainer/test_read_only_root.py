"""The trainer runs with a read-only root file system, as the operator's pods mount it: only the
emptyDirs of the pod contract (`/tmp`, `/home/trainer`, named by `lora_contract.pod.SCRATCH_ENV`)
and /dev/shm are writable. A write anywhere else (a library's cache under a default path, a temp
file outside TMPDIR) fails the run here before it fails a cluster's pod.

The read-only root is real: the launcher runs in a private mount namespace (`unshare --mount`)
where / is remounted read-only and only the scratch folders are bind-mounted writable. It needs
Linux and the right to create a mount namespace (root, or CAP_SYS_ADMIN); elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_contract import pod
from lora_contract.storage import S3Store
from lora_contract.types import Progress

from .conftest import rendezvous_port

READ_ONLY_ROOT = """
set -e
for folder in "$@"; do mount --bind "$folder" "$folder"; done
mount -o remount,bind,ro /
if touch "$PROBE" 2>/dev/null; then echo "the root file system is still writable"; exit 99; fi
exec "$PYTHON" -m lora_trainer.launch
"""


def can_remount_root_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-o", "remount,bind,ro", "/"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not can_remount_root_read_only(), reason="needs a private mount namespace (unshare --mount)"
)


def scratch_env(pod_dir: Path) -> dict[str, str]:
    """pod.SCRATCH_ENV with the emptyDirs' mount paths mapped into `pod_dir`."""
    mounts = {pod.TMP_DIR: pod_dir / "tmp", pod.HOME_DIR: pod_dir / "home"}
    env = {}
    for name, value in pod.SCRATCH_ENV.items():
        mount = next(m for m in mounts if value == m or value.startswith(m + "/"))
        env[name] = str(mounts[mount]) + value[len(mount) :]
    return env


@pytest.mark.slow
def test_trainer_needs_nothing_but_its_emptydirs(
    make_run: Any, store: S3Store, tmp_path: Path
) -> None:
    run = make_run(spec={"training": {"maxSteps": 8, "checkpointInterval": 4, "microBatchSize": 4}})
    pod_dir = tmp_path / "pod"
    writable = [pod_dir / "tmp", pod_dir / "home"]
    for folder in writable:
        folder.mkdir(parents=True)
    env = {
        **run.env,
        **scratch_env(pod_dir),
        "PYTHON": sys.executable,
        "PROBE": str(tmp_path / "written-outside-the-emptydirs"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(rendezvous_port()),
        "NNODES": "1",
        "NPROC_PER_NODE": "2",  # through torchrun: its temp files and the exit-code folder
        "JOB_COMPLETION_INDEX": "0",
        "POD_IP": "127.0.0.1",
        "LORAJOB_RENDEZVOUS_TIMEOUT": "60",
    }
    env.pop("LORAJOB_TERMINATION_LOG", None)  # /dev/termination-log: absent here, skipped
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_ROOT]
    result = subprocess.run(
        [*command, "sh", *map(str, writable)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Read-only file system" not in output, output[-4000:]
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
    work = Path(env[pod.ENV_WORK_DIR])
    assert work.is_dir() and work.is_relative_to(pod_dir / "tmp")  # checkpoints went there
    assert os.access(pod_dir, os.W_OK)  # the namespace's read-only root stayed in it
