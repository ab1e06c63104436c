"""Turn pydantic validation errors into one readable line per problem, naming the wire field."""

from __future__ import annotations

from pydantic import ValidationError


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
        if err["type"] == "extra_forbidden":
            msg, suffix = "unknown field", ""
        lines.append(f"{path}: {msg}{suffix}")
    return lines
