"""Plan speed: `lorajob plan` on a shipped model, cold (a fresh process each run), as a user
runs it; with the CPU time, which the load of other processes does not inflate.

Shipped models are answered from precomputed shapes (memory/shapes.json) without importing
torch or transformers; a custom config.json is still counted on the meta device, shown beside
for comparison. Goal: the median cold wall time under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lora_operator.memory.model_config import shipped_config

from .goals import record

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "qlora-llama3-8b-24gb.yaml"
LORAJOB = str(Path(sys.executable).with_name("lorajob"))


def cold_run(*args: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh `lorajob plan` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([LORAJOB, "plan", *args], check=True, capture_output=True, timeout=300)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def timed(runs: int, *args: str) -> tuple[float, float]:
    """Median (wall, CPU) over `runs` cold runs."""
    samples = [cold_run(*args) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def custom_config(folder: Path) -> Path:
    """The same model with one field changed: not a shipped config, so it is counted."""
    data = {**shipped_config("meta-llama/Llama-3.1-8B").data, "max_position_embeddings": 8192}
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold runs per case")
    parser.add_argument("--goal", type=float, default=1.0, help="seconds")
    parser.add_argument("--skip-custom", action="store_true", help="skip the meta-device case")
    args = parser.parse_args(argv if argv is not None else [])
    shipped_wall, shipped_cpu = timed(args.runs, str(EXAMPLE))
    rows = [
        (f"shipped model, cold (median of {args.runs})", f"{shipped_wall:.2f} s wall"),
        ("  CPU time (user + sys)", f"{shipped_cpu:.2f} s"),
    ]
    if not args.skip_custom:
        with tempfile.TemporaryDirectory(prefix="lorajob-bench-") as tmp:
            config = custom_config(Path(tmp))
            custom_wall, custom_cpu = timed(1, str(EXAMPLE), "--model-config", str(config))
        rows.append(("custom config.json (meta device), cold", f"{custom_wall:.2f} s wall"))
        rows.append(("  CPU time (user + sys)", f"{custom_cpu:.2f} s"))
    rows += [
        ("load average (1 min)", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"),
        ("goal", f"< {args.goal:g} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    record(
        "plan speed",
        f"`lorajob plan` on a shipped model cold in < {args.goal:g} s",
        f"{shipped_wall:.2f} s wall, {shipped_cpu:.2f} s CPU",
        shipped_wall < args.goal,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
