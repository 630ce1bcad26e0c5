"""Faster host calls and value conversions for wasmtime-py's component API.

Every call a ``wasi:http`` guest makes into the agent's host (`wasi_http`) crosses wasmtime-py's
component API. Three of its costs dominated a request:

- It reads the function's parameter and result types through the C API anew on every call,
  each as fresh type objects.
- A ``list<u8>`` (every stream read and write) arrives as an array of tagged unions
  (`wasmtime_component_val_t`), one per byte, converted element by element in Python: about a
  microsecond a byte, so a 1 MiB response body took most of a second.
- A variant's cases (``error-code`` has 39, most with payloads) are enumerated through the C
  API each time the variant, or a ``result`` or ``option`` holding it, is asked whether its
  values need a tag and again when one is converted: a refused outgoing request, whose answer
  is a ``result<_, error-code>``, cost about a millisecond.

`add_func` links a host function with its types read once, when the component is linked (the
types belong to the component and live as long as the linker's entry). `install` replaces
wasmtime-py's conversion of byte lists with strided copies done in C (``bytes`` slicing and
``bytearray`` slice assignment over the array's memory), and has each variant, option and
result type object enumerate its cases once in its life. The array's layout is read from
wasmtime-py's own ctypes declarations, never assumed: if they do not describe the layout this
code expects, byte lists keep the element-wise path.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable
from typing import Any

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import FuncType, LinkerInstance, _types
from wasmtime.component._enter import catch_exceptions

__all__ = ["add_func", "bytes_from_c", "bytes_to_c", "install", "installed"]

_VAL = ffi.wasmtime_component_val_t
_STRIDE = ctypes.sizeof(_VAL)
_U8 = ffi.WASMTIME_COMPONENT_U8.value
_LIST = ffi.WASMTIME_COMPONENT_LIST.value

_original_to_c = _types.ListType.convert_to_c
_original_from_c = _types.ListType.convert_from_c


def _offsets() -> tuple[int, int] | None:
    """Where a value's kind and a u8's payload sit in a value, when both are single bytes."""
    value: Any = _VAL
    try:
        fields = {name: kind for name, kind, *_ in value._fields_}
        union: Any = fields["of"]
        byte_type = {name: kind for name, kind, *_ in union._fields_}["u8"]
        kind_at, byte_at = value.kind.offset, value.of.offset + union.u8.offset
    except (AttributeError, KeyError):
        return None
    if ctypes.sizeof(fields["kind"]) != 1 or ctypes.sizeof(byte_type) != 1 or kind_at == byte_at:
        return None
    return kind_at, byte_at


_KIND_AT, _BYTE_AT = _offsets() or (0, 0)


def bytes_to_c(value: bytes, ptr: Any) -> None:
    """Stores ``value`` as a ``list<u8>`` component value at ``ptr``."""
    size = len(value)
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, size)
    if size:
        image = bytearray(size * _STRIDE)
        image[_KIND_AT::_STRIDE] = bytes((_U8,)) * size
        image[_BYTE_AT::_STRIDE] = value
        ctypes.memmove(raw.data, (ctypes.c_char * len(image)).from_buffer(image), len(image))
    ptr.contents.kind = _LIST
    ptr.contents.of.list = raw


def bytes_from_c(c: Any) -> bytes:
    """The bytes of a ``list<u8>`` component value, which is released."""
    try:
        size = c.of.list.size
        if not size:
            return b""
        image = ctypes.string_at(c.of.list.data, size * _STRIDE)
        return image[_BYTE_AT::_STRIDE]
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))


def _list_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
    if isinstance(val, bytes) and isinstance(self.element, _types.U8):
        bytes_to_c(val, ptr)
    else:
        _original_to_c(self, store, val, ptr)


def _list_from_c(self: Any, c: Any) -> Any:
    if c.kind == _LIST and isinstance(self.element, _types.U8):
        return bytes_from_c(c)
    return _original_from_c(self, c)


def _once(method: Callable[[Any], Any], slot: str) -> Callable[[Any], Any]:
    """``method``, computed once per type object (a type's cases never change)."""

    def cached(self: Any) -> Any:
        try:
            return self.__dict__[slot]
        except KeyError:
            value = self.__dict__[slot] = method(self)
            return value

    cached.__wrapped__ = method  # type: ignore[attr-defined]
    return cached


_VARIANTS = (_types.VariantType, _types.OptionType, _types.ResultType)


_installed = False


def installed() -> bool:
    return _installed


def install() -> None:
    """Puts the conversions in place; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    if _offsets() is not None:
        _types.ListType.convert_to_c = _list_to_c  # type: ignore[method-assign]
        _types.ListType.convert_from_c = _list_from_c  # type: ignore[method-assign]
    for cls in _VARIANTS:
        cls._cases = _once(cls._cases, "_wasmfleet_cases")  # type: ignore[assignment,method-assign]
    variant_like: Any = _types.VariantLikeType
    variant_like._tagged = _once(variant_like._tagged, "_wasmfleet_tagged")


# ---------------------------------------------------------------------------------------------
# Host functions with their types read once

_HostFunction = tuple[Callable[..., Any], tuple[Any, ...], Any]
_hosted: dict[int, _HostFunction] = {}
"""Each linked host function, its parameter types and its result type, by the number the
linker hands back on each call."""
_numbers = itertools.count(1)
_hosted_lock = threading.Lock()


@ffi.wasmtime_component_func_callback_t
def _call_host(number, context, _type, args, count, results, _results):  # type: ignore[no-untyped-def]
    function, params, result = _hosted[number]

    def run(store: Any) -> None:
        if count != len(params):
            raise WasmtimeError(f"{len(params)} arguments expected, {count} given")
        value = function(store, *(params[i].convert_from_c(args[i]) for i in range(count)))
        if result is not None:
            result.convert_to_c(store, value, results)

    return catch_exceptions(context, run)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _forget(number):  # type: ignore[no-untyped-def]
    with _hosted_lock:
        _hosted.pop(number or 0, None)


def add_func(
    instance: LinkerInstance, name: str, function: Callable[..., Any], type_: FuncType
) -> None:
    """Links ``function`` as ``name`` in ``instance``, as ``LinkerInstance.add_func`` does,
    with its arguments and result converted by ``type_``'s types, read here once."""
    params = tuple(param for _, param in type_.params)
    with _hosted_lock:
        number = next(_numbers)
        _hosted[number] = (function, params, type_.result)
    encoded = name.encode()
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(),
        ctypes.create_string_buffer(encoded),
        len(encoded),
        _call_host,
        number,
        _forget,
    )
    if error:
        with _hosted_lock:
            _hosted.pop(number, None)
        raise WasmtimeError._from_ptr(error)
