"""values.schema.json turns bad values into a clear error naming the key, before rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_helpers import CHART, helm, write_values

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"watch": {"allNamespaces": False}}, "/watch"),
    ({"watch": {"allNamespaces": False, "namespaces": ["Team_A"]}}, "/watch/namespaces/0"),
    ({"config": {"kueue": {"enable": True}}}, "enable"),
    ({"config": {"rendezvousPort": 70000}}, "/config/rendezvousPort"),
    ({"config": {"progressIntervalSeconds": 0}}, "/config/progressIntervalSeconds"),
    ({"config": {"quotas": {"cluster": {"gpus": -2}}}}, "/config/quotas/cluster/gpus"),
    ({"config": {"gpuCatalog": [{"name": "X"}]}}, "memoryGib"),
    ({"config": {"s3": {"endpoint": "minio:9000"}}}, "/config/s3/endpoint"),
    ({"config": {"policy": {"allowedS3Endpoints": ["http://h/p"]}}}, "/config/policy/"),
    ({"config": {"policy": {"requireSecretOptIn": "no"}}}, "/config/policy/requireSecretOptIn"),
    ({"config": {"policy": {"allowedImages": []}}}, "allowedImages"),
    ({"minio": {"buckets": ["Bad_Bucket"]}}, "/minio/buckets/0"),
    ({"minio": {"auth": {"rootPassword": "short"}}}, "/minio/auth/rootPassword"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"unknownKey": 1}, "unknownKey"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_values_are_rejected_with_the_key_named(
    values: dict[str, Any], where: str, tmp_path: Path
) -> None:
    result = helm(
        "template", "x", str(CHART), "-f", str(write_values(tmp_path, values)), check=False
    )
    assert result.returncode != 0, f"accepted bad values {values}"
    assert "schema" in result.stderr.lower() or "at '" in result.stderr
    assert where in result.stderr, result.stderr
