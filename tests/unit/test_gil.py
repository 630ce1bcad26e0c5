"""wasmtime's short C calls keep the GIL (`runtime.gil`), so threads do not trade it on each."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import wasmtime
from wasmtime import _bindings as bindings
from wasmtime import _ffi as ffi

from wasmfleet_agent.runtime import gil

_CALLS = 20_000


@pytest.fixture
def switches_only_when_released() -> Iterator[None]:
    """Another thread runs only when the GIL is let go (no timed switch within the test)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _steps_of_a_rival_thread(make_calls: Callable[[], None]) -> int:
    """How far a thread that wants the GIL gets while ``make_calls`` runs on this one."""
    steps = 0
    started, stop = threading.Event(), threading.Event()

    def rival() -> None:
        nonlocal steps
        started.set()
        while not stop.is_set():
            steps += 1
            time.sleep(0)  # lets go of the GIL at once: the calls' thread never waits long

    thread = threading.Thread(target=rival)
    thread.start()
    started.wait(10)  # the rival has run; it now waits for the GIL this thread took back
    before = steps
    make_calls()
    done = steps
    stop.set()
    thread.join(10)
    return done - before


def _host_handles(new: Any, delete: Any) -> Callable[[], None]:
    def calls() -> None:
        for rep in range(_CALLS):
            delete(new(True, rep, 7))

    return calls


@pytest.mark.usefixtures("switches_only_when_released")
def test_a_held_call_never_lets_a_waiting_thread_run() -> None:
    new = gil.held("wasmtime_component_resource_host_new")
    delete = gil.held("wasmtime_component_resource_host_delete")
    assert _steps_of_a_rival_thread(_host_handles(new, delete)) == 0


@pytest.mark.usefixtures("switches_only_when_released")
def test_the_same_call_made_as_ctypes_usually_does_lets_a_waiting_thread_run() -> None:
    """The contrast that makes the test above mean something: ctypes' usual calls let go."""
    new = ffi.dll["wasmtime_component_resource_host_new"]
    delete = ffi.dll["wasmtime_component_resource_host_delete"]
    held_new = gil.held("wasmtime_component_resource_host_new")
    new.argtypes, new.restype = held_new.argtypes, held_new.restype
    delete.argtypes = gil.held("wasmtime_component_resource_host_delete").argtypes
    delete.restype = None
    assert _steps_of_a_rival_thread(_host_handles(new, delete)) > 0


def test_a_held_call_is_made_once_with_the_c_signature() -> None:
    name = "wasmtime_component_resource_host_rep"
    held = gil.held(name)
    declared = ffi.dll[name]  # a fresh ctypes function of the same C symbol
    assert held.argtypes == [ctypes.POINTER(ffi.wasmtime_component_resource_host_t)]
    assert held.restype is ctypes.c_uint32
    assert held is gil.held(name)
    assert held is not declared


def test_install_puts_held_calls_under_wasmtime_pys_wrappers_and_engines_still_work() -> None:
    gil.install()
    gil.install()  # idempotent
    for name in gil.HELD:
        assert getattr(bindings, "_" + name) is gil.held(name)
    assert bindings._wasmtime_component_func_call is not None
    assert "wasmtime_component_func_call" not in gil.HELD  # runs guest code: lets go
    store = wasmtime.Store(wasmtime.Engine())
    module = wasmtime.Module(store.engine, '(module (func (export "f") (result i32) i32.const 7))')
    instance = wasmtime.Instance(store, module, [])
    run = instance.exports(store)["f"]
    assert isinstance(run, wasmtime.Func)
    assert run(store) == 7
