"""`make bench`'s entry for the quota case of `operator_scale` (10,000 GPU LoRAJobs in 50
namespaces under namespace and cluster quotas): a module of its own so the list in `__main__`
stays one module a benchmark."""

from __future__ import annotations

import sys

from .operator_scale import main_quotas as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
