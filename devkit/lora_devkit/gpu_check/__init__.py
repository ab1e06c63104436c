"""GPU calibration (`make gpu-check`): the real trainer on random-init models built from the
shipped configs, its measured peak memory beside the plan's estimate for the same settings.

Random weights take exactly the memory real ones do, so no model download is needed. Each case
runs in a fresh process (clean peaks; an out-of-memory ends one case, not the run), in an order
that puts the most informative cases first, and the run stops starting cases when the next one
would not finish inside the time budget.
"""
