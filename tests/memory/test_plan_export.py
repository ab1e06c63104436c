"""`lorajob plan` with spec.export.merged: the export Job's pod beside the training plan, worked
by hand from Llama 3.1 8B's published parameter count (the operator sizes the Job with the same
functions, memory/export_sizing.py; tests/operator/test_export_job.py works its own case)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LORAJOB = str(Path(sys.executable).with_name("lorajob"))

MERGED = """\
apiVersion: finetune.lora-operator.io/v1alpha1
kind: LoRAJob
metadata: {name: merged-8b, namespace: ml}
spec:
  baseModel: {name: meta-llama/Llama-3.1-8B-Instruct, source: hf://meta-llama/Llama-3.1-8B}
  dataset: {source: s3://data/train.jsonl, format: chat, numExamples: 1000}
  lora: {r: 16, alpha: 32, targetModules: [q_proj, v_proj]}
  resources: {gpuType: A100-80GB}
  output: {bucket: results}
  export: {merged: true, dtype: float32, maxShardSize: 500MB}
"""

# Llama 3.1 8B: 8,030,261,248 parameters. LoRA r=16 on q (4096 -> 4096) and v (4096 -> 1024) of
# 32 layers: 32 x 16 x ((4096 + 4096) + (4096 + 1024)) = 6,815,744 trainable.
# Memory, float32: base 8,030,261,248 x 4 = 32,121,044,992 B (29.92 GiB); adapter 2 x 6,815,744
# x 4 = 54,525,952 B (0.05 GiB); shard 500e6 B (0.47 GiB); sum 32,675,570,944 B = 30.43 GiB;
# x 1.2 + 1 = 37.52 -> 38 GiB. Disk: 8,030,261,248 x (4 + 4) B = 59.83 GiB + 1 -> 61 GiB.
EXPECTED = [
    "  export (merged model, float32): one CPU pod after the run succeeded",
    "      base                  29.92  the base model in the export dtype",
    "      adapter                0.05  the adapter in fp32 twice (loaded, the merge's delta)",
    "      shard                  0.47  one safetensors shard being written (maxShardSize)",
    "      total                    38  (counted x 1.2 + 1 GiB, rounded up)",
    "    pod requests: cpu=2, memory=38Gi, ephemeral-storage=61Gi",
    "    pod limits:   memory=38Gi",
]


def plan(path: Path) -> str:
    done = subprocess.run(
        [LORAJOB, "plan", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_shows_the_export_pod_worked_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "merged.yaml"
    path.write_text(MERGED)
    out = plan(path).splitlines()
    assert "  parameters: 8,030,261,248 total, 6,815,744 trainable (0.085%)" in out
    for line in EXPECTED:
        assert line in out, line
    start = out.index(EXPECTED[0])
    assert out.index("  forecast") < start  # beside the training plan, after it
    # without spec.export.merged there is no export section
    path.write_text(MERGED.replace("merged: true", "merged: false"))
    assert not any(line.startswith("  export") for line in plan(path).splitlines())
