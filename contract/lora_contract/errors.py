"""Turn pydantic validation errors into one readable line per problem, naming the wire field."""

from __future__ import annotations

from pydantic import ValidationError

from .types import (
    BUCKET_PATTERN,
    DATA_URI_PATTERN,
    DNS_LABEL_PATTERN,
    MODEL_URI_PATTERN,
    PREFIX_PATTERN,
    QUANTITY_PATTERN,
    RESOURCE_NAME_PATTERN,
)

PATTERN_HINTS = {
    MODEL_URI_PATTERN: "must be hf://org/name, s3://bucket/prefix or pvc://claim/path, "
    "without '..' segments",
    DATA_URI_PATTERN: "must be s3://bucket/key, pvc://claim/path, file:///path or an absolute "
    "path, without '..' segments",
    PREFIX_PATTERN: "must be a relative key prefix (letters, digits, '_', '.', '-', '/') without "
    "'..' segments",
    RESOURCE_NAME_PATTERN: "must be an extended resource name such as nvidia.com/gpu",
    BUCKET_PATTERN: "must be a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')",
    DNS_LABEL_PATTERN: "must be a DNS label (lowercase letters, digits and '-')",
    QUANTITY_PATTERN: "must be a non-negative Kubernetes quantity such as 8, 500m, 32Gi",
}


def field_path(loc: tuple[int | str, ...], root: str = "") -> str:
    parts = [root] if root else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item in ("function-after", "function-before") or item.startswith("function-"):
            continue
        else:
            parts.append(str(item))
    return ".".join(parts) or "<root>"


def describe_validation_error(exc: ValidationError, root: str = "") -> list[str]:
    """['spec.lora.r: Input should be greater than or equal to 1 (got 0)', ...]."""
    lines = []
    for err in exc.errors(include_url=False):
        path = field_path(tuple(err["loc"]), root)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        suffix = ""
        if err["type"] not in ("missing", "model_type") and not isinstance(got, dict | list):
            suffix = f" (got {got!r})"
        pattern = (err.get("ctx") or {}).get("pattern")
        if err["type"] == "string_pattern_mismatch" and pattern in PATTERN_HINTS:
            msg = PATTERN_HINTS[pattern]
        if err["type"] == "extra_forbidden":
            msg, suffix = "unknown field", ""
        lines.append(f"{path}: {msg}{suffix}")
    return lines
