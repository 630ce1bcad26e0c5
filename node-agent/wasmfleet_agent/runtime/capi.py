"""The few wasmtime C API calls on the per-request path, made without the Python wrappers.

wasmtime-py's wrappers are general: ``Instance.exports`` wraps every export, ``WasiConfig``
re-encodes each string on every call. A request needs one export and an environment whose
module part never changes, so these helpers go straight to the C API (through wasmtime-py's own
ctypes bindings) and let callers encode constant strings once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import wasmtime
from wasmtime import _ffi as ffi

from wasmfleet_agent.runtime import gil

__all__ = [
    "EncodedStrings",
    "call_export",
    "instantiate",
    "memory_size",
    "set_argv",
    "set_env",
    "set_stdio_file",
]

_CharPointer = ctypes.POINTER(ctypes.c_char)
_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value


class EncodedStrings:
    """A C array of NUL-terminated strings, kept alive as long as this object."""

    def __init__(self, strings: Sequence[str]) -> None:
        self.strings: list[bytes] = [s.encode() for s in strings]
        self.count = len(self.strings)
        self._array = (ctypes.c_char_p * max(1, self.count))(*self.strings)
        self.array = ctypes.cast(self._array, ctypes.POINTER(_CharPointer))


def set_stdio_file(config: wasmtime.WasiConfig, which: str, path: bytes) -> None:
    """Points the guest's ``stdout`` or ``stderr`` at the file ``path`` (opened, truncated)."""
    setter = (
        ffi.wasi_config_set_stdout_file if which == "stdout" else ffi.wasi_config_set_stderr_file
    )
    if not setter(config.ptr(), ctypes.cast(ctypes.c_char_p(path), _CharPointer)):
        raise wasmtime.WasmtimeError(f"cannot open {path.decode()} for {which}")


def set_argv(config: wasmtime.WasiConfig, argv: EncodedStrings) -> None:
    if not ffi.wasi_config_set_argv(config.ptr(), argv.count, argv.array):
        raise wasmtime.WasmtimeError("the arguments are not valid")


# wasi_config_set_env with arrays of ``c_char_p`` as its parameters, so that a request's
# arrays are passed as they are made, without a cast (the wrapper's argument types are left
# alone: wasmtime-py uses them).
_set_env_arrays = gil.held_as(
    "wasi_config_set_env",
    ctypes.c_bool,
    [
        ctypes.POINTER(ffi.wasi_config_t),
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_char_p),
    ],
)


def set_env(
    config: wasmtime.WasiConfig,
    names: EncodedStrings,
    values: EncodedStrings,
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    """The environment ``names``/``values`` (encoded once) followed by ``extra`` (one
    request's variables, encoded here); wasmtime copies the strings."""
    count = names.count + len(extra)
    array = ctypes.c_char_p * max(1, count)
    encoded_names = array(*names.strings, *[name.encode() for name, _ in extra])
    encoded_values = array(*values.strings, *[value.encode() for _, value in extra])
    if not _set_env_arrays(config.ptr(), count, encoded_names, encoded_values):
        raise wasmtime.WasmtimeError("the environment is not valid")


def _raise(error: object, trap: object) -> None:
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)  # type: ignore[arg-type]
    if trap:
        raise wasmtime.Trap._from_ptr(trap)  # type: ignore[arg-type]


def instantiate(pre: wasmtime.InstancePre, store: wasmtime.Store) -> ffi.wasmtime_instance_t:
    """A new instance in ``store``; raises `wasmtime.Trap` or `wasmtime.WasmtimeError`."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        pre.ptr(), store._context(), ctypes.byref(instance), ctypes.byref(trap)
    )
    _raise(error, trap)
    return instance


def _export(
    store: wasmtime.Store, instance: ffi.wasmtime_instance_t, name: bytes
) -> ffi.wasmtime_extern_t | None:
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance), name, len(name), ctypes.byref(item)
    )
    return item if found else None


def call_export(store: wasmtime.Store, instance: ffi.wasmtime_instance_t, name: bytes) -> bool:
    """Calls the exported function ``name`` (no parameters, no results); False if absent."""
    item = _export(store, instance, name)
    if item is None or int(item.kind) != _FUNC:
        return False
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call(
        store._context(), ctypes.byref(item.of.func), None, 0, None, 0, ctypes.byref(trap)
    )
    _raise(error, trap)
    return True


def memory_size(store: wasmtime.Store, instance: ffi.wasmtime_instance_t) -> int | None:
    """Bytes in the exported ``memory``, or None when there is none."""
    item = _export(store, instance, b"memory")
    if item is None or int(item.kind) != _MEMORY:
        return None
    return int(ffi.wasmtime_memory_data_size(store._context(), ctypes.byref(item.of.memory)))
