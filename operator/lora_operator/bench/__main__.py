"""`make bench`: run every benchmark in turn; each prints its own table."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    ("memory model accuracy", "lora_operator.bench.memory"),
    ("operator scale (1000 LoRAJobs)", "lora_operator.bench.operator_scale"),
    ("trainer throughput", "lora_operator.bench.trainer"),
]


def main(argv: list[str]) -> int:
    selected = [b for b in BENCHMARKS if not argv or any(a in b[1] for a in argv)]
    failures = 0
    for title, module_name in selected:
        print(f"\n=== {title} ===", flush=True)
        started = time.monotonic()
        code = importlib.import_module(module_name).main()
        outcome = "ok" if code == 0 else f"exit {code}"
        print(f"--- {title}: {outcome} in {time.monotonic() - started:.1f} s")
        failures += code != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
