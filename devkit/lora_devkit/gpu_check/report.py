"""The results: a table on stdout, a JSON document, the "GPU calibration" results in
docs/benchmarks.md and, for measured GPU cases, rows of the memory benchmark's case file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .cases import Case

DOCS_BEGIN = "<!-- gpu-check:begin"
DOCS_END = "<!-- gpu-check:end -->"
CASES_MARKER = (
    "# --- measured on lora-operator's own stack by `make gpu-check` (rewritten by it) ---"
)
LORA_DEFAULTS = {"rank": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.05}


def _gib(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:+.1%}"


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row a case: measured and planned peaks (GiB) with the plan's error, speed, status."""
    table = []
    for r in results:
        plan = r.get("plan") or {}
        status = r["status"] if r["status"] == "measured" else f"{r['status']}: {r.get('reason')}"
        table.append(
            [
                r["case"]["id"],
                _gib(r.get("peak_allocated_gib")),
                _gib(plan.get("peak_allocated_gib")),
                _pct(r.get("allocated_error")),
                _gib(r.get("peak_reserved_gib")),
                _gib(plan.get("peak_reserved_gib")),
                _pct(r.get("reserved_error")),
                "-" if r.get("step_s") is None else f"{r['step_s']:.2f}",
                "-" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.0f}",
                r.get("loss_path") or "-",
                status,
            ]
        )
    return table


HEADER = [
    "case",
    "allocated",
    "plan",
    "error",
    "reserved",
    "plan",
    "error",
    "step s",
    "tokens/s",
    "loss",
    "status",
]


def headline(document: dict[str, Any]) -> str:
    device = document["device"]
    where = (
        f"{device.get('device')} ({device.get('total_gib')} GiB total)"
        if device.get("cuda")
        else "CPU (dry run: no GPU memory figures)"
    )
    packages = ", ".join(f"{k} {v}" for k, v in device["versions"].items() if v)
    return (
        f"{document['finished']}: {where}, planned as {document['gpu_type']}; {packages}; "
        f"{document['measured']} of {len(document['results'])} cases measured in "
        f"{document['wall_s']:.0f} s (budget {document['budget_s']:.0f} s)"
    )


def text_table(document: dict[str, Any]) -> str:
    """The stdout table: fixed-width columns, GiB = 2**30 bytes."""
    body = [HEADER, *rows(document["results"])]
    widths = [max(len(row[i]) for row in body) for i in range(len(HEADER) - 1)]
    lines = [headline(document), ""]
    for row in body:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.insert(3, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(document: dict[str, Any]) -> str:
    """The results part of the docs section (between the gpu-check markers)."""
    lines = [
        f"Last run: {headline(document)}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + " --- |" * len(HEADER),
    ]
    for row in rows(document["results"]):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines)


def write_docs(path: Path, document: dict[str, Any]) -> None:
    """Replace what lies between the gpu-check markers of `path` with this run's results."""
    text = path.read_text()
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: no '{DOCS_BEGIN} ... -->' / '{DOCS_END}' markers to write into")
    begin = text.index("-->", begin) + len("-->")
    path.write_text(text[:begin] + "\n" + markdown(document) + "\n" + text[end:])


def case_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Memory-benchmark rows (devkit/lora_devkit/bench/memory_cases.yaml) for the measured GPU
    cases: `trainer: lora-operator` (estimated with the plan's own assumptions) and the
    trainer's default chunked loss; the benchmark counts them as the operator's own stack."""
    out = []
    device = document["device"]
    packages = ", ".join(f"{k} {v}" for k, v in device["versions"].items() if v)
    for r in document["results"]:
        if r["status"] != "measured" or r.get("peak_allocated_gib") is None:
            continue
        case = Case.from_dict(r["case"])
        qlora = case.method == "qlora"
        out.append(
            {
                "id": f"gpu-check-{case.id}",
                "model": case.model_id,
                "method": case.method,
                "quantization": "nf4" if qlora else "none",
                **({"double_quant": True} if qlora else {}),
                **LORA_DEFAULTS,
                "seq_len": case.seq_len,
                "micro_batch": case.micro_batch,
                "checkpointing": True,
                "chunked_loss": True,
                "trainer": "lora-operator",
                "measured_gb": round(r["peak_allocated_gib"] * 1024**3 / 1e9, 2),
                "peak": "max_memory_allocated",
                "source": f"make gpu-check, {device.get('device')}, {document['finished'][:10]}",
                "note": (
                    "lora-operator's own trainer on random-init weights; loss path "
                    f"{r.get('loss_path')}; {packages}"
                ),
            }
        )
    return out


def write_cases(path: Path, document: dict[str, Any]) -> int:
    """Replace the gpu-check block at the end of the case file with this run's rows."""
    text = path.read_text()
    keep = text.split(CASES_MARKER)[0].rstrip("\n") + "\n"
    new = case_rows(document)
    if new:
        keep += f"{CASES_MARKER}\n" + yaml.safe_dump(new, sort_keys=False, width=100)
    path.write_text(keep)
    return len(new)
