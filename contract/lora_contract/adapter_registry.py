"""The shared server's registry as a wire format: what the operator writes into the registry
ConfigMap (`lora-server-<digest>`, docs/serving.md) and the adapter syncer beside vLLM reads from
its mounted copy. One file per adapter, `adapter.<LoRAJob uid>`, holding the JSON of an `Entry`;
`server.json` holds the server's shape (its `baseModel` is the name vLLM serves, which the
resolver requires in each adapter's `base_model_name_or_path`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

SERVER_DATA_KEY = "server.json"
ENTRY_PREFIX = "adapter."  # data keys of adapters: adapter.<LoRAJob uid>
# serving.adapterName's pattern: also a safe directory name for the resolver
ADAPTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# a Secret name the syncer may read as a folder under its credentials directory
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# a Secret key as Kubernetes allows it (also a safe file name in the mounted Secret)
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
DEFAULT_ACCESS_KEY_KEY = "accessKey"  # SecretRef's defaults
DEFAULT_SECRET_KEY_KEY = "secretKey"


def is_endpoint_url(endpoint: str) -> bool:
    """An http(s) URL naming a host and nothing else (no user, path, query or fragment): what the
    syncer may open a store on, never a file path or another scheme."""
    if any(char.isspace() for char in endpoint):
        return False
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError:
        return False
    return bool(
        parts.scheme in ("http", "https")
        and parts.hostname
        and "@" not in parts.netloc
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


@dataclass(frozen=True)
class Entry:
    """One adapter on the server: the job it comes from, the name clients ask for, its URI."""

    job: str
    adapter: str
    uri: str
    rank: int
    secret: str | None = None  # the job's credentials Secret, listed by name for the server
    # the promoted run (status.servingRun) whose adapter `uri` is; entries written before
    # promotion applied to shared serving have none and still parse
    run: str | None = None
    # the keys of `secret` holding the S3 keys (the job's SecretRef), read by the syncer from
    # the mounted Secret; written only when not the defaults, so older entries read back equal
    access_key_key: str = DEFAULT_ACCESS_KEY_KEY
    secret_key_key: str = DEFAULT_SECRET_KEY_KEY
    # the job's S3 endpoint and region (its resolved output target), written only when they
    # differ from the server's (server.json's s3Endpoint/s3Region, which the syncer has in its
    # env), so entries of the creating job's store read back as before; `region` goes with
    # `endpoint` (None beside an endpoint: no region, not the server's)
    endpoint: str | None = None
    region: str | None = None

    def on_server(self, endpoint: str | None, region: str | None) -> Entry:
        """This entry on a server whose syncer downloads from `endpoint`/`region`: its own
        location kept only where it differs, so the same store never rewrites an entry."""
        if self.endpoint is None or (self.endpoint, self.region) == (endpoint, region):
            return replace(self, endpoint=None, region=None)
        return self

    def to_data(self) -> str:
        raw: dict[str, str | int] = {
            "job": self.job,
            "adapter": self.adapter,
            "uri": self.uri,
            "rank": self.rank,
        }
        if self.secret is not None:
            raw["secret"] = self.secret
        if self.run is not None:
            raw["run"] = self.run
        if self.access_key_key != DEFAULT_ACCESS_KEY_KEY:
            raw["accessKeyKey"] = self.access_key_key
        if self.secret_key_key != DEFAULT_SECRET_KEY_KEY:
            raw["secretKeyKey"] = self.secret_key_key
        if self.endpoint is not None:
            raw["endpoint"] = self.endpoint
        if self.region is not None:
            raw["region"] = self.region
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_data(cls, text: str) -> Entry | None:
        """None for an entry that does not parse, names an adapter that is not a DNS label, a
        Secret (or key) that is not a Kubernetes name, or an endpoint that is not an http(s) URL
        (edited by hand): it is swept by the operator and never served, so no entry points a
        folder, a key file or the syncer's store elsewhere."""
        try:
            raw = json.loads(text)
            secret, run = raw.get("secret"), raw.get("run")
            endpoint, region = raw.get("endpoint"), raw.get("region")
            entry = cls(
                str(raw["job"]),
                str(raw["adapter"]),
                str(raw["uri"]),
                int(raw["rank"]),
                None if secret is None else str(secret),
                None if run is None else str(run),
                str(raw.get("accessKeyKey", DEFAULT_ACCESS_KEY_KEY)),
                str(raw.get("secretKeyKey", DEFAULT_SECRET_KEY_KEY)),
                None if endpoint is None else str(endpoint),
                None if region is None else str(region),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return entry if entry.is_safe() else None

    def is_safe(self) -> bool:
        """Every name in it is one the syncer may use as a path component, and its store (if it
        names one) an http(s) URL; a region only beside an endpoint."""
        keys = (self.access_key_key, self.secret_key_key)
        store = (
            self.region is None
            if self.endpoint is None
            else is_endpoint_url(self.endpoint) and self.region != ""
        )
        return bool(
            ADAPTER_NAME.fullmatch(self.adapter)
            and (self.secret is None or SECRET_NAME.fullmatch(self.secret))
            and all(SECRET_KEY.fullmatch(key) and key not in (".", "..") for key in keys)
            and store
        )
