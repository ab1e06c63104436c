"""Every kopf handler that touches the reconciler is a coroutine. kopf runs a plain function in a
worker thread, where it would change the reconciler's admission view while the event loop
iterates it: a 1000-job run crashed with "dictionary changed size during iteration" in `admit`."""

from __future__ import annotations

import inspect

import kopf

from lora_operator.controller.config import ConfigSource
from lora_operator.controller.handlers import Options, register


def test_resource_handlers_run_on_the_event_loop() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, Options(config=ConfigSource(), resync_seconds=30, namespaces=[]))
    handlers = [
        handler
        for group in (registry._watching, registry._changing)  # kopf keeps no public list
        for handler in group.get_all_handlers()
    ]
    assert len(handlers) >= 3
    in_threads = [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)]
    assert in_threads == []
