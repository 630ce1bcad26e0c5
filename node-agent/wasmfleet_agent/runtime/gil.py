"""wasmtime's short C calls made without letting go of the GIL.

ctypes lets go of the GIL around every foreign call and takes it back afterwards. For a call
that runs guest code (instantiating, calling an export) that is what lets other threads run
meanwhile. For the dozens of bookkeeping calls a request makes (a store made and dropped, each
handle converted, each value freed: about 70 for a trivial ``wasi:http`` request) it only
costs: with requests on several threads, each release is a chance for another thread to take
the GIL, and each return then waits for it to come back. Measured on one agent process at
concurrency 64 with requests on the thread pool, the process spent most of its CPU in
``futex`` calls (about 60 a request) and answered a few hundred requests a second.

`held` gives a C function of wasmtime's library, with the argument and result types
wasmtime-py declares for it, called with the GIL kept (as ``ctypes.PyDLL`` calls are);
`install` puts such versions under wasmtime-py's own wrappers, for the calls listed in `HELD`:
each returns in microseconds and none runs guest code, waits for anything, or takes a lock
that a thread may hold while it waits for the GIL. A call that reaches back into Python
(a resource's destructor when a store is dropped) does so on the same thread, which already
holds the GIL, as ctypes callbacks allow.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from wasmtime import _bindings as bindings
from wasmtime import _ffi as ffi

__all__ = ["HELD", "held", "held_as", "install"]

HELD = frozenset(
    {
        # a store: made, bounded, dropped (dropping frees its instances' memory)
        "wasmtime_store_new",
        "wasmtime_store_context",
        "wasmtime_store_limiter",
        "wasmtime_store_epoch_deadline_callback",
        "wasmtime_context_set_epoch_deadline",
        "wasmtime_context_set_fuel",
        "wasmtime_context_get_fuel",
        "wasmtime_context_set_wasi",
        "wasmtime_store_delete",
        "wasmtime_engine_increment_epoch",
        # a WASI preview 1 configuration
        "wasi_config_new",
        "wasi_config_delete",
        "wasi_config_set_argv",
        "wasi_config_set_env",
        "wasi_config_set_stdin_file",
        "wasi_config_set_stdout_file",
        "wasi_config_set_stderr_file",
        "wasi_config_set_stdin_bytes",
        # finding an export
        "wasmtime_instance_export_get",
        "wasmtime_component_instance_get_func",
        "wasmtime_memory_data_size",
        # component values and handles
        "wasmtime_component_resource_host_new",
        "wasmtime_component_resource_host_rep",
        "wasmtime_component_resource_host_type",
        "wasmtime_component_resource_host_owned",
        "wasmtime_component_resource_host_delete",
        "wasmtime_component_resource_host_to_any",
        "wasmtime_component_resource_any_to_host",
        "wasmtime_component_resource_any_delete",
        "wasmtime_component_val_new",
        "wasmtime_component_val_delete",
        "wasmtime_component_vallist_new_uninit",
        "wasmtime_component_vallist_delete",
        "wasmtime_component_valtuple_delete",
        "wasm_byte_vec_delete",
        # errors
        "wasmtime_error_message",
        "wasmtime_error_delete",
    }
)
"""The calls made with the GIL kept once `install` has run."""

_library: Any = ctypes.PyDLL(ffi.dll._name, handle=ffi.dll._handle)
_made: dict[str, Any] = {}
_lock = threading.Lock()
_installed = False


def held(name: str) -> Any:
    """wasmtime's C function ``name``, with wasmtime-py's types, called with the GIL kept."""
    with _lock:
        function = _made.get(name)
        if function is None:
            declared = getattr(bindings, "_" + name)
            function = _library[name]
            function.argtypes = declared.argtypes
            function.restype = declared.restype
            _made[name] = function
        return function


def held_as(name: str, restype: Any, argtypes: list[Any]) -> Any:
    """wasmtime's C function ``name`` with types of the caller's own (a new object, apart
    from wasmtime-py's), called with the GIL kept."""
    function = _library[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


def install() -> None:
    """Makes wasmtime-py's wrappers of the calls in `HELD` keep the GIL; idempotent."""
    global _installed
    if _installed:
        return
    for name in sorted(HELD):
        if hasattr(bindings, "_" + name):  # a call this wasmtime-py does not have stays out
            setattr(bindings, "_" + name, held(name))
    _installed = True
