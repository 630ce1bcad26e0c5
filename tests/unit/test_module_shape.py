"""Counting a module's memories and tables from its binary."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

from wasmfleet_agent.runtime.shape import (
    COMPONENT_HEADER,
    ModuleShape,
    parse_component_shape,
    parse_shape,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(module)", ModuleShape(memories=0, tables=0)),
        ("(module (memory 1) (table 1 funcref))", ModuleShape(memories=1, tables=1)),
        (
            '(module (import "env" "m" (memory 1)) (import "env" "t" (table 2 10 funcref))'
            ' (import "env" "g" (global i32)) (import "env" "f" (func)) (memory 1) (memory 2))',
            ModuleShape(memories=3, tables=1),
        ),
        ("(module (table 1 funcref) (table 1 externref) (table 0 funcref))", ModuleShape(0, 3)),
    ],
)
def test_memories_and_tables_are_counted_imported_and_defined(
    text: str, expected: ModuleShape
) -> None:
    assert parse_shape(bytes(wasmtime.wat2wasm(text))) == expected


def test_a_binary_it_cannot_follow_is_left_to_wasmtime() -> None:
    module = bytes(wasmtime.wat2wasm("(module (memory 1))"))
    assert parse_shape(module[:-1]) is None
    assert parse_shape(b"\0asm\x0d\0\x01\0") is None  # a component
    assert parse_shape(b"not wasm") is None


@given(st.binary(max_size=200))
def test_any_bytes_after_the_header_give_a_shape_or_none(tail: bytes) -> None:
    shape = parse_shape(b"\0asm\x01\0\0\0" + tail)
    assert shape is None or (shape.memories >= 0 and shape.tables >= 0)


def _component(modules: int, memories_each: int, *, nested: bool = False) -> bytes:
    memory = " ".join("(memory 1)" for _ in range(memories_each))
    cores = "\n".join(
        f'(core module $m{i} (import "x" "t" (table 1 funcref)) {memory} (table 1 funcref))'
        for i in range(modules)
    )
    text = f"(component {cores})"
    if nested:
        text = f"(component (component {cores}) (core module (memory 1)))"
    return bytes(wasmtime.wat2wasm(text))


@pytest.mark.parametrize(
    ("modules", "memories_each", "nested", "memories", "tables"),
    [(0, 0, False, 0, 0), (1, 1, False, 1, 1), (3, 2, False, 6, 3), (2, 1, True, 3, 2)],
)
def test_a_component_counts_what_its_core_modules_define_nested_ones_too(
    modules: int, memories_each: int, nested: bool, memories: int, tables: int
) -> None:
    shape = parse_component_shape(_component(modules, memories_each, nested=nested))
    assert shape is not None
    assert (shape.memories, shape.tables) == (memories, tables)


def test_a_component_it_cannot_follow_is_none() -> None:
    data = _component(2, 1)
    assert parse_component_shape(data[:-3]) is None
    assert parse_component_shape(bytes(wasmtime.wat2wasm("(module)"))) is None
    assert parse_component_shape(b"\0asm\x0d\0\x01\0\x01\xff") is None


@given(st.binary(max_size=200))
def test_any_bytes_after_a_component_header_give_a_shape_or_none(tail: bytes) -> None:
    shape = parse_component_shape(COMPONENT_HEADER + tail)
    assert shape is None or (shape.memories >= 0 and shape.tables >= 0)
