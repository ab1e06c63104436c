"""The shared server's registry as a wire format: what the operator writes into the registry
ConfigMap (`lora-server-<digest>`, docs/serving.md) and the adapter syncer beside vLLM reads from
its mounted copy. One file per adapter, `adapter.<LoRAJob uid>`, holding the JSON of an `Entry`;
`server.json` holds the server's shape (its `baseModel` is the name vLLM serves, which the
resolver requires in each adapter's `base_model_name_or_path`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SERVER_DATA_KEY = "server.json"
ENTRY_PREFIX = "adapter."  # data keys of adapters: adapter.<LoRAJob uid>
# serving.adapterName's pattern: also a safe directory name for the resolver
ADAPTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_data(cls, text: str) -> Entry | None:
        """None for an entry that does not parse or names an adapter that is not a DNS label
        (edited by hand): it is swept by the operator and never served."""
        try:
            raw = json.loads(text)
            secret, run = raw.get("secret"), raw.get("run")
            entry = cls(
                str(raw["job"]),
                str(raw["adapter"]),
                str(raw["uri"]),
                int(raw["rank"]),
                None if secret is None else str(secret),
                None if run is None else str(run),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return entry if ADAPTER_NAME.fullmatch(entry.adapter) else None
