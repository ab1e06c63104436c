"""`make bench`: run every benchmark in turn; each prints its own table."""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from .goals import RESULTS, summary_table

BENCHMARKS = [
    ("memory model accuracy", "lora_devkit.bench.memory"),
    ("serving memory (vLLM figures)", "lora_devkit.bench.serving_memory"),
    ("plan speed (cold `lorajob plan`)", "lora_devkit.bench.plan_speed"),
    ("placement cost (every example x catalog GPU)", "lora_devkit.bench.placement_cost"),
    ("operator scale (1000 LoRAJobs)", "lora_devkit.bench.operator_scale"),
    ("operator scale with quotas (10,000 LoRAJobs)", "lora_devkit.bench.operator_scale_quotas"),
    ("model-config isolation (trickling URL)", "lora_devkit.bench.model_config_isolation"),
    ("trainer throughput", "lora_devkit.bench.trainer"),
    ("trainer memory (128k vocabulary, 2 x 2048)", "lora_devkit.bench.trainer_memory"),
]


def main(argv: list[str]) -> int:
    selected = [b for b in BENCHMARKS if not argv or any(a in b[1] for a in argv)]
    failures, not_run = 0, []
    for title, module_name in selected:
        print(f"\n=== {title} ===", flush=True)
        started = time.monotonic()
        recorded = len(RESULTS)
        try:
            code = importlib.import_module(module_name).main()
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            code = 1
        outcome = "ok" if code == 0 else f"exit {code}"
        print(f"--- {title}: {outcome} in {time.monotonic() - started:.1f} s")
        failures += code != 0
        if len(RESULTS) == recorded:
            not_run.append(title)
    print("\n=== goals ===")
    print(summary_table(list(RESULTS), not_run))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
