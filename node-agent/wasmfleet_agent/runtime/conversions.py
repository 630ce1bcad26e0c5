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

- Every handle crossing the boundary became two or three managed Python objects (a
  ``ResourceAny``, a ``ResourceHost``, each with a finalizer), and every type asked for its
  element, fields or cases built new type objects from C: a trivial request's seven host
  calls cost about 25 µs each.

`add_func` links a host function with its types read once, when the component is linked (the
types belong to the component and live as long as the linker's entry); a parameter that is a
handle (``own`` or ``borrow``) of a host resource reaches the function as its integer
``rep``, read in three C calls. `Handle` is a handle the host makes for the guest without a
managed object: lowered to the guest in three C calls too. `install` replaces wasmtime-py's
conversion of byte lists with strided copies done in C (``bytes`` slicing and ``bytearray``
slice assignment over the array's memory), and has each type object read its element types
and its cases once in its life. The array's layout is read from wasmtime-py's own ctypes
declarations, never assumed: if they do not describe the layout this code expects, byte lists
keep the element-wise path.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable
from typing import Any

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import FuncType, LinkerInstance, ResourceHost, _types
from wasmtime.component._enter import catch_exceptions, enter_wasm

from wasmfleet_agent.runtime import gil

__all__ = [
    "Handle",
    "add_func",
    "bytes_from_c",
    "bytes_to_c",
    "call_export",
    "install",
    "installed",
    "lifter",
    "lowerer",
]

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
_STRUCTURE = (
    (_types.ListType, "element"),
    (_types.TupleType, "elements"),
    (_types.RecordType, "fields"),
    (_types.OptionType, "payload"),
    (_types.ResultType, "ok"),
    (_types.ResultType, "err"),
    (_types.VariantType, "cases"),
)
"""Properties that build new type objects from C on every read."""


# ---------------------------------------------------------------------------------------------
# Handles without managed objects

_RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE
_HANDLES = (_types.OwnType, _types.BorrowType)
_HostPointer = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)
_AnyPointer = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)


def _c(name: str) -> Any:
    """The C function behind wasmtime-py's wrapper ``name``, called with the GIL kept."""
    return gil.held(name)


_host_new = _c("wasmtime_component_resource_host_new")
_host_rep = _c("wasmtime_component_resource_host_rep")
_host_delete = _c("wasmtime_component_resource_host_delete")
_host_to_any = _c("wasmtime_component_resource_host_to_any")
_any_to_host = _c("wasmtime_component_resource_any_to_host")
_any_delete = _c("wasmtime_component_resource_any_delete")


class Handle(ResourceHost):
    """An owned handle on the host's resource ``rep`` of type ``kind``, made for the guest.

    A `ResourceHost` to wasmtime-py (so that a ``result`` or ``option`` holding one tells its
    cases apart as it does for any handle), but with no C object behind it until it is
    lowered, which `install`'s ``own`` conversion does directly.
    """

    def __init__(self, rep: int, kind: int) -> None:  # ResourceHost's refuses: no super()
        self._rep = rep
        self._kind = kind

    @property
    def rep(self) -> int:
        return self._rep

    @property
    def type(self) -> int:
        return self._kind

    @property
    def owned(self) -> bool:
        return True

    def to_any(self, store: Any) -> Any:
        return ResourceHost.own(self._rep, self._kind).to_any(store)

    def close(self) -> None:
        pass


def _lower_handle(context: Any, handle: Handle) -> Any:
    """The ``resource_any`` pointer for a new owned handle of the guest on ``handle``."""
    host = _host_new(True, handle._rep, handle._kind)
    out = _AnyPointer()
    try:
        error = _host_to_any(context, host, ctypes.byref(out))
    finally:
        _host_delete(host)
    if error:
        raise WasmtimeError._from_ptr(error)
    return out


def _rep_of(context: Any, value: Any) -> int:
    """The rep of the host resource a handle parameter refers to; the parameter's handle is
    released (the host owns what an ``own`` parameter gave it by its rep)."""
    resource = ctypes.cast(value.of.resource, _AnyPointer)  # a copy: a field read is a view
    value.of.resource = None
    host = _HostPointer()
    try:
        error = _any_to_host(context, resource, ctypes.byref(host))
        if error:
            raise WasmtimeError._from_ptr(error)
        try:
            return int(_host_rep(host))
        finally:
            _host_delete(host)
    finally:
        _any_delete(resource)


# ---------------------------------------------------------------------------------------------
# Converters made once per type

Lift = Callable[[Any, Any], Any]
"""``lift(context, value)``: the Python value of a C component value (which it releases)."""
Lower = Callable[[Any, Any, Any], None]
"""``lower(store, value, pointer)``: stores ``value`` as a C component value at ``pointer``."""

