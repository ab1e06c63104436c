"""`lorajob plan` (a real subprocess) for DPO on the other paths: the 8B QLoRA example (NF4 on one
L4) and the 70B ZeRO-3 example (2 x 8 H100), each as `method: dpo` and as the SFT it ships as.

Hand-worked from memory/dpo.py's rules (bf16: 2 bytes; a pair is 2 sequences):
- 8B (hidden 4096, MLP 14336, vocab 128256), micro-batch 1 x 2048: N = 4096 tokens.
  dpo_logprobs = saved 4096 x (4096 x 2 + 25) = 33,656,832
               + fp32 hidden gradient 4096 x 4096 x 4 = 67,108,864
               + one tile 4096 x 32768 x (2 + 4) = 805,306,368
               = 906,072,064 B = 0.844 GiB.
  dpo_reference: max(layer 4096 x (2 x 4096 + 2 x 14336) x 2 = 301,989,888,
                     head 805,306,368 + 4096 x 25 = 805,408,768) = 805,408,768, below the
                 backward's 67,108,864 + 805,306,368 = 872,415,232: 0.
- 70B (hidden 8192, MLP 28672, same vocabulary), micro-batch 1 x 4096: N = 8192 tokens.
  dpo_logprobs = 8192 x (8192 x 2 + 25) = 134,422,528 + 8192 x 8192 x 4 = 268,435,456
               + 805,306,368 = 1,208,164,352 B = 1.125 GiB.
  dpo_reference = layer 8192 x (2 x 8192 + 2 x 28672) x 2 = 1,207,959,552 over the backward's
                  268,435,456 + 805,306,368 = 1,073,741,824: 134,217,728 B = 0.125 GiB.
- dpo_ref_adapter (TRL's frozen `ref` copy of the starting adapter: its parameters once more, fp32,
  no gradients or optimizer states; ZeRO-3 shards it like the adapter):
  8B r 16 all-linear (32 layers, k/v width 8 x 128 = 1024): per layer q, o 16 x 8192 = 131,072,
  k, v 16 x 5120 = 81,920, gate, up, down 16 x 18,432 = 294,912: 1,310,720 x 32 = 41,943,040
  parameters x 4 = 167,772,160 B = 0.156 GiB, on the one L4.
  70B r 64 all-linear (80 layers, k/v width 1024): per layer q, o 64 x 16,384 = 1,048,576,
  k, v 64 x 9216 = 589,824, gate, up, down 64 x 36,864 = 2,359,296: 10,354,688 x 80 =
  828,375,040 parameters x 4 = 3,313,500,160 B over 16 ranks = 207,093,760 B = 0.193 GiB.
Chosen and rejected go through one forward: the saved activations and adapter inputs double,
the model states (weights, adapters, gradients, optimizer) do not, and SFT's `logits` term
gives way to `dpo_logprobs` (TRL never materialises the logits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

LORAJOB = str(Path(sys.executable).with_name("lorajob"))
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GIB = 1024**3
STATES = ("weights", "zero3_gather", "lora_weights", "gradients", "optimizer", "cuda_context")


def plan(tmp_path: Path, example: str, method: str) -> dict[str, Any]:
    job = yaml.safe_load((EXAMPLES / example).read_text())
    job["spec"]["method"] = method
    if method == "dpo":
        job["spec"]["dataset"].pop("fields", None)  # DPO maps its columns with dpo.fields
    path = tmp_path / f"{method}-{example}"
    path.write_text(yaml.safe_dump(job))
    done = subprocess.run(
        [LORAJOB, "plan", str(path), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)["plan"]
    return result


@pytest.mark.parametrize(
    ("example", "placement", "logprobs", "reference", "ref_adapter", "doubled"),
    [
        (
            "qlora-llama3-8b-24gb.yaml",
            ("ddp", 1, 1, "L4-24GB"),
            906_072_064,
            0,
            167_772_160,
            ("activations", "lora_dropout"),
        ),
        (
            "lora-llama3-70b-zero3.yaml",
            ("deepspeed-zero3", 2, 8, "H100-80GB"),
            1_208_164_352,
            134_217_728,
            207_093_760,
            ("activations", "lora_dropout"),
        ),
    ],
)
def test_dpo_plans_on_the_qlora_and_zero3_paths(
    tmp_path: Path,
    example: str,
    placement: tuple[str, int, int, str],
    logprobs: int,
    reference: int,
    ref_adapter: int,
    doubled: tuple[str, ...],
) -> None:
    sft, dpo = plan(tmp_path, example, "sft"), plan(tmp_path, example, "dpo")
    for found in (sft, dpo):  # same placement: the DPO terms fit where SFT's did
        assert (found["strategy"], found["nodes"], found["gpusPerNode"], found["gpuType"]) == (
            placement
        )
    terms, sft_terms = dpo["breakdownGib"], sft["breakdownGib"]
    assert terms["dpo_logprobs"] == round(logprobs / GIB, 3)
    assert terms["dpo_reference"] == round(reference / GIB, 3)
    assert terms["dpo_ref_adapter"] == round(ref_adapter / GIB, 3)
    assert "dpo_ref_adapter" not in sft_terms
    assert terms["logits"] == 0 < sft_terms["logits"]
    assert "dpo_logprobs" not in sft_terms and "dpo_reference" not in sft_terms
    for name in STATES:
        assert terms[name] == sft_terms[name], name
    for name in doubled:  # each rounded to 3 decimals: |round(2x) - 2 round(x)| <= 0.0015
        assert terms[name] == pytest.approx(2 * sft_terms[name], abs=0.0016), name
    assert dpo["perGpuPeakGib"] > sft["perGpuPeakGib"]
    assert any(a.startswith("dpo: chosen + rejected") for a in dpo["forecast"]["assumptions"])
