"""Runs the chart's Argo CD health script (charts/lora-operator/argocd/health.lua) the way Argo
CD does: Lua 5.1 (Argo CD embeds gopher-lua, a 5.1), the resource as the global `obj`, the
returned table's `status` and `message`. Shared by the chart test and the operator's kstatus
transition test, which feeds it the statuses the real operator wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

SCRIPT_PATH = (
    Path(__file__).resolve().parents[2] / "charts" / "lora-operator" / "argocd" / "health.lua"
)
SCRIPT = SCRIPT_PATH.read_text()


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(hs.status, hs.message) for `obj`, a fresh Lua state each time (as Argo CD's is)."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return str(hs.status), str(hs.message)
