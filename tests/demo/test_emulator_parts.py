"""The emulator's API-server parts on their own, fast (no server, no kubectl): field selectors,
kubectl's protobuf bodies, the watch journal, built-in schemas and namespaces. Expected values
are worked out by hand (protobuf bytes written out field by field, base64 and epoch seconds
computed independently)."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lora_devkit import builtin_schemas, field_selectors, protobuf_bodies
from lora_devkit.namespaces import Namespaces, implied
from lora_devkit.watch_journal import Buses, Journal, JournaledBus

# ------------------------------------------------------------------------------ field selectors


def test_field_selector_operators_and_terms() -> None:
    assert field_selectors.parse("metadata.name=a", "LoRAJob") == [("metadata.name", True, "a")]
    assert field_selectors.parse("metadata.name==a", "LoRAJob") == [("metadata.name", True, "a")]
    assert field_selectors.parse(" metadata.name != a ,, metadata.namespace=ns", "Pod") == [
        ("metadata.name", False, "a"),
        ("metadata.namespace", True, "ns"),
    ]
    assert field_selectors.parse("", "Pod") == []
    assert field_selectors.parse("metadata.name=", "Pod") == [("metadata.name", True, "")]
    assert field_selectors.parse("metadata.name=a=b", "Pod") == [("metadata.name", True, "a=b")]
    assert field_selectors.parse("metadata.name!=a!=b", "Pod") == [("metadata.name", False, "a!=b")]


def test_field_selector_refusals_name_the_term() -> None:
    with pytest.raises(field_selectors.FieldSelectorError) as exc:
        field_selectors.parse("involvedObject.name=a", "LoRAJob")  # Events only
    assert str(exc.value) == 'field label not supported: "involvedObject.name"'
    with pytest.raises(field_selectors.FieldSelectorError) as exc:
        field_selectors.parse("metadata.name", "Pod")
    assert str(exc.value) == 'invalid selector: "metadata.name"; can\'t understand "metadata.name"'
    assert field_selectors.parse("involvedObject.uid!=u", "Event") == [
        ("involvedObject.uid", False, "u")
    ]


EVENT: dict[str, Any] = {
    "metadata": {"name": "e", "namespace": "ns"},
    "involvedObject": {"kind": "LoRAJob", "name": "a", "uid": "u1"},
    "source": {"component": "lora-operator"},
    "type": "Normal",
}


@pytest.mark.parametrize(
    "selector, matched",
    [
        ("involvedObject.name=a", True),
        ("involvedObject.name=b", False),
        ("involvedObject.name!=a", False),
        ("involvedObject.name!=b", True),
        ("involvedObject.kind=LoRAJob,involvedObject.uid=u1", True),
        ("involvedObject.kind=LoRAJob,involvedObject.uid=u2", False),
        ("involvedObject.namespace=", True),  # absent compares as ""
        ("involvedObject.namespace!=", False),
        ("source=lora-operator", True),  # source.component
        ("metadata.namespace=ns,type=Normal", True),
        ("reason=Created", False),
    ],
)
def test_field_selector_matches(selector: str, matched: bool) -> None:
    assert field_selectors.matches(EVENT, field_selectors.parse(selector, "Event")) is matched


def test_field_value_of_a_path_through_a_non_object() -> None:
    assert field_selectors.field_value({"metadata": "x"}, "metadata.name") == ""
    assert (
        field_selectors.field_value({"metadata": {"generation": 3}}, "metadata.generation") == "3"
    )


# ---------------------------------------------------------------------------- protobuf bodies


def varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return b"k8s\x00" + field(1, type_meta) + field(2, raw) + field(3, b"") + field(4, b"")


# What kubectl 1.35 sent for `kubectl create secret generic s --from-literal=k=v` (captured).
KUBECTL_SECRET = bytes.fromhex(
    "6b3873000a0c0a0276311206536563726574121d0a110a017312001a0022002a0032003800420012060a016b"
    "1201761a001a002200"
)


def test_the_secret_kubectl_sends() -> None:
    assert protobuf_bodies.decode_object(KUBECTL_SECRET) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"k": "dg=="},  # base64 of "v"
    }


def test_a_config_map_with_every_metadata_kind_of_field() -> None:
    owner = (
        field(5, b"finetune.lora-operator.io/v1alpha1")
        + field(1, b"LoRAJob")
        + field(3, b"job")
        + field(4, b"u-1")
        + field(6, 0)  # controller: false, written (a *bool)
    )
    meta = (
        field(1, b"cfg")
        + field(2, b"")
        + field(3, b"team")
        + field(7, 2)
        + field(8, field(1, 1767225600))  # 2026-01-01T00:00:00Z
        + field(9, b"")  # deletionTimestamp zero: left out
        + field(11, field(1, b"app") + field(2, b"x"))
        + field(11, field(1, b"tier") + field(2, b"gold"))
        + field(13, owner)
        + field(14, b"f1")
        + field(14, b"f2")
        + field(99, b"ignored")
    )
    raw = (
        field(1, meta)
        + field(2, field(1, b"a") + field(2, b"1"))
        + field(3, field(1, b"bin") + field(2, b"\x00\xff"))
        + field(4, 1)
    )
    assert protobuf_bodies.decode_object(envelope("v1", "ConfigMap", raw)) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cfg",
            "namespace": "team",
            "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "x", "tier": "gold"},
            "ownerReferences": [
                {
                    "apiVersion": "finetune.lora-operator.io/v1alpha1",
                    "kind": "LoRAJob",
                    "name": "job",
                    "uid": "u-1",
                    "controller": False,
                }
            ],
            "finalizers": ["f1", "f2"],
        },
        "data": {"a": "1"},
        "binaryData": {"bin": "AP8="},  # base64 of 00 ff
        "immutable": True,
    }


def test_service_account_namespace_and_negative_numbers() -> None:
    account = field(1, field(1, b"robot") + field(10, (1 << 64) - 5)) + field(3, field(1, b"pull"))
    assert protobuf_bodies.decode_object(envelope("v1", "ServiceAccount", account)) == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "robot", "deletionGracePeriodSeconds": -5},
        "imagePullSecrets": [{"name": "pull"}],
    }
    namespace = field(1, field(1, b"team")) + field(2, field(1, b"kubernetes"))
    assert protobuf_bodies.decode_object(envelope("v1", "Namespace", namespace)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team"},
        "spec": {"finalizers": ["kubernetes"]},
    }


def test_fixed_width_fields_are_skipped_whole() -> None:
    """Their payload bytes (0x12: a field-2 key if misread) must not be read as fields."""
    raw = field(1, field(1, b"s")) + bytes([6 << 3 | 1]) + b"\x12" * 8
    raw += bytes([7 << 3 | 5]) + b"\x12" * 4 + field(3, b"Opaque")
    assert protobuf_bodies.decode_object(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "type": "Opaque",
    }


def test_map_entries_without_key_or_value_and_unknown_fields_between() -> None:
    meta = field(1, b"s") + field(50, b"skipped") + field(11, field(2, b"x"))
    meta += field(11, field(1, b"k")) + field(3, b"ns")
    raw = field(1, meta) + field(2, field(1, b"empty"))
    assert protobuf_bodies.decode_object(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "labels": {"": "x", "k": ""}, "namespace": "ns"},
        "data": {"empty": ""},
    }


def test_the_most_negative_number_and_a_timestamp_in_any_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        meta = field(1, b"s") + field(7, 1 << 63) + field(8, field(1, 1767225600))
        decoded = protobuf_bodies.decode_object(envelope("v1", "Secret", field(1, meta)))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert decoded["metadata"] == {
        "name": "s",
        "generation": -(1 << 63),
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }


def test_an_envelope_without_a_type_or_without_raw() -> None:
    with pytest.raises(protobuf_bodies.ProtobufError) as exc:
        protobuf_bodies.decode_object(b"k8s\x00" + field(2, b""))
    assert str(exc.value) == "the body names no apiVersion and kind"
    kind_only = b"k8s\x00" + field(1, field(2, b"Secret"))
    with pytest.raises(protobuf_bodies.ProtobufError, match="names no apiVersion and kind"):
        protobuf_bodies.decode_object(kind_only)
    bare = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"Secret"))
    assert protobuf_bodies.decode_object(bare) == {"apiVersion": "v1", "kind": "Secret"}


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{}", "the body lacks the Kubernetes protobuf prefix"),
        (b"k8s\x00\x0a", "truncated varint"),
        (b"k8s\x00\x0a\x05ab", "truncated field"),
        (b"k8s\x00\x0b", "unsupported wire type 3"),
        (
            envelope("batch/v1", "Job", b""),
            "the emulator reads protobuf only for ['ConfigMap', 'Namespace', 'Secret', "
            "'ServiceAccount'], not batch/v1 Job: send JSON",
        ),
        (envelope("v1", "Secret", field(1, 5)), "expected an embedded message"),
        (envelope("v1", "Secret", field(2, 5)), "data: expected a map entry"),
        (envelope("v1", "Secret", field(3, 5)), "expected a length-delimited field"),
        (envelope("v1", "Secret", field(1, field(7, b"x"))), "expected a varint"),
        (envelope("v1", "Secret", field(5, b"x")), None),  # a bool as bytes: still truthy
    ],
)
def test_unreadable_bodies_say_why(body: bytes, message: str | None) -> None:
    if message is None:
        assert protobuf_bodies.decode_object(body)["immutable"] is True
        return
    with pytest.raises(protobuf_bodies.ProtobufError) as exc:
        protobuf_bodies.decode_object(body)
    assert str(exc.value) == message


# ------------------------------------------------------------------------------ watch journal


def test_journal_replays_after_a_number_per_resource() -> None:
    journal = Journal(size=3)
    jobs, pods = object(), object()
    assert journal.since(jobs, 0) == []
    journal.record(jobs, {"n": 1})
    journal.record(pods, {"n": 2})
    journal.record(jobs, {"n": 3})
    assert journal.seq == 3
    assert journal.since(jobs, 0) == [{"n": 1}, {"n": 3}]
    assert journal.since(jobs, 1) == [{"n": 3}]
    assert journal.since(pods, 1) == [{"n": 2}]
    assert journal.since(jobs, 3) == []
    assert journal.since(jobs, 99) == []  # not given out yet: from now on
    journal.record(pods, {"n": 4})  # the journal keeps 3: number 1 is gone
    assert journal.since(jobs, 0) is None
    assert journal.since(jobs, 1) == [{"n": 3}]


def test_buses_share_one_journal_and_deliver() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        journal = Journal()
        buses = Buses(journal)
        jobs = buses["jobs"]
        assert buses["jobs"] is jobs and isinstance(jobs, JournaledBus)
        pods = buses["pods"]
        assert isinstance(pods, JournaledBus)
        assert jobs.resource == "jobs" and pods.resource == "pods"
        marker = await jobs.mark()
        await jobs.put({"type": "ADDED"}, "not an event")
        await buses["pods"].put({"type": "DELETED"})
        seen = []
        async for item in jobs.stream(since=marker, limit=2):
            seen.append(item)
        return seen, list(journal.entries)

    seen, entries = asyncio.run(scenario())
    assert seen == [{"type": "ADDED"}, "not an event"]
    assert entries == [(1, "jobs", {"type": "ADDED"}), (2, "pods", {"type": "DELETED"})]


# ---------------------------------------------------------------------------- built-in schemas


@pytest.fixture(autouse=True)
def fresh_schema_caches() -> Iterator[None]:
    """Each test computes its answers: nothing memoized by an earlier run (or mutant)."""
    builtin_schemas._memo.clear()
    builtin_schemas._registry.cache_clear()
    builtin_schemas._validator.cache_clear()
    yield


def job(**spec: Any) -> dict[str, Any]:
    template = {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "labels": {"a.b/c": "d"}},
        "spec": {"template": template, **spec},
    }


def test_a_valid_job_has_no_problems_and_status_is_not_checked() -> None:
    assert builtin_schemas.problems(job()) == builtin_schemas.Problems()
    assert builtin_schemas.problems({**job(), "status": {"active": "many"}}) == (
        builtin_schemas.Problems()
    )


def test_unknown_mistyped_and_missing_fields_are_named() -> None:
    body = job(parallelism="two")
    body["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    body["spec"]["extra"] = 1
    found = builtin_schemas.problems(body)
    assert found.unknown == ("spec.extra", "spec.template.spec.containers[0].imagee")
    assert found.mistyped == ("spec.parallelism: 'two' is not of type 'integer', 'null'",)
    assert found.required == ()
    missing = builtin_schemas.problems({**job(), "spec": {"template": {"spec": {}}}})
    assert missing.required == ("spec.template.spec.containers",)
    assert builtin_schemas.problems({**job(), "spec": {}}).required == ("spec.template",)
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{}, {"image": "x"}]}}
    assert builtin_schemas.problems(pod).required == (
        "spec.containers[0].name",
        "spec.containers[1].name",
    )


def test_other_kinds_and_core_files() -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "bogus": 1}
    assert builtin_schemas.problems(lease) == builtin_schemas.Problems()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": 1}
    assert builtin_schemas.problems(secret).mistyped == ("data: 1 is not of type 'object', 'null'",)
    assert builtin_schemas._file_name("v1", "ConfigMap") == "configmap-v1.json"
    assert builtin_schemas._file_name("batch/v1", "Job") == "job-batch-v1.json"
    assert builtin_schemas._file_name("coordination.k8s.io/v1", "Lease") == (
        "lease-coordination-v1.json"
    )


def test_answers_are_memoized_by_content_not_key_order(monkeypatch: pytest.MonkeyPatch) -> None:
    first = builtin_schemas.problems(job(parallelism="x"))
    reordered = dict(reversed(list(job(parallelism="x").items())))
    assert builtin_schemas.problems(reordered) is first
    assert len(builtin_schemas._memo) == 1
    assert (
        builtin_schemas.problems({**job(), "metadata": {"name": object()}})
        .mistyped[0]
        .startswith("metadata.name: <object object at")
    )
    monkeypatch.setattr(builtin_schemas, "_MEMO_LIMIT", 2)
    builtin_schemas.problems(job(completions=1))  # the memo held 2: cleared first
    assert len(builtin_schemas._memo) == 1


def test_drop_removes_exactly_the_unknown_fields() -> None:
    body = job()
    body["spec"]["template"]["spec"]["containers"].append({"name": "d", "imagee": "x"})
    body["spec"]["extra"] = {"deep": 1}
    builtin_schemas.drop(
        body,
        (
            "spec.missing.x",
            "spec.absent",
            "spec.extra",
            "spec.template.spec.containers[1].imagee",
        ),
    )
    assert body == {
        **job(),
        "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}, {"name": "d"}]}}
        },
    }


# --------------------------------------------------------------------------------- namespaces


def refusal(code: int, reason: str, message: str, name: str = "") -> dict[str, Any]:
    """The Status a real API server sends for a namespace request it refuses."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "kind": "namespaces"} if name else {},
        "code": code,
    }


