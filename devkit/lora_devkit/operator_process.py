"""Start the real operator (`lorajob run --standalone`) as a child process against a kubeconfig.

The demo, the scale benchmark and the integration tests all run the operator the way a cluster
would, as its own process; this is the one place that knows the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lora_operator.api.operator_config import CREDENTIALS_OPT_IN_LABEL


def operator_command(namespace: str | None, config: Path, *extra_args: str) -> list[str]:
    """`namespace` None: the operator watches all namespaces (one watch, as a platform runs it)."""
    scope = ["--namespace", namespace] if namespace is not None else ["--all-namespaces"]
    return [
        sys.executable,
        "-m",
        "lora_operator.cli",
        "run",
        "--standalone",
        *scope,
        "--config",
        str(config),
        "--log-format",
        "plain",
        *extra_args,
    ]


def start_operator(
    kubeconfig: Path,
    config: Path,
    namespace: str | None,
    log_path: Path,
    *extra_args: str,
    new_session: bool = False,
    python_args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """The operator process, its output appended to `log_path`. `new_session`: own process
    group, so a Ctrl-C in the terminal reaches only the parent, which stops it in order.
    `python_args` go before `-m lora_operator.cli` (the scale bench's `-m cProfile -o FILE`)."""
    command = operator_command(namespace, config, *extra_args)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [command[0], *python_args, *command[1:]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


def secret_manifest(name: str, namespace: str, access_key: str, secret_key: str) -> dict[str, Any]:
    """The S3 credentials Secret in the shape the operator reads (keys accessKey/secretKey),
    labelled as usable job credentials (the platform policy's opt-in)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {CREDENTIALS_OPT_IN_LABEL: "true"},
        },
        "stringData": {"accessKey": access_key, "secretKey": secret_key},
    }


def stop_operator(process: subprocess.Popen[bytes], grace_seconds: float = 15.0) -> None:
    """SIGTERM (kopf shuts down cleanly), SIGKILL after the grace period."""
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