_BOOL = ffi.WASMTIME_COMPONENT_BOOL
_OPTION = ffi.WASMTIME_COMPONENT_OPTION
_RESULT = ffi.WASMTIME_COMPONENT_RESULT
_VARIANT_KIND = ffi.WASMTIME_COMPONENT_VARIANT
_Value = ffi.wasmtime_component_val_t
_val_new = _c("wasmtime_component_val_new")
_val_delete = _c("wasmtime_component_val_delete")
_list_delete = _c("wasmtime_component_vallist_delete")
_tuple_delete = _c("wasmtime_component_valtuple_delete")
_bytes_delete = _c("wasm_byte_vec_delete")


def _released(value: Any) -> None:
    """Marks a C value whose contents were taken as holding nothing (a bool)."""
    value.kind = _BOOL
    value.of.boolean = False


def _lift_boxed(lift: Lift | None, context: Any, boxed: Any) -> Any:
    """The payload of a variant-like case, boxed in a C value of its own (then freed)."""
    if lift is None:
        return None
    value = lift(context, boxed.contents)
    _released(boxed.contents)
    _val_delete(boxed)
    return value


def _option_case(value: Any) -> tuple[str, Any]:
    return ("some" if value.of.option else "none"), value.of.option


def _result_case(value: Any) -> tuple[str, Any]:
    return ("ok" if value.of.result.is_ok else "err"), value.of.result.val


def _variant_case(value: Any) -> tuple[str, Any]:
    name = ffi.to_str(value.of.variant.discriminant)
    _bytes_delete(ctypes.byref(value.of.variant.discriminant))
    return name, value.of.variant.val


_CASE_OF: dict[type, Callable[[Any], tuple[str, Any]]] = {
    _types.OptionType: _option_case,
    _types.ResultType: _result_case,
    _types.VariantType: _variant_case,
}
"""The case a C value of a variant-like type holds, and its boxed payload, by type."""


def _store_option(contents: Any, _name: str, boxed: Any) -> None:
    contents.kind = _OPTION
    contents.of.option = boxed


def _store_result(contents: Any, name: str, boxed: Any) -> None:
    contents.kind = _RESULT
    contents.of.result.is_ok = name == "ok"
    contents.of.result.val = boxed


def _store_variant(contents: Any, name: str, boxed: Any) -> None:
    contents.kind = _VARIANT_KIND
    contents.of.variant.discriminant = ffi.str_to_capi(name)
    contents.of.variant.val = boxed


_STORE_CASE: dict[type, Callable[[Any, str, Any], None]] = {
    _types.OptionType: _store_option,
    _types.ResultType: _store_result,
    _types.VariantType: _store_variant,
}
"""Stores a variant-like type's case and boxed payload in a C value, by type."""


def lifter(ty: Any) -> Lift:
    """A `Lift` for ``ty``: direct for the shapes host calls pass (handles, bytes, strings,
    lists, tuples, options, results, variants), wasmtime-py's conversion for the rest."""
    if isinstance(ty, _HANDLES):
        return _rep_of
    if isinstance(ty, _types.String):

        def lift_string(_context: Any, value: Any) -> str:
            text = ffi.to_str(value.of.string)
            _bytes_delete(ctypes.byref(value.of.string))
            return text

        return lift_string
    if isinstance(ty, _types.ListType):
        if isinstance(ty.element, _types.U8) and _offsets() is not None:
            return lambda _context, value: bytes_from_c(value)
        element = lifter(ty.element)

        def lift_list(context: Any, value: Any) -> list[Any]:
            items = value.of.list
            try:
                lifted = []
                for index in range(items.size):
                    item = items.data[index]
                    lifted.append(element(context, item))
                    _released(item)
                return lifted
            finally:
                _list_delete(ctypes.byref(value.of.list))

        return lift_list
    if isinstance(ty, _types.TupleType):
        elements = tuple(lifter(item) for item in ty.elements)

        def lift_tuple(context: Any, value: Any) -> tuple[Any, ...]:
            items = value.of.tuple
            try:
                lifted = []
                for index, element in enumerate(elements):
                    item = items.data[index]
                    lifted.append(element(context, item))
                    _released(item)
                return tuple(lifted)
            finally:
                _tuple_delete(ctypes.byref(value.of.tuple))

        return lift_tuple
    if type(ty) in _CASE_OF:
        tagged = ty._tagged()
        cases = {name: (lifter(case) if case is not None else None) for name, case in ty._cases()}

        case_of = _CASE_OF[type(ty)]

        def lift_case(context: Any, value: Any) -> Any:
            name, boxed = case_of(value)
            lift = cases[name]
            payload = _lift_boxed(lift, context, boxed) if lift is not None else None
            if tagged:
                return _types.Variant(name, payload)
            return payload

        return lift_case
    return lambda _context, value: ty.convert_from_c(value)


