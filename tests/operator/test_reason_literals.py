"""Condition types and reasons come from the contract (`ConditionType`, `Reason`), never string
literals in the operator: a GitOps health check, an alert or `resync_interval` matching a reason
must find the one spelling the operator writes. An AST walk over `operator/lora_operator` fails on
a literal passed where a reason or condition type goes (`condition`, `set_condition`, `event`,
`emit`, `post_event`, `build_event`, `ServingState`, a `reason=` keyword), compared with a
`.reason` / `.get("reason")`, or given as a reason's fallback (`.get("reason") or "X"`). The
checker is shown to catch each of those in planted code, so it cannot pass by finding nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lora_contract.types import ConditionType, Reason

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "lora_operator"

# call name -> positions of its condition-type and reason arguments
CHECKED_ARGS: dict[str, tuple[int, ...]] = {
    "condition": (0, 2),  # _Run.condition(type_, status, reason, message)
    "set_condition": (1, 3),  # (conditions, type_, status, reason, message, generation)
    "event": (1,),  # _Run.event(type_, reason, message)
    "emit": (3,),  # EventFn(kube, obj, type_, reason, message)
    "post_event": (3,),
    "build_event": (2,),  # (obj, type_, reason, message)
    "ServingState": (1,),  # (status, reason, message, url)
    "find": (1,),  # conditions.find(conditions, type_)
    "_raw_condition": (1,),
    "_raw_reason": (1,),
}


# Models whose `reason` is a plan's free-text explanation ("why" in `lorajob plan`), never a
# condition or Event reason: a literal there is prose, not a spelling a health check matches.
FREE_TEXT_REASONS = frozenset({"PlanStatus", "ServingPlanStatus"})


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _literals(node: ast.AST) -> list[str]:
    """String constants in `node`, or in a tuple/list/set of them."""
    if _is_str(node):
        return [node.value]  # type: ignore[attr-defined]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for elt in node.elts for v in _literals(elt)]
    return []


def _reads_reason(node: ast.AST) -> bool:
    """`x.reason`, `x.get("reason")` or `x["reason"]`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "reason"
    if isinstance(node, ast.Call) and _call_name(node) == "get" and node.args:
        return _is_str(node.args[0]) and node.args[0].value == "reason"  # type: ignore[attr-defined]
    if isinstance(node, ast.Subscript):
        return _is_str(node.slice) and node.slice.value == "reason"  # type: ignore[attr-defined]
    return False


def reason_literals(source: str, filename: str = "<planted>") -> list[str]:
    """Every place in `source` where a reason or condition type is a string literal."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _call_name(node)
            for index in CHECKED_ARGS.get(name or "", ()):
                if index < len(node.args) and _is_str(node.args[index]):
                    found.append(f"{where}: {name}(... {node.args[index].value!r} ...)")  # type: ignore[attr-defined]
            for keyword in node.keywords:
                if keyword.arg == "reason" and name in FREE_TEXT_REASONS:
                    continue
                if keyword.arg in ("reason", "type_") and _is_str(keyword.value):
                    found.append(f"{where}: {keyword.arg}={keyword.value.value!r}")  # type: ignore[attr-defined]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_reads_reason(side) for side in sides):
                for side in sides:
                    found.extend(f"{where}: reason compared with {v!r}" for v in _literals(side))
        elif isinstance(node, ast.BoolOp) and any(_reads_reason(v) for v in node.values):
            for value in node.values:
                found.extend(f"{where}: reason fallback {v!r}" for v in _literals(value))
    return found


def test_the_operator_writes_no_reason_or_condition_type_as_a_literal() -> None:
    files = sorted(OPERATOR.rglob("*.py"))
    assert len(files) > 20, f"walked too few files under {OPERATOR}"
    found = [hit for path in files for hit in reason_literals(path.read_text(), str(path))]
    assert found == []


PLANTED = [
    ('self.condition(ConditionType.Running, False, "Oops", "m")', "condition"),
    ('self.condition("Oops", False, Reason.Failed, "m")', "condition"),
    ('set_condition(conds, ConditionType.Ready, True, "Oops")', "set_condition"),
    ('self.event("Warning", "Oops", "m")', "event"),
    ('await self.owner.emit(kube, obj, "Normal", "Oops", "m")', "emit"),
    ('await post_event(kube, obj, "Normal", "Oops", "m")', "post_event"),
    ('build_event(obj, "Normal", "Oops", "m")', "build_event"),
    ('ServingState("False", "Oops", "m")', "ServingState"),
    ('find(status.conditions, "Oops")', "find"),
    ('_raw_condition(status, "Oops")', "_raw_condition"),
    ('ServingState(status="False", reason="Oops", message="m")', "reason="),
    ('ok = serving.reason == "Oops"', "compared"),
    ('ok = "Oops" != state.reason', "compared"),
    ('ok = c.get("reason") in ("Oops", Reason.NameConflict)', "compared"),
    ('ok = c["reason"] == "Oops"', "compared"),
    ('reason = job.get("reason") or "Oops"', "fallback"),
]


@pytest.mark.parametrize(
    ("code", "kind"), PLANTED, ids=[p[1] + str(i) for i, p in enumerate(PLANTED)]
)
def test_the_checker_catches_a_planted_literal(code: str, kind: str) -> None:
    found = reason_literals(code)
    assert len(found) == 1, found
    assert kind in found[0] and "'Oops'" in found[0], found


def test_the_checker_passes_the_enum_forms() -> None:
    clean = """
self.condition(ConditionType.Running, False, Reason.Failed, "a message")
self.event("Warning", Reason.PodFailed, f"pod {name} failed")
ok = serving.reason == Reason.NameConflict
ok = c.get("reason") in (Reason.KServeNotInstalled, Reason.NameConflict)
reason = job.get("reason") or Reason.JobFailed
ServingState("False", Reason.ServingError, "cannot create")
ServingPlanStatus(gpus=0, reason="served on CPU, like the training")
"""
    assert reason_literals(clean) == []


def test_reasons_and_condition_types_are_spelled_as_named() -> None:
    """The wire value is the member's name (no alias can drift), and each reason is unique."""
    for member in (*Reason, *ConditionType):
        assert member.value == member.name
    assert len({r.value for r in Reason}) == len(Reason)
    assert str(Reason.KServeNotInstalled) == "KServeNotInstalled"  # StrEnum: plain on the wire
    assert f"Serving{Reason.Ready}" == "ServingReady"
