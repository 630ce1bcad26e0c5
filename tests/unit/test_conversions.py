"""Host functions linked with their types read once, and byte lists crossing wasmtime's C API
as strided copies, read and written as wasmtime-py's own ctypes declarations describe a
``list<u8>`` value. (The conversions as installed run under every wasi:http test in
tests/component, against native ``wasmtime serve``.)"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st
from wasmtime import _ffi as ffi
from wasmtime.component import Component, FuncType, Linker, _types

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


_DOUBLER = """
(component
  (import "f" (func $f (param "x" u32) (result u32)))
  (core func $lowered (canon lower (func $f)))
  (core module $m
    (import "host" "f" (func $f (param i32) (result i32)))
    (func (export "g") (param i32) (result i32) local.get 0 call $f))
  (core instance $i (instantiate $m (with "host" (instance (export "f" (func $lowered))))))
  (func (export "g") (param "x" u32) (result u32) (canon lift (core func $i "g"))))
"""


def _linked(function: object) -> tuple[wasmtime.Store, Linker, object]:
    engine = wasmtime.Engine(wasmtime.Config())
    component = Component(engine, _DOUBLER)
    (import_extern,) = component.type.imports(engine).values()
    import_type = import_extern.ty
    linker = Linker(engine)
    with linker.root() as root:
        conversions.add_func(root, "f", function, import_type)  # type: ignore[arg-type]
    store = wasmtime.Store(engine)
    instance = linker.instantiate(store, component)
    return store, linker, instance


def test_a_host_function_linked_with_its_types_read_once_is_called_with_its_values() -> None:
    seen: list[int] = []

    def double(_store: object, x: int) -> int:
        seen.append(x)
        return x * 2

    store, _linker, instance = _linked(double)
    g = instance.get_func(store, "g")  # type: ignore[attr-defined]
    assert [g(store, n) for n in (0, 21, 2**31)] == [0, 42, 2**32 % 2**32]
    assert seen == [0, 21, 2**31]


def test_a_host_function_that_raises_traps_the_guest_with_the_exception() -> None:
    def refuse(_store: object, _x: int) -> int:
        raise ValueError("refused here")

    store, _linker, instance = _linked(refuse)
    g = instance.get_func(store, "g")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="refused here"):
        g(store, 1)


def test_a_linker_dropped_forgets_its_host_functions() -> None:
    gc.collect()
    before = len(conversions._hosted)
    store, linker, instance = _linked(lambda _store, x: x)
    assert len(conversions._hosted) == before + 1
    del store, linker, instance
    gc.collect()
    assert len(conversions._hosted) == before


# ---- converters made once per type, against wasmtime-py's own conversions ---------------------

_SHAPES = """
(component
  (type $v (variant (case "a") (case "b" u32) (case "c" string)))
  (import "v" (type $v2 (eq $v)))
  (import "f" (func
     (param "fields" (list (tuple string (list u8))))
     (param "maybe-bytes" (option (list u8)))
     (param "text-or-code" (result string (error u32)))
     (param "bare" (result))
     (param "cases" $v2)
     (param "nested" (option (option u32)))
     (param "names" (list string))
     (result (result (list u8) (error $v2)))))
)
"""


def _shapes() -> dict[str, object]:
    engine = wasmtime.Engine(wasmtime.Config())
    function = Component(engine, _SHAPES).type.imports(engine)["f"].ty
    assert isinstance(function, FuncType)
    shapes: dict[str, object] = dict(function.params)
    shapes["result"] = function.result
    return shapes


_text = st.text(st.characters(codec="utf-8"), max_size=12)
_u32 = st.integers(0, 2**32 - 1)
_case = st.one_of(
    st.just(None),  # "a": the variant's cases take distinct classes, so values are untagged
    _u32,
    _text,
)
_VALUES = {
    "fields": st.lists(st.tuples(_text, st.binary(max_size=40)), max_size=5),
    "maybe-bytes": st.none() | st.binary(max_size=40),
    "text-or-code": _text | _u32,
    "bare": st.sampled_from([_types.Variant("ok"), _types.Variant("err")]),
    "cases": _case,
    "nested": st.just(_types.Variant("none"))
    | (st.none() | _u32).map(lambda inner: _types.Variant("some", inner)),
    "names": st.lists(_text, max_size=5),
    "result": st.binary(max_size=40) | _case,
}


@pytest.fixture(scope="module")
def shapes() -> dict[str, object]:
    conversions.install()
    return _shapes()


@pytest.mark.parametrize("shape", sorted(_VALUES))
def test_values_lowered_and_lifted_by_the_made_converters_read_as_wasmtime_py_reads_them(
    shapes: dict[str, object], shape: str
) -> None:
    ty: Any = shapes[shape]
    lift, lower = conversions.lifter(ty), conversions.lowerer(ty)

    @settings(max_examples=60, deadline=None)
    @given(_VALUES[shape])
    def round_trip(value: object) -> None:
        ours = _value()
        lower(None, value, ctypes.pointer(ours))
        assert ty.convert_from_c(ours) == value  # wasmtime-py reads what ours wrote
        theirs = _value()
        ty.convert_to_c(None, value, ctypes.pointer(theirs))
        assert lift(None, theirs) == value  # ours reads what wasmtime-py wrote

    round_trip()


@pytest.mark.timeout(20)
def test_a_linker_collected_while_functions_are_being_linked_forgets_them_without_a_deadlock() -> (
    None
):
    """A garbage collection may run at any allocation, including while `add_func` holds the
    table of host functions, and drop a linker whose entries then forget themselves on the
    same thread (seen as an agent stuck linking its second component)."""
    gc.collect()
    before = len(conversions._hosted)
    with conversions._hosted_lock:
        store, linker, instance = _linked(lambda _store, x: x)
        assert len(conversions._hosted) == before + 1
        del store, linker, instance
        gc.collect()
        assert len(conversions._hosted) == before