def lowerer(ty: Any) -> Lower:
    """A `Lower` for ``ty``: direct for handles the host made (`Handle`), byte lists and the
    variant-likes holding them, wasmtime-py's conversion for the rest."""
    if isinstance(ty, _HANDLES):
        return ty.convert_to_c  # `install` made it direct for a `Handle`
    if isinstance(ty, _types.ListType) and isinstance(ty.element, _types.U8):
        return ty.convert_to_c  # `install` made it a strided copy
    if type(ty) in _STORE_CASE:
        tagged = ty._tagged()
        cases = []
        for name, case in ty._cases():
            classes: set[type] = set()
            if case is not None:
                case.add_classes(classes)
            cases.append((name, lowerer(case) if case is not None else None, tuple(classes)))

        def pick(value: Any) -> tuple[str, Lower | None, Any]:
            for name, lower, classes in cases:
                if tagged:
                    if name == value.tag:
                        return name, lower, value.payload
                elif lower is None:
                    if value is None:
                        return name, None, None
                elif isinstance(value, classes):
                    return name, lower, value
            raise ValueError("value not valid for this variant")

        def lower_case(store: Any, value: Any, pointer: Any) -> None:
            if tagged and not isinstance(value, _types.Variant):
                raise TypeError("expected Variant type")
            name, lower, payload = pick(value)
            boxed = None
            if lower is not None:
                raw = _Value()
                lower(store, payload, ctypes.pointer(raw))
                boxed = _val_new(ctypes.byref(raw))
            store_case(pointer.contents, name, boxed)

        store_case = _STORE_CASE[type(ty)]
        return lower_case
    return ty.convert_to_c  # type: ignore[no-any-return]


def call_export(func: Any, store: Any, lowers: tuple[Lower, ...], *params: Any) -> None:
    """Calls the exported ``func`` (no result) with ``params`` lowered by ``lowers`` (made
    once from its type with `lowerer`, as ``Func.__call__`` would on every call)."""
    count = len(params)
    values = (_Value * count)()
    lowered = 0
    try:
        for index, (lower, param) in enumerate(zip(lowers, params, strict=True)):
            lower(store, param, ctypes.pointer(values[index]))
            lowered += 1
        context = store._context()
        enter_wasm(
            lambda: ffi.wasmtime_component_func_call(
                ctypes.byref(func._func), context, values, count, None, 0
            )
        )
    finally:
        for index in range(lowered):
            ffi.wasmtime_component_val_delete(ctypes.byref(values[index]))


def _own_to_c(original: Callable[..., None]) -> Callable[..., None]:
    def convert_to_c(self: Any, store: Any, val: Any, ptr: Any) -> None:
        if type(val) is Handle:
            out = _lower_handle(store._context(), val)
            ptr.contents.kind = _RESOURCE
            ptr.contents.of.resource = out
        else:
            original(self, store, val, ptr)

    return convert_to_c


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
    for kind, name in _STRUCTURE:
        getter = getattr(kind, name).fget
        setattr(kind, name, property(_once(getter, f"_wasmfleet_{name}")))
    for handle_type in (_types.OwnType, _types.BorrowType):
        handle_type.convert_to_c = _own_to_c(handle_type.convert_to_c)  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# Host functions with their types read once

_HostFunction = tuple[Callable[..., Any], tuple[Lift, ...], Lower | None]
_hosted: dict[int, _HostFunction] = {}
"""Each linked host function, how to lift its parameters and lower its result, by the number
the linker hands back on each call."""
_numbers = itertools.count(1)
_hosted_lock = threading.RLock()
"""Reentrant: a garbage collection while it is held may drop a linker, whose entries then
call `_forget` on the same thread."""


@ffi.wasmtime_component_func_callback_t
def _call_host(number, context, _type, args, count, results, _results):  # type: ignore[no-untyped-def]
    function, lifts, lower = _hosted[number]

    def run(store: Any) -> None:
        if count != len(lifts):
            raise WasmtimeError(f"{len(lifts)} arguments expected, {count} given")
        value = function(store, *[lifts[i](context, args[i]) for i in range(count)])
        if lower is not None:
            lower(store, value, results)

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
    lifts = tuple(lifter(param) for _, param in type_.params)
    result = type_.result
    hosted = (function, lifts, None if result is None else lowerer(result))
    with _hosted_lock:
        number = next(_numbers)
        _hosted[number] = hosted
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
