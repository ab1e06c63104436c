"""Deeply nested user input (lora_contract.bounded_parse): a manifest or model config.json of
`[[[...]]]` was a RecursionError (a traceback and exit 1 from the CLI); now every path that
parses user data refuses it with one line naming the source, and `lorajob` exits 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from apidata import ROOT

from lora_contract.bounded_parse import (
    MAX_DEPTH,
    TooDeepError,
    json_depth,
    load_json,
    load_yaml_all,
)
from lora_operator.api.loading import MAX_MANIFEST_BYTES, SpecError, load_documents
from lora_operator.memory import PlanningError
from lora_operator.memory.model_config import parse_config

DEEP = 100_000  # 200 KB of brackets: far past Python's recursion limit (1000)
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# ------------------------------------------------------------------ the scan, hand-counted


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ('"[[[["', 0),  # brackets inside a string do not count
        ('{"a": [1, [2]], "b": {}}', 3),  # { [ [ : three open at the deepest point
        ("[[], [], [[{}]]]", 4),  # depth is the maximum, not the count of brackets
        ('["\\"[[[", [1]]', 2),  # an escaped quote does not end the string
        ('{"k\\\\": [[]]}', 3),  # an escaped backslash before the closing quote
    ],
)
def test_json_depth_counts_open_brackets_outside_strings(text: str, depth: int) -> None:
    assert json_depth(text) == depth


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text, depth",
    [
        ('"' + '\\"' * 500_000, 0),  # unterminated, a million escaped quotes
        ('"' + '\\"' * 500_000 + "\\", 0),  # ... ending in a lone backslash
        ("[" + '"[",' * 300_000, 1),  # 300 000 strings holding `[`, one bracket outside
        ("[" + '"[' * 500_000, 250_001),  # `"["` strings alternate with brackets outside
        ('"abc' + "[" * 100, 0),  # brackets in an unterminated string: json.loads says why
    ],
    ids=["escaped-quotes", "trailing-backslash", "strings", "alternating", "unterminated"],
)
def test_the_scan_is_linear_on_hostile_strings(text: str, depth: int) -> None:
    """A string pattern that must find its closing quote retried from every escaped quote:
    80 KB took 70 s, so 1 MiB in the event loop would stall the operator for hours."""
    started = time.monotonic()
    assert json_depth(text) == depth
    assert time.monotonic() - started < 5.0  # about 0.1 s here


def test_json_exactly_at_the_limit_parses_one_deeper_is_refused() -> None:
    at_limit = load_json(nested_json(MAX_DEPTH), "f.json")
    levels = 0
    while isinstance(at_limit, list) and at_limit:
        at_limit, levels = at_limit[0], levels + 1
    assert levels == MAX_DEPTH - 1  # the innermost list is empty
    with pytest.raises(TooDeepError) as exc:
        load_json(nested_json(MAX_DEPTH + 1), "f.json")
    assert str(exc.value) == (
        f"f.json: nested more than {MAX_DEPTH} levels deep ({MAX_DEPTH + 1} levels); "
        "nothing real nests so deep"
    )
    assert exc.value.source == "f.json"


def test_a_lower_limit_is_honoured() -> None:
    assert load_json("[[1]]", "x", max_depth=2) == [[1]]
    with pytest.raises(TooDeepError, match="more than 1 levels deep"):
        load_json("[[1]]", "x", max_depth=1)


def yaml_flow(depth: int) -> str:
    return "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"  # the mapping is level 1


def yaml_block(depth: int) -> str:
    """`depth` nested block sequences under a mapping key: one level per indentation step."""
    lines = ["a:"] + [("  " * i) + "-" for i in range(1, depth)]
    return "\n".join(lines) + " 1\n"


@pytest.mark.parametrize("build", [yaml_flow, yaml_block], ids=["flow", "block"])
def test_yaml_exactly_at_the_limit_loads_one_deeper_is_refused(build: object) -> None:
    assert callable(build)
    assert load_yaml_all(build(MAX_DEPTH), "m.yaml")[0]["a"] is not None
    with pytest.raises(TooDeepError) as exc:
        load_yaml_all(build(MAX_DEPTH + 1), "m.yaml")
    assert str(exc.value).startswith(f"m.yaml: {TOO_DEEP} at line ")


def test_yaml_scalars_do_not_count_as_levels() -> None:
    # one mapping holding one sequence of scalars: depth 2, so max_depth=2 loads it
    assert load_yaml_all("a: [1, 2, x]\nb: c\n", "s", max_depth=2) == [{"a": [1, 2, "x"], "b": "c"}]
    with pytest.raises(TooDeepError):
        load_yaml_all("a: [1, 2, x]\n", "s", max_depth=1)


ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcde", "bcdef", strict=True)]
    + ["g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]"]
)


def test_a_yaml_alias_bomb_is_refused_by_its_expanded_size() -> None:
    # 10^7 values once expanded, from 7 short lines
    with pytest.raises(TooDeepError) as exc:
        load_yaml_all(ALIAS_BOMB, "bomb.yaml")
    assert str(exc.value) == (
        "bomb.yaml: a document expands to more than 100000 values (aliases included)"
    )


def test_aliases_count_their_whole_subtree() -> None:
    # the root mapping (1), key a (1), the list (1) and its three scalars (3): 6 nodes; the key
    # b (1) and its alias, which stands for the 4-node list: 11 in all.
    text = "a: &l [1, 2, 3]\nb: *l\n"
    assert load_yaml_all(text, "s", max_nodes=11) == [{"a": [1, 2, 3], "b": [1, 2, 3]}]
    with pytest.raises(TooDeepError, match="expands to more than 10 values"):
        load_yaml_all(text, "s", max_nodes=10)


def test_the_value_count_is_per_document() -> None:
    """Each document of `a: &l [1, 2, 3]` + `b: *l` is 11 values; three of them load under a
    limit of 11, since a file of many LoRAJobs is as welcome as one."""
    text = "---\n".join(["a: &l [1, 2, 3]\nb: *l\n"] * 3)
    assert len(load_yaml_all(text, "s", max_nodes=11)) == 3
    with pytest.raises(TooDeepError):
        load_yaml_all(text, "s", max_nodes=10)


# ------------------------------------------------------------------ every entry point


def test_a_deep_manifest_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("spec: " + nested_json(DEEP) + "\n")
    with pytest.raises(SpecError) as exc:
        load_documents(deep)
    assert exc.value.source == str(deep)
    assert exc.value.problems == [f"{TOO_DEEP} at line 1; nothing real nests so deep"]


def test_a_manifest_over_the_request_limit_is_refused_unread(tmp_path: Path) -> None:
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(b"a: 1\n" + b"#" * (MAX_MANIFEST_BYTES - 6) + b"\n")
    assert exact.stat().st_size == MAX_MANIFEST_BYTES == 3 * 1024 * 1024
    assert load_documents(exact) == [{"a": 1}]
    over = tmp_path / "over.yaml"
    over.write_bytes(exact.read_bytes() + b"\n")
    with pytest.raises(SpecError) as exc:
        load_documents(over)
    assert exc.value.problems == ["larger than 3145728 bytes, the API server's request limit"]


def test_a_deep_model_config_is_a_planning_error_naming_where() -> None:
    with pytest.raises(PlanningError) as exc:
        parse_config(nested_json(DEEP).encode(), "spec.baseModel.config: 'c.json'")
    assert str(exc.value) == (
        f"spec.baseModel.config: 'c.json': {TOO_DEEP} ({DEEP} levels); nothing real nests so deep"
    )
    shallow = '{"model_type": "llama", "rope_scaling": {"factor": [8.0]}}'
    assert parse_config(shallow, "w")["rope_scaling"] == {"factor": [8.0]}


def lorajob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_the_cli_refuses_a_deep_manifest_in_one_line(command: str, tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("apiVersion: v1\nspec: " + nested_json(DEEP) + "\n")
    out = lorajob(command, str(deep))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        f"error: {deep}: {TOO_DEEP} at line 2; nothing real nests so deep"
    ]


def test_plan_refuses_a_deep_model_config_file_in_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "config.json"
    deep.write_text(nested_json(DEEP))
    example = ROOT / "examples" / "tiny-cpu.yaml"
    out = lorajob("plan", str(example), "--model-config", str(deep))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        f"error: {example} (tiny-cpu): spec.baseModel.config: {str(deep)!r}: {TOO_DEEP} "
        f"({DEEP} levels); nothing real nests so deep"
    ]


def test_a_reader_that_skips_the_bound_still_ends_in_one_line(tmp_path: Path) -> None:
    """`lorajob calibrate` reads kubectl's dump with plain PyYAML: the CLI's backstop turns its
    RecursionError into one line and exit 2."""
    deep = tmp_path / "dump.json"
    deep.write_text(nested_json(DEEP))
    out = lorajob("calibrate", str(deep))
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        "error: lorajob calibrate: the input is nested too deeply to read "
        "(nothing real nests so deep)"
    ]
