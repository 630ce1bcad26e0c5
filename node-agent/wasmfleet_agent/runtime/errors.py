"""Errors of the runtime that callers act on."""

from __future__ import annotations

__all__ = ["ModuleLoadError", "SandboxConfigError"]


class ModuleLoadError(Exception):
    """The module cannot be run: not Wasm, does not compile, or imports what the agent lacks."""


class SandboxConfigError(Exception):
    """The sandbox cannot be set up as asked (a directory to preopen is missing, say)."""
