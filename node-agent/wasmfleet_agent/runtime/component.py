"""WASI 0.2 components: which world one targets and whether the agent hosts what it imports.

A component says what it is by its exports and imports, named as WIT interfaces
(``wasi:cli/run@0.2.6``). The agent runs a component that exports ``wasi:cli/run`` (the
``wasi:cli/command`` world) exactly as it runs a preview 1 command module: the same arguments,
environment, preopened directories, stdin and stdout, limits and exit codes, linked with
wasmtime's WASI 0.2 host (``add_wasip2``). Every import must be an interface of a package that
host provides, at a 0.2 version; anything else is refused before the component runs, with the
names it asked for.

A component that exports ``wasi:http/incoming-handler`` (the ``wasi:http/proxy`` world) is
served per request by the agent's own host of that world (`wasi_http`); it may import the
proxy world's interfaces and what language runtimes add to them (``wasi:cli``,
``wasi:filesystem`` and ``wasi:sockets``, the last two linked to traps). A component of a world
the agent does not know is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import wasmtime
from wasmtime.component import Component

from wasmfleet_agent.runtime.errors import ModuleLoadError

__all__ = [
    "COMMAND_WORLD",
    "HOSTED_PACKAGES",
    "MODULE_WORLD",
    "PROXY_PACKAGES",
    "PROXY_WORLD",
    "ComponentInfo",
    "inspect_component",
    "target_world",
]

MODULE_WORLD = "wasi_snapshot_preview1 command"
"""What a core module is run as: a WASI preview 1 command (``_start``)."""
COMMAND_WORLD = "wasi:cli/command"
PROXY_WORLD = "wasi:http/proxy"
_RUN = "wasi:cli/run"
_HTTP_HANDLER = "wasi:http/incoming-handler"
HOSTED_PACKAGES = frozenset(
    {"wasi:cli", "wasi:clocks", "wasi:filesystem", "wasi:io", "wasi:random", "wasi:sockets"}
)
"""The WASI 0.2 packages of wasmtime's WASI host, which the agent links into every
``wasi:cli/command`` component."""
PROXY_PACKAGES = frozenset(
    {
        "wasi:cli",
        "wasi:clocks",
        "wasi:filesystem",
        "wasi:http",
        "wasi:io",
        "wasi:random",
        "wasi:sockets",
    }
)
"""What a ``wasi:http/proxy`` component may import: the agent's own host (`wasi_http`), where
``wasi:filesystem`` and ``wasi:sockets`` (which language runtimes import) are linked to traps."""

_INTERFACE = re.compile(
    r"(?P<package>[a-z][a-z0-9-]*:[a-z][a-z0-9-]*)/(?P<interface>[a-z][a-z0-9-]*)"
    r"(?:@(?P<version>[0-9A-Za-z.+-]+))?"
)


@dataclass(frozen=True)
class ComponentInfo:
    world: str
    """The world it targets, with the version of its entry point: ``wasi:cli/command@0.2.6``."""
    entry: str
    """The exported interface the agent calls: ``wasi:cli/run@0.2.6``."""
    imports: tuple[str, ...]
    exports: tuple[str, ...]


def _parse(name: str) -> tuple[str, str, str | None] | None:
    match = _INTERFACE.fullmatch(name)
    if match is None:
        return None
    return match["package"], match["interface"], match["version"]


def _is_0_2(version: str | None) -> bool:
    return version is not None and (version == "0.2" or version.startswith("0.2."))


def _find(exports: tuple[str, ...], interface: str) -> str | None:
    for name in exports:
        parts = _parse(name)
        if parts and f"{parts[0]}/{parts[1]}" == interface and _is_0_2(parts[2]):
            return name
    return None


def target_world(exports: tuple[str, ...]) -> str | None:
    """The WASI world a component with these exports targets, with its version, if it is one
    of those the field knows by their exports (``wasi:cli/command``, ``wasi:http/proxy``)."""
    for interface, world in ((_RUN, COMMAND_WORLD), (_HTTP_HANDLER, PROXY_WORLD)):
        name = _find(exports, interface)
        if name is not None:
            return f"{world}@{_parse(name)[2]}"  # type: ignore[index]
    return None


def inspect_component(engine: wasmtime.Engine, component: Component, digest: str) -> ComponentInfo:
    """What ``component`` is, or `ModuleLoadError` saying why the agent cannot run it."""
    kind = component.type
    imports = tuple(sorted(kind.imports(engine)))
    exports = tuple(sorted(kind.exports(engine)))
    entry = _find(exports, _RUN)
    hosted, world = HOSTED_PACKAGES, COMMAND_WORLD
    if entry is None:
        entry = _find(exports, _HTTP_HANDLER)
        hosted, world = PROXY_PACKAGES, PROXY_WORLD
    if entry is None:
        listed = ", ".join(exports) or "nothing"
        raise ModuleLoadError(
            f"component {digest} exports {listed}: it targets no world this agent hosts "
            "(a wasi:cli/command component exports wasi:cli/run@0.2, a wasi:http/proxy "
            "component wasi:http/incoming-handler@0.2)"
        )
    unhosted = []
    for name in imports:
        parts = _parse(name)
        if parts is None or parts[0] not in hosted or not _is_0_2(parts[2]):
            unhosted.append(name)
    if unhosted:
        raise ModuleLoadError(
            f"component {digest} imports {', '.join(unhosted)}, which this agent does not "
            f"provide to {world} components (it provides the WASI 0.2 interfaces of "
            f"{', '.join(sorted(hosted))})"
        )
    version = _parse(entry)[2]  # type: ignore[index]
    return ComponentInfo(world=f"{world}@{version}", entry=entry, imports=imports, exports=exports)
