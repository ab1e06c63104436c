"""The CLI on hostile input: a non-UTF-8 manifest is a clear error (exit 2), a closed pipe
(`lorajob plan ... | head`) a quiet exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from apidata import ROOT


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_non_utf8_manifest_is_a_clear_error(tmp_path: Path, command: str) -> None:
    manifest = tmp_path / "latin1.yaml"
    manifest.write_bytes(b"apiVersion: finetune.lora-operator.io/v1alpha1\nkind: LoRAJob\n# \xff\n")
    result = subprocess.run(
        [sys.executable, "-m", "lora_operator.cli", command, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "not UTF-8 text (byte 0xff at offset" in result.stderr
    assert "Traceback" not in result.stderr


def test_closed_pipe_exits_quietly() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_operator.cli", "validate", *map(str, examples)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
