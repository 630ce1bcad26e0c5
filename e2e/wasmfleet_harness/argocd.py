"""Runs the repository's Argo CD health check (a Lua script) the way Argo CD does.

Argo CD evaluates a resource's health script with Lua 5.1 semantics (gopher-lua), the
object in the global ``obj``, and reads ``status`` and ``message`` from the table the script
returns; `argocd_health` does the same with lupa's Lua 5.1 from PyPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wasmfleet_harness.binaries import REPO_ROOT

__all__ = ["HEALTH_SCRIPT", "argocd_health"]

HEALTH_SCRIPT = REPO_ROOT / "docs" / "gitops" / "wasmservice-health.lua"


def argocd_health(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) of ``obj`` as the health check judges it."""
    import lupa.lua51 as lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(dict(obj), recursive=True)
    result = lua.execute(HEALTH_SCRIPT.read_text())
    return str(result["status"]), str(result["message"])
