"""Kubernetes protobuf request bodies, decoded to the JSON objects they stand for.

Why: kubectl's typed clients (`kubectl create secret generic`, `create configmap`,
`create serviceaccount`, `create namespace`) send `application/vnd.kubernetes.protobuf`, which
every real API server accepts for built-in kinds. The emulator stores JSON, so it decodes the
few kinds those commands send; any other kind gets 415 naming it (a real server reads them all).

The field numbers are those of the upstream `generated.proto` files (k8s.io/api core/v1,
k8s.io/apimachinery meta/v1); protobuf field numbers never change once released.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A field: (json name, how to read it). Scalars: "string", "bytes", "int", "bool"; messages:
# a schema dict; maps: ("map", value kind); repeated fields: ("repeated", kind).
Kind = Any
Schema = dict[int, tuple[str, Kind]]

TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REFERENCE: Schema = {
    5: ("apiVersion", "string"),
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int"),
    8: ("creationTimestamp", TIME),
    9: ("deletionTimestamp", TIME),
    10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", OWNER_REFERENCE)),
    14: ("finalizers", ("repeated", "string")),
}
OBJECT_REFERENCE: Schema = {
    1: ("kind", "string"),
    2: ("namespace", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}
LOCAL_OBJECT_REFERENCE: Schema = {1: ("name", "string")}
KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Secret"): {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", OBJECT_META),
        2: ("data", ("map", "string")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    ("v1", "Namespace"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", {1: ("finalizers", ("repeated", "string"))}),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", OBJECT_META),
        2: ("secrets", ("repeated", OBJECT_REFERENCE)),
        3: ("imagePullSecrets", ("repeated", LOCAL_OBJECT_REFERENCE)),
        4: ("automountServiceAccountToken", "bool"),
    },
}
UNKNOWN: Schema = {  # runtime.Unknown, the envelope after the magic bytes
    1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}),
    2: ("raw", "bytes"),
}


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf object this emulator can read."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes), in wire order."""
    fields: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            fields.append((number, value))
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ProtobufError("truncated field")
            fields.append((number, data[at : at + length]))
            at += length
        elif wire in (1, 5):  # fixed64/fixed32: no field the emulator reads uses them
            at += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return fields


def _scalar(kind: str, value: int | bytes) -> Any:
    if kind == "int":
        if not isinstance(value, int):
            raise ProtobufError("expected a varint")
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited field")
    if kind == "bytes":
        return base64.b64encode(value).decode()
    return value.decode()


def _value(kind: Kind, value: int | bytes) -> Any:
    if isinstance(kind, dict):
        if not isinstance(value, bytes):
            raise ProtobufError("expected an embedded message")
        decoded = decode_message(kind, value)
        return _timestamp(decoded) if kind is TIME else decoded
    return _scalar(kind, value)


def _timestamp(time: dict[str, Any]) -> str | None:
    if not time.get("seconds"):
        return None
    moment = datetime.datetime.fromtimestamp(int(time["seconds"]), tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(schema: Schema, data: bytes) -> dict[str, Any]:
    """A message as JSON: zero values left out (JSON's omitempty), except booleans, which
    gogo-protobuf writes only when set (`*bool`)."""
    result: dict[str, Any] = {}
    for number, raw in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            if not isinstance(raw, bytes):
                raise ProtobufError(f"{name}: expected a map entry")
            entry = dict(_fields(raw))
            key = _scalar("string", entry.get(1, b""))
            result.setdefault(name, {})[key] = _scalar(kind[1], entry.get(2, b""))
        elif isinstance(kind, tuple) and kind[0] == "repeated":
            result.setdefault(name, []).append(_value(kind[1], raw))
        else:
            value = _value(kind, raw)
            if value not in ("", 0, None, {}) or kind == "bool":
                result[name] = value
    return result


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON object a `application/vnd.kubernetes.protobuf` body holds; ProtobufError names
    what it cannot read (a kind outside `KINDS` included)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body lacks the Kubernetes protobuf prefix")
    envelope = decode_message(UNKNOWN, body[len(MAGIC) :])
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion"), type_meta.get("kind")
    if not api_version or not kind:
        raise ProtobufError("the body names no apiVersion and kind")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise ProtobufError(
            f"the emulator reads protobuf only for {sorted(k for _, k in KINDS)}, "
            f"not {api_version} {kind}: send JSON"
        )
    raw = base64.b64decode(envelope.get("raw") or "")
    return {"apiVersion": api_version, "kind": kind, **decode_message(schema, raw)}
