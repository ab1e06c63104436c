"""Field selectors (`?fieldSelector=metadata.name=a,involvedObject.kind!=Pod`) as the API server
reads them.

Why: `kubectl describe` lists an object's Events with `involvedObject.*` selectors, and
`kubectl wait`/`get NAME -w` watch with `metadata.name=`; ignored selectors showed every job's
Events and let one job's condition answer a wait on another.
"""

from __future__ import annotations

from typing import Any

# The fields the API server lets clients select on (every kind: name and namespace; Events:
# their involvedObject and a few more). Others are refused, as the API server refuses them.
COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
EVENT_FIELDS = {
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
}


class FieldSelectorError(ValueError):
    """A selector the API server would refuse with 400 (the message names the term)."""


Term = tuple[str, bool, str]  # (field, equal?, value)


def parse(selector: str, kind: str) -> list[Term]:
    """`a=b,c==d,e!=f` -> terms; a field `kind` cannot be selected on is an error."""
    allowed = COMMON_FIELDS | (EVENT_FIELDS if kind == "Event" else set())
    terms: list[Term] = []
    for part in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in part:
            field, value = part.split("!=", 1)
            equal = False
        elif "=" in part:
            field, value = part.split("=", 1)
            value = value[1:] if value.startswith("=") else value
            equal = True
        else:
            raise FieldSelectorError(f'invalid selector: "{part}"; can\'t understand "{part}"')
        field = field.strip()
        if field not in allowed:
            raise FieldSelectorError(f'field label not supported: "{field}"')
        terms.append((field, equal, value.strip()))
    return terms


def field_value(obj: dict[str, Any], field: str) -> str:
    """The object's value at a dotted path, as the selector compares it (absent is '')."""
    if field == "source":  # Events: `source` selects on source.component
        field = "source.component"
    value: Any = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def matches(obj: dict[str, Any], terms: list[Term]) -> bool:
    return all((field_value(obj, field) == value) == equal for field, equal, value in terms)
