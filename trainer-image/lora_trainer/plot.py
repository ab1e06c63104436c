"""loss.png: train and eval loss against the step, drawn headless (matplotlib Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def loss_plot_png(records: Sequence[dict[str, Any]], title: str) -> bytes:
    """PNG bytes of the loss curves found in metrics records (step, loss, eval_loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if train or evals:
            ax.legend()
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