def implied_namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": name,
            "resourceVersion": "1",
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Take out what the server generates (checked for shape) and return the rest."""
    meta = obj["metadata"]
    uid, stamp, version = (
        meta.pop("uid"),
        meta.pop("creationTimestamp"),
        meta.pop("resourceVersion"),
    )
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", uid)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert re.fullmatch(r"[0-9a-f]{8}", version)
    return obj


def test_namespaces_listed_implied_and_fetched() -> None:
    in_use = {"work"}
    spaces = Namespaces(lambda: in_use)
    assert spaces.answer("GET", None, None) == (
        200,
        {
            "apiVersion": "v1",
            "kind": "NamespaceList",
            "metadata": {"resourceVersion": "1"},
            "items": [implied_namespace("default"), implied_namespace("work")],
        },
    )
    assert implied("work") == implied_namespace("work")
    assert spaces.answer("GET", "work", None) == (200, implied_namespace("work"))
    assert spaces.answer("GET", "nowhere", None) == (
        404,
        refusal(404, "NotFound", 'namespaces "nowhere" not found', "nowhere"),
    )
    assert spaces.answer("DELETE", "nowhere", None)[0] == 404
    status, deleted = spaces.answer("DELETE", "work", None)  # implied: still in use, still there
    assert (status, deleted["status"]) == (200, {"phase": "Terminating"})
    assert spaces.answer("GET", "work", None) == (200, implied_namespace("work"))


def test_a_created_namespace_and_the_refusals() -> None:
    spaces = Namespaces(lambda: ["work"])
    body = {"metadata": {"name": "team", "labels": {"a": "b"}}}
    status, made = spaces.answer("POST", None, body)
    assert body == {"metadata": {"name": "team", "labels": {"a": "b"}}}  # not changed
    assert status == 201
    assert server_fields(copy.deepcopy(made)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "labels": {"a": "b", "kubernetes.io/metadata.name": "team"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    assert spaces.answer("GET", "team", None) == (200, made)
    for name in ("team", "default"):
        assert spaces.answer("POST", None, {"metadata": {"name": name}}) == (
            409,
            refusal(409, "AlreadyExists", f'namespaces "{name}" already exists', name),
        )
    required = refusal(422, "Invalid", "Namespace is invalid: metadata.name: Required value")
    bad_bodies: list[Any] = [
        {"metadata": {}},
        {"metadata": {"name": ""}},
        {"metadata": {"name": 5}},
    ]
    for bad in [*bad_bodies, "x", {}]:
        assert spaces.answer("POST", None, bad) == (422, required)
    assert spaces.answer("PUT", None, body) == (
        405,
        refusal(405, "MethodNotAllowed", "PUT is not allowed on namespaces"),
    )
    assert spaces.answer("POST", "team", body) == (
        405,
        refusal(405, "MethodNotAllowed", "POST is not allowed on a namespace"),
    )
    assert spaces.answer("PATCH", "team", [1]) == (
        400,
        refusal(400, "BadRequest", "the body must be a JSON object", "team"),
    )
    assert [n["metadata"]["name"] for n in spaces.listed()["items"]] == ["default", "team", "work"]


def test_namespace_patch_put_and_delete() -> None:
    spaces = Namespaces(lambda: [])
    labels = {"a": "b", "keep": "me"}
    _, made = spaces.answer("POST", None, {"metadata": {"name": "team", "labels": labels}})
    uid, created = made["metadata"]["uid"], made["metadata"]["creationTimestamp"]
    patch = {"metadata": {"labels": {"a": None, "c": "d"}, "annotations": {"n": "1", "x": None}}}
    status, patched = spaces.answer("PATCH", "team", patch)
    assert status == 200
    assert (patched["metadata"]["uid"], patched["metadata"]["creationTimestamp"]) == (uid, created)
    assert patched["metadata"]["resourceVersion"] != made["metadata"]["resourceVersion"]
    assert server_fields(copy.deepcopy(patched)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "team",
            "labels": {"keep": "me", "c": "d", "kubernetes.io/metadata.name": "team"},
            "annotations": {"n": "1"},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
    replacement = {"metadata": {"name": "other", "uid": "x"}, "spec": {"finalizers": []}}
    status, put = spaces.answer("PUT", "team", replacement)
    assert replacement == {"metadata": {"name": "other", "uid": "x"}, "spec": {"finalizers": []}}
    assert status == 200 and (put["metadata"]["uid"], put["metadata"]["name"]) == (uid, "team")
    assert put["metadata"]["creationTimestamp"] == created
    assert put["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    assert put["spec"] == {"finalizers": []}  # replaced, not defaulted
    status, gone = spaces.answer("DELETE", "team", None)
    assert status == 200 and gone == {**put, "status": {"phase": "Terminating"}}
    assert spaces.answer("GET", "team", None)[0] == 404
    status, default = spaces.answer("PATCH", "default", {"metadata": {"labels": {"x": "y"}}})
    assert status == 200 and default["metadata"]["uid"] == "default"
    assert default["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default", "x": "y"}
    assert spaces.get("default") == default  # kept once written
    status, bare = spaces.answer("PUT", "default", {})
    assert status == 200 and bare["spec"] == {"finalizers": ["kubernetes"]}
    assert bare["metadata"]["name"] == "default" and bare["apiVersion"] == "v1"


def test_printer_column_paths_with_a_condition_filter() -> None:
    """The CRD's READY column is `.status.conditions[?(@.type=="Ready")].status`: the emulator
    printed `<none>` for it (no filters), where a real API server prints the condition's status."""
    from lora_devkit.emulator import _dig

    conditions = [{"type": "Running", "status": "False"}, {"type": "Ready", "status": "True"}]
    obj = {"status": {"plan": {"totalGpus": 2}, "conditions": conditions}}
    assert _dig(obj, ".status.plan.totalGpus") == 2
    assert _dig(obj, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert _dig(obj, '.status.conditions[?(@.type=="Running")].status') == "False"
    assert _dig(obj, '.status.conditions[?(@.type=="Stalled")].status') is None
    assert _dig({"status": {}}, '.status.conditions[?(@.type=="Ready")].status') is None
    assert _dig({"status": "x"}, ".status.plan.totalGpus") is None
