"""How many linear memories and tables a core module or a component declares, read from
its binary.

The store's limits apply per memory and per table, so a module with many of either could take
many times ``resources.memory``. The runtime refuses such modules before compiling them, with
a reason a person understands; this module counts what the module defines and imports
(sections 2, 4 and 5 of the binary format) without validating anything else, which is
wasmtime's job. A component's memories and tables are those its core modules define (an
imported one is another module's, counted there), in nested components too. A binary it
cannot follow yields None, and wasmtime's own error then says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "COMPONENT_HEADER",
    "MODULE_HEADER",
    "ModuleShape",
    "parse_component_shape",
    "parse_shape",
]

MODULE_HEADER = b"\0asm\x01\0\0\0"
"""Magic number and version 1 (layer 0): a core module."""
COMPONENT_HEADER = b"\0asm\x0d\0\x01\0"
"""Magic number, version 0xd and layer 1: a component (the component model's binary format)."""

_IMPORT_SECTION = 2
_TABLE_SECTION = 4
_MEMORY_SECTION = 5
_FUNC, _TABLE, _MEMORY, _GLOBAL, _TAG = range(5)
_REFERENCE_TYPE_PREFIXES = frozenset({0x63, 0x64})


@dataclass(frozen=True)
class ModuleShape:
    memories: int
    """Linear memories, imported and defined."""
    tables: int
    """Tables, imported and defined."""
    defined_memories: int = field(default=0, compare=False)
    """Linear memories it defines itself (what a component counts)."""
    defined_tables: int = field(default=0, compare=False)


class _TruncatedError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, at: int = 0, end: int | None = None) -> None:
        self.data = data
        self.at = at
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.at >= self.end:
            raise _TruncatedError
        value = self.data[self.at]
        self.at += 1
        return value

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _TruncatedError

    def skip(self, count: int) -> None:
        if self.at + count > self.end:
            raise _TruncatedError
        self.at += count

    def limits(self) -> None:
        flags = self.byte()
        self.uleb()
        if flags & 0x01:
            self.uleb()


def parse_shape(data: bytes) -> ModuleShape | None:
    """The memories and tables of the core module ``data``; None when it cannot be followed."""
    if data[:8] != MODULE_HEADER:
        return None
    reader = _Reader(data, 8)
    memories = tables = defined_memories = defined_tables = 0
    try:
        while reader.at < reader.end:
            section = reader.byte()
            size = reader.uleb()
            start = reader.at
            reader.skip(size)
            body = _Reader(data, start, start + size)
            if section == _IMPORT_SECTION:
                imported = _imports(body)
                if imported is None:
                    return None
                memories += imported.memories
                tables += imported.tables
            elif section == _TABLE_SECTION:
                defined_tables += body.uleb()
            elif section == _MEMORY_SECTION:
                defined_memories += body.uleb()
    except _TruncatedError:
        return None
    return ModuleShape(
        memories=memories + defined_memories,
        tables=tables + defined_tables,
        defined_memories=defined_memories,
        defined_tables=defined_tables,
    )


_CORE_MODULE_SECTION = 1
_COMPONENT_SECTION = 4
_MAX_NESTING = 16


def parse_component_shape(data: bytes) -> ModuleShape | None:
    """The memories and tables a component's core modules define, in all; None when it cannot
    be followed. Each instance of a core module gets its own, so a module instantiated twice
    counts once here: the store's limit on memories catches what this undercounts."""
    return _component(data, 0, len(data), 0)


def _component(data: bytes, start: int, end: int, depth: int) -> ModuleShape | None:
    if depth > _MAX_NESTING or data[start : start + 8] != COMPONENT_HEADER:
        return None
    reader = _Reader(data, start + 8, end)
    memories = tables = 0
    try:
        while reader.at < reader.end:
            section = reader.byte()
            size = reader.uleb()
            body_start = reader.at
            reader.skip(size)
            if section == _CORE_MODULE_SECTION:
                inner = parse_shape(data[body_start : body_start + size])
            elif section == _COMPONENT_SECTION:
                inner = _component(data, body_start, body_start + size, depth + 1)
            else:
                continue
            if inner is None:
                return None
            memories += inner.defined_memories
            tables += inner.defined_tables
    except _TruncatedError:
        return None
    return ModuleShape(
        memories=memories, tables=tables, defined_memories=memories, defined_tables=tables
    )


def _imports(body: _Reader) -> ModuleShape | None:
    memories = tables = 0
    for _ in range(body.uleb()):
        body.skip(body.uleb())  # module name
        body.skip(body.uleb())  # field name
        kind = body.byte()
        if kind == _FUNC:
            body.uleb()
        elif kind == _TABLE:
            tables += 1
            body.byte()  # element type
            body.limits()
        elif kind == _MEMORY:
            memories += 1
            body.limits()
        elif kind == _GLOBAL:
            if body.byte() in _REFERENCE_TYPE_PREFIXES:
                return None  # a typed reference: its encoding is longer than one byte
            body.byte()  # mutability
        elif kind == _TAG:
            body.byte()  # attribute
            body.uleb()
        else:
            return None  # a proposal this reader does not know: let wasmtime judge
    return ModuleShape(memories=memories, tables=tables)
