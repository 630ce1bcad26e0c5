"""How many linear memories and tables a core module declares, read from its binary.

The store's limits apply per memory and per table, so a module with many of either could take
many times ``resources.memory``. The runtime refuses such modules before compiling them, with
a reason a person understands; this module counts what the module defines and imports
(sections 2, 4 and 5 of the binary format) without validating anything else, which is
wasmtime's job. A binary it cannot follow yields None, and wasmtime's own error then says why.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModuleShape", "parse_shape"]

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
    if data[:8] != b"\0asm\x01\0\0\0":
        return None
    reader = _Reader(data, 8)
    memories = tables = 0
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
                tables += body.uleb()
            elif section == _MEMORY_SECTION:
                memories += body.uleb()
    except _TruncatedError:
        return None
    return ModuleShape(memories=memories, tables=tables)


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
