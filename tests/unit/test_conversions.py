"""Byte lists cross wasmtime's C API as strided copies, read and written as wasmtime-py's own
ctypes declarations describe a ``list<u8>`` value. (The conversions as installed run under every
wasi:http test in tests/component, against native ``wasmtime serve``.)"""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wasmtime import _ffi as ffi
from wasmtime.component import _types

from wasmfleet_agent.runtime import conversions


def _value() -> ffi.wasmtime_component_val_t:
    return ffi.wasmtime_component_val_t()


@given(st.binary(max_size=4096))
def test_a_byte_list_is_written_element_by_element_as_the_c_api_declares(data: bytes) -> None:
    value = _value()
    conversions.bytes_to_c(data, ctypes.pointer(value))
    assert value.kind == ffi.WASMTIME_COMPONENT_LIST.value
    items = value.of.list
    assert items.size == len(data)
    for index, byte in enumerate(data):
        assert items.data[index].kind == ffi.WASMTIME_COMPONENT_U8.value
        assert items.data[index].of.u8 == byte
    assert conversions.bytes_from_c(value) == data


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
def test_a_byte_list_read_back_is_the_bytes_written(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    value = _value()
    conversions.bytes_to_c(data, ctypes.pointer(value))
    assert conversions.bytes_from_c(value) == data


def test_installing_twice_wraps_once() -> None:
    conversions.install()
    cases = _types.VariantType._cases
    conversions.install()
    assert conversions.installed()
    assert _types.VariantType._cases is cases
    assert _types.ListType.convert_from_c is conversions._list_from_c
