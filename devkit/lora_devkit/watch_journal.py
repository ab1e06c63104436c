"""The emulator's record of recent watch events, so a watch can start where a list left off.

Why: a client lists, then watches from the list's resourceVersion (`kubectl get -w`,
`kubectl wait`, kopf, informers). kmock replayed every stored object as ADDED to each new watch
(kubectl printed every row twice) and lost events written between the list and the watch. Here
every event gets a sequence number when it is put on a resource's bus, a list's resourceVersion
is the last number, and a watch from N replays the events after N before going live. A version
older than the journal keeps is answered 410 Gone, as the API server answers it, and clients
list again.
"""

from __future__ import annotations

import collections
from typing import Any

from kmock._internal import aiobus

JOURNAL_SIZE = 20_000


class Journal:
    """Numbered events, newest last, at most `size` of them."""

    def __init__(self, size: int = JOURNAL_SIZE) -> None:
        self.seq = 0
        self.entries: collections.deque[tuple[int, object, dict[str, Any]]] = collections.deque(
            maxlen=size
        )

    def record(self, resource: object, event: dict[str, Any]) -> None:
        self.seq += 1
        self.entries.append((self.seq, resource, event))

    def since(self, resource: object, seq: int) -> list[dict[str, Any]] | None:
        """The events of `resource` numbered after `seq`; None when some have been dropped.
        A number not yet given out (an object's own resourceVersion) is `seq` itself."""
        seq = min(seq, self.seq)
        if self.entries and self.entries[0][0] > seq + 1:
            return None
        return [event for number, res, event in self.entries if number > seq and res is resource]


class JournaledBus(aiobus.Bus[Any]):
    """kmock's event bus of one resource that also numbers what it carries in the journal."""

    resource: object = None
    journal: Journal | None = None

    async def put(self, *items: Any) -> None:
        if self.journal is not None:
            for item in items:
                if isinstance(item, dict):
                    self.journal.record(self.resource, item)
        await super().put(*items)


class Buses(dict[Any, aiobus.Bus[Any]]):
    """Stands in for kmock's `defaultdict(Bus)`: a bus per resource, all sharing one journal."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def __missing__(self, resource: Any) -> aiobus.Bus[Any]:
        bus = JournaledBus()
        bus.resource = resource
        bus.journal = self.journal
        self[resource] = bus
        return bus
