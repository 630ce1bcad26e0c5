"""One run of a module in a fresh instance, seeing only what its spec grants.

Deny by default: the guest gets exactly the arguments, environment variables and preopened
directories of its `SandboxSpec` (read-only unless granted writable), the stdin bytes it is
handed, and nothing of the host: no inherited environment, no host stdio, no sockets.

Limits, enforced while it runs:

- linear memory: the store's limiter makes ``memory.grow`` fail beyond ``memory_limit``, and a
  store holds one memory (the engine refuses modules with more), so the cap is the whole of a
  run's linear memory;
- tables: at most `MAX_TABLES`, each of at most `table_elements_limit` elements, so a
  ``table.grow`` past that fails at once instead of allocating gigabytes;
- deadline: at every epoch tick (`engine.TICK_SECONDS`) the store calls back into
  `_on_epoch`, which traps the guest once its wall-clock deadline has passed, or once its
  output has grown past ``max_output``; a guest asleep in ``poll_oneoff`` wakes by its deadline
  (`hostcalls`);
- fuel, when the spec sets it (the engine must meter fuel);
- output: stdout and stderr go to per-thread memory files (``memfd``), checked each tick and
  read once at the end, so nothing touches the disk and a flood is cut within one tick.

Every call of `run` builds a new Store: nothing a request does is visible to the next.

A WASI 0.2 component of the ``wasi:cli/command`` world runs the same way, with the same WASI
context, limits and output capture: its ``wasi:cli/run`` export stands for ``_start`` and an
``err`` from it for exit code 1. Its core modules may define several memories (the engine
counts them at load, `engine.MAX_COMPONENT_MEMORIES` at most), each bounded by the limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import component as wcomponent

from wasmfleet_agent.runtime import capi, conversions, wasi_http
from wasmfleet_agent.runtime.errors import SandboxConfigError
from wasmfleet_agent.runtime.outbound import OutboundPolicy

if TYPE_CHECKING:
    from wasmfleet_agent.runtime.engine import CompiledModule, ComponentCode

__all__ = [
    "MAX_TABLES",
    "Failure",
    "HandleResult",
    "Preopen",
    "RunLimits",
    "RunResult",
    "SandboxSpec",
    "current_deadline",
    "guest_monotonic_origin",
    "handle_http",
    "instance_bytes",
    "may_block",
    "run",
    "stop_run",
    "table_elements_limit",
]

FailureKind = Literal[
    "deadline", "output", "memory", "fuel", "stack", "trap", "exit", "instantiate", "budget"
]
_WASM_PAGE = 65536

MAX_TABLES = 4
"""Tables one instance may have (modules declaring more are refused at load)."""
_TABLE_ELEMENT_BYTES = 8
"""What wasmtime spends on a table element (a pointer), for the cap below."""


def table_elements_limit(memory_limit: int) -> int:
    """Elements one table may hold under ``memory_limit``: at most `MAX_TABLES` tables then
    take a quarter of the memory cap, and never fewer than 16,384 elements a table (enough for
    the function tables of large programs built for small memories)."""
    share = memory_limit // 4 // MAX_TABLES // _TABLE_ELEMENT_BYTES
    return max(16_384, share)


@dataclass(frozen=True)
class Preopen:
    """A host directory the guest sees at ``guest`` (read-only unless ``writable``)."""

    host: Path
    guest: str
    writable: bool = False


@dataclass(frozen=True)
class SandboxSpec:
    """What a run may see; ``args[0]`` is the program name, as the guest reads it."""

    args: tuple[str, ...] = ("module.wasm",)
    env: tuple[tuple[str, str], ...] = ()
    preopens: tuple[Preopen, ...] = ()
    memory_limit: int = 64 << 20
    fuel: int | None = None
    outbound: tuple[str, ...] = ()
    """Origins (``scheme://host:port``) a wasi:http guest may send requests to."""

    def check(self) -> None:
        """Raises `SandboxConfigError` for what cannot be granted (checked before any run)."""
        for preopen in self.preopens:
            if not preopen.host.is_dir():
                raise SandboxConfigError(f"directory {preopen.host} to preopen does not exist")
            if not preopen.guest.startswith("/"):
                raise SandboxConfigError(f"guest path {preopen.guest!r} is not absolute")
        for name, value in self.env:
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise SandboxConfigError(f"environment variable {name!r} is not valid")
        try:
            self.outbound_policy  # noqa: B018 - parsed here so that a bad origin fails early
        except ValueError as error:
            raise SandboxConfigError(str(error)) from None

    @cached_property
    def outbound_policy(self) -> OutboundPolicy:
        return OutboundPolicy.parse(self.outbound)

    @cached_property
    def encoded(self) -> tuple[capi.EncodedStrings, capi.EncodedStrings, capi.EncodedStrings]:
        """argv, env names and env values, encoded once for every run of this spec."""
        return (
            capi.EncodedStrings(self.args),
            capi.EncodedStrings([name for name, _ in self.env]),
            capi.EncodedStrings([value for _, value in self.env]),
        )


def instance_bytes(memory_limit: int, shape: tuple[int, int] = (1, MAX_TABLES)) -> int:
    """The most one instance's linear memories and tables may take under ``memory_limit``,
    for ``shape`` (memories, tables): what an agent's memory budget sets aside for a run."""
    memories, tables = shape
    table_bytes = tables * table_elements_limit(memory_limit) * _TABLE_ELEMENT_BYTES
    return memories * memory_limit + table_bytes


@dataclass(frozen=True)
class RunLimits:
    deadline_seconds: float | None = 30.0
    max_output: int = 16 << 20
    """Largest stdout (and, separately, stderr) a run may write; when streaming, the most
    both together may write (the sink gets exactly that much, then the run stops)."""
    cpu_budget: float | None = None
    """For a try that must not hold its thread long (an inline run, `server.inline`): the run
    stops with a ``budget`` failure once its thread has spent this many seconds of CPU (seen
    at the next epoch tick) or the moment the guest would sleep or wait in a host call."""


OutputSink = Callable[[str, bytes], None]
"""Receives ``("stdout" | "stderr", bytes)`` as a streaming run writes."""


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    """0 when the entry returned normally; the code given to ``proc_exit``; None on a failure."""
    stdout: bytes
    stderr: bytes
    failure: Failure | None
    seconds: float
    instantiate_seconds: float
    cpu_seconds: float = 0.0
    """CPU time of the run's thread while it ran (waiting for the GIL and sleeping are not)."""
    waited: bool = False
    """The guest slept or waited in a host call (``poll_oneoff``, a pollable)."""

    @property
    def ok(self) -> bool:
        return self.failure is None and self.exit_code == 0


@dataclass
class _Watch:
    deadline: float | None
    fds: tuple[int, ...]
    max_output: int
    sink: OutputSink | None = None
    monotonic_origin: int = 0
    """The host's ``time.monotonic_ns()`` when the guest's monotonic clock read zero (or
    slightly after: a guest's absolute wait then ends a few microseconds late, never early)."""
    offsets: dict[int, int] = field(default_factory=dict)
    reason: FailureKind | None = None
    instantiated: float = 0.0
    """When a component's instance was made (`perf_counter`), 0 before."""
    cpu_until: float | None = None
    """The thread's CPU time (`time.thread_time`) at which a try is stopped (None: no try)."""
    waited: bool = False
    """The guest slept or waited in a host call."""

    streamed: int = 0
    """Bytes handed to the sink so far, both streams together."""

    def drain(self) -> bool:
        """Hands new output to the sink and frees what it has read; False once the run has
        written more than ``max_output`` (the sink then has exactly ``max_output`` bytes).

        Runs on the guest's thread while the guest is paused, so nothing writes meanwhile.
        The guest's file offset keeps growing; truncating to zero leaves a hole before it,
        which costs no memory.
        """
        assert self.sink is not None
        within = True
        for stream, fd in zip(("stdout", "stderr"), self.fds, strict=True):
            start = self.offsets.get(fd, 0)
            end = os.fstat(fd).st_size
            if end > start:
                room = self.max_output - self.streamed
                if end - start > room:
                    within = False
                if room > 0:
                    self.sink(stream, os.pread(fd, min(end - start, room), start))
                    self.streamed += min(end - start, room)
                self.offsets[fd] = end
                os.ftruncate(fd, 0)
        return within


_local = threading.local()
_log = logging.getLogger(__name__)


def current_deadline() -> float | None:
    """The monotonic deadline of the run on this thread (for host functions)."""
    watch: _Watch | None = getattr(_local, "watch", None)
    return None if watch is None else watch.deadline


def may_block() -> bool:
    """Called by a host function about to sleep or wait: whether the run on this thread may.
    A try with a CPU budget may not (it runs on the event loop's thread); the host function
    then calls ``stop_run("budget")`` and raises. Any other run is marked as one that waited
    (`RunResult.waited`)."""
    watch: _Watch | None = getattr(_local, "watch", None)
    if watch is None:
        return True
    if watch.cpu_until is not None:
        return False
    watch.waited = True
    return True


def stop_run(reason: FailureKind) -> None:
    """Records why the run on this thread is being stopped by a host function (which then
    raises, trapping the guest), so that the run's failure says ``reason``."""
    watch: _Watch | None = getattr(_local, "watch", None)
    if watch is not None:
        watch.reason = reason


def guest_monotonic_origin() -> int:
    """``time.monotonic_ns()`` at the zero of the guest's monotonic clock, for the run on this
    thread: WASI's monotonic clock counts from when the run's WASI context was made, not from
    the host's boot, so an absolute guest time is converted with it (for host functions)."""
    watch: _Watch | None = getattr(_local, "watch", None)
    return 0 if watch is None else watch.monotonic_origin


_EpochCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _stop(reason: FailureKind, message: bytes) -> int:
    watch: _Watch | None = getattr(_local, "watch", None)
    if watch is not None:
        watch.reason = reason
    error = ffi.wasmtime_error_new(ctypes.create_string_buffer(message))
    return ctypes.cast(error, ctypes.c_void_p).value or 0


@_EpochCallback  # type: ignore[untyped-decorator]
def _on_epoch(_context: Any, _data: Any, delta: Any, kind: Any) -> int:
    # An exception must not escape into C (ctypes would drop it and the guest would run on
    # unchecked); anything unexpected stops this run, and only this run.
    try:
        watch: _Watch | None = getattr(_local, "watch", None)
        if watch is not None:
            if watch.deadline is not None and time.monotonic() >= watch.deadline:
                return _stop("deadline", b"deadline exceeded")
            if watch.cpu_until is not None and time.thread_time() >= watch.cpu_until:
                return _stop("budget", b"inline budget spent")
            if watch.sink is not None:
                if not watch.drain():
                    return _stop("output", b"output limit exceeded")
            else:
                for fd in watch.fds:
                    if os.fstat(fd).st_size > watch.max_output:
                        return _stop("output", b"output limit exceeded")
        delta[0] = 1
        kind[0] = 0  # continue
        return 0
    except Exception:
        return _stop("trap", b"the agent could not watch this run")


@_Finalizer  # type: ignore[untyped-decorator]
def _no_finalizer(_data: Any) -> None:
    return None


@dataclass
class _Pipes:
    """Two memory files per worker thread, reused (wasmtime truncates them on open)."""

    stdout: int = field(default_factory=lambda: os.memfd_create("wasm-stdout", os.MFD_CLOEXEC))
    stderr: int = field(default_factory=lambda: os.memfd_create("wasm-stderr", os.MFD_CLOEXEC))

    @property
    def stdout_path(self) -> bytes:
        return b"/proc/self/fd/%d" % self.stdout

    @property
    def stderr_path(self) -> bytes:
        return b"/proc/self/fd/%d" % self.stderr


def _pipes() -> _Pipes:
    pipes: _Pipes | None = getattr(_local, "pipes", None)
    if pipes is None:
        pipes = _local.pipes = _Pipes()
    return pipes


def _set_stdin(config: wasmtime.WasiConfig, data: bytes) -> None:
    vector = ffi.wasm_byte_vec_t()
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    ffi.wasm_byte_vec_new(vector, len(data), buffer)
    # the configuration takes ownership of the vector's bytes
    ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vector))


def _read(fd: int, limit: int) -> tuple[bytes, int]:
    size = os.fstat(fd).st_size
    return os.pread(fd, min(size, limit), 0), size


def _wasi_config(
    spec: SandboxSpec,
    extra_env: Sequence[tuple[str, str]],
    stdin: bytes | None,
    inherit_stdio: bool,
    pipes: _Pipes,
) -> wasmtime.WasiConfig:
    config = wasmtime.WasiConfig()
    argv, names, values = spec.encoded
    capi.set_argv(config, argv)
    if names.count or extra_env:
        capi.set_env(config, names, values, extra_env)
    for preopen in spec.preopens:
        config.preopen_dir(str(preopen.host), preopen.guest, preopen.writable)
    if inherit_stdio:
        config.inherit_stdin()
        config.inherit_stdout()
        config.inherit_stderr()
    else:
        if stdin:
            _set_stdin(config, stdin)
        capi.set_stdio_file(config, "stdout", pipes.stdout_path)
        capi.set_stdio_file(config, "stderr", pipes.stderr_path)
    return config


@contextlib.contextmanager
def _watching(watch: _Watch) -> Iterator[None]:
    _local.watch = watch
    try:
        yield
    finally:
        _local.watch = None


def run(
    compiled: CompiledModule,
    spec: SandboxSpec,
    *,
    stdin: bytes | None = None,
    extra_env: Sequence[tuple[str, str]] = (),
    limits: RunLimits = RunLimits(),
    inherit_stdio: bool = False,
    sink: OutputSink | None = None,
    entry: str = "_start",
) -> RunResult:
    """Runs ``entry`` of a fresh instance to completion on the calling thread (blocking).

    Output is captured and returned (up to ``limits.max_output``), or passed to ``sink`` as it
    is written (at every epoch tick, up to ``limits.max_output`` in all), or, with
    ``inherit_stdio``, goes to the agent's own stdio (the ``run`` command only).
    """
    if compiled.component is not None and compiled.component.world_kind == "proxy":
        raise SandboxConfigError(f"a {compiled.world} component has no entry point to run")
    started, cpu_started = time.perf_counter(), time.thread_time()
    pipes = _pipes()
    store = wasmtime.Store(compiled.engine)
    try:
        config = _wasi_config(spec, extra_env, stdin, inherit_stdio, pipes)
    except wasmtime.WasmtimeError as error:
        raise SandboxConfigError(str(error)) from None
    store.set_wasi(config)
    monotonic_origin = time.monotonic_ns()  # the guest's clock started inside set_wasi
    code = compiled.component
    _bound(store, compiled, spec)
    deadline = None
    if limits.deadline_seconds is not None:
        deadline = time.monotonic() + limits.deadline_seconds
    fds = () if inherit_stdio else (pipes.stdout, pipes.stderr)
    watch = _Watch(deadline, fds, limits.max_output, sink, monotonic_origin=monotonic_origin)
    if limits.cpu_budget is not None:
        watch.cpu_until = cpu_started + limits.cpu_budget
    exit_code: int | None = None
    failure: Failure | None = None
    instantiated = started
    instance: ffi.wasmtime_instance_t | None = None
    compiled.clock.enter()  # the epoch ticker runs while any run is under way
    try:
        with _watching(watch):
            try:
                if code is not None:
                    exit_code = _run_component(code, store)
                    instantiated = watch.instantiated or instantiated
                else:
                    instance = capi.instantiate(compiled.pre, store)  # type: ignore[arg-type]
                    instantiated = time.perf_counter()
                    if not capi.call_export(store, instance, entry.encode()):
                        raise SandboxConfigError(f"the module exports no function {entry!r}")
                    exit_code = 0
            except wasmtime.ExitTrap as exit_trap:
                exit_code = exit_trap.code
            except _InstantiationError as error:
                failure = _classify_component(error, watch, spec)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as error:
                if code is not None:
                    failure = _classify_component(error, watch, spec)
                else:
                    failure = _classify(error, watch, store, instance, spec)
    finally:
        compiled.clock.leave()
    if instantiated == started:
        instantiated = time.perf_counter()
    if inherit_stdio:
        stdout = stderr = b""
    elif sink is not None:
        if not watch.drain() and failure is None:
            failure = Failure("output", f"wrote more than {limits.max_output} bytes of output")
        stdout = stderr = b""
    else:
        stdout, stdout_size = _read(pipes.stdout, limits.max_output + 1)
        stderr, _ = _read(pipes.stderr, min(limits.max_output, 64 << 10))
        if failure is None and stdout_size > limits.max_output:
            failure = Failure("output", f"wrote more than {limits.max_output} bytes")
    del store
    return RunResult(
        exit_code=None if failure is not None else exit_code,
        stdout=stdout[: limits.max_output],
        stderr=stderr,
        failure=failure,
        seconds=time.perf_counter() - started,
        instantiate_seconds=instantiated - started,
        cpu_seconds=time.thread_time() - cpu_started,
        waited=watch.waited,
    )


def _bound(store: wasmtime.Store, compiled: CompiledModule, spec: SandboxSpec) -> None:
    """Sets a new store's limits: memory, tables, fuel, and the epoch watch."""
    code = compiled.component
    store.set_limits(
        memory_size=spec.memory_limit,
        table_elements=table_elements_limit(spec.memory_limit),
        tables=MAX_TABLES if code is None else code.tables,
        memories=1 if code is None else code.memories,
    )
    if compiled.settings.fuel:
        store.set_fuel(spec.fuel if spec.fuel is not None else 2**62)
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, None, _no_finalizer)
    store.set_epoch_deadline(1)


@dataclass(frozen=True)
class HandleResult:
    """How one ``wasi:http`` request's run ended (the response is in its exchange)."""

    failure: Failure | None
    seconds: float
    instantiate_seconds: float
    cpu_seconds: float = 0.0
    waited: bool = False


def handle_http(
    compiled: CompiledModule,
    spec: SandboxSpec,
    state: wasi_http.Exchange,
    *,
    deadline_seconds: float | None,
    cpu_budget: float | None = None,
) -> HandleResult:
    """Serves one request with a fresh instance of a ``wasi:http/proxy`` component: its
    ``incoming-handler.handle`` is called with the request of ``state``, whose response the
    guest fills in. Blocking; the same limits as `run` (memory, tables, fuel, deadline)."""
    code = compiled.component
    assert code is not None
    assert code.world_kind == "proxy"
    started, cpu_started = time.perf_counter(), time.thread_time()
    store = wasmtime.Store(compiled.engine)
    _bound(store, compiled, spec)
    deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
    watch = _Watch(deadline, (), state.max_output)
    if cpu_budget is not None:
        watch.cpu_until = cpu_started + cpu_budget
    failure: Failure | None = None
    instantiated = started
    compiled.clock.enter()
    try:
        with _watching(watch), wasi_http.exchange(state):
            try:
                instance = _instantiate(code, store)
                instantiated = time.perf_counter()
                _interface, handle = code.entry
                func = instance.get_func(store, handle)
                if func is None:
                    raise SandboxConfigError("the component's incoming-handler has no handle")
                request, outparam = wasi_http.incoming_handles(state)
                conversions.call_export(func, store, code.lowers, request, outparam)
            except _InstantiationError as error:
                failure = _classify_component(error, watch, spec)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as error:
                failure = _classify_component(error, watch, spec)
            except wasi_http.GuestError as error:
                # wasmtime-py hands a host function's exception back to the caller of the
                # export: the guest is stopped there, as by a trap
                failure = _stopped_by_watch(watch) or Failure("trap", f"trap: {error}")
            except Exception as error:  # a fault of the host's own: this request fails alone
                _log.exception("the wasi:http host failed")
                failure = Failure("trap", f"the agent's wasi:http host failed: {error!r}")
    finally:
        compiled.clock.leave()
        del store
    return HandleResult(
        failure,
        time.perf_counter() - started,
        instantiated - started,
        cpu_seconds=time.thread_time() - cpu_started,
        waited=watch.waited,
    )


def _run_component(code: ComponentCode, store: wasmtime.Store) -> int:
    """Instantiates the component and calls its ``wasi:cli/run``; the exit code."""
    watch: _Watch = _local.watch
    instance = _instantiate(code, store)
    watch.instantiated = time.perf_counter()
    _interface, run = code.entry
    func = instance.get_func(store, run)
    if func is None:  # the engine found it in the component's type: not expected
        raise SandboxConfigError("the component's wasi:cli/run has no run function")
    outcome = func(store)
    return 0 if getattr(outcome, "tag", "err") == "ok" else 1


def _instantiate(code: ComponentCode, store: wasmtime.Store) -> wcomponent.Instance:
    """A new instance of the component; `_InstantiationError` when it cannot be made."""
    try:
        return code.linker.instantiate(store, code.component)
    except wasmtime.WasmtimeError as error:
        raise _InstantiationError(error) from None


class _InstantiationError(Exception):
    """A component that could not be instantiated (its imports, its memory, its start)."""

    def __init__(self, cause: wasmtime.WasmtimeError) -> None:
        super().__init__(str(cause))


def _stopped_by_watch(watch: _Watch) -> Failure | None:
    """The failure when the agent's watch stopped the run (deadline, output), else None."""
    if watch.reason == "deadline":
        return Failure("deadline", "deadline exceeded")
    if watch.reason == "output":
        return Failure("output", f"wrote more than {watch.max_output} bytes of output")
    if watch.reason == "budget":
        return Failure("budget", "stopped at the inline budget, to run again on a thread")
    return None


def _instantiation_failure(message: str, spec: SandboxSpec) -> Failure:
    if "memory" in message and ("limit" in message or "exceeds" in message):
        return Failure(
            "memory", f"the module needs more memory than its limit of {spec.memory_limit}"
        )
    return Failure("instantiate", f"instantiation failed: {message}")


def _classify_component(
    error: wasmtime.Trap | wasmtime.WasmtimeError | _InstantiationError,
    watch: _Watch,
    spec: SandboxSpec,
) -> Failure:
    stopped = _stopped_by_watch(watch)
    if stopped is not None:
        return stopped
    message = _summary(error)
    if isinstance(error, _InstantiationError):
        return _instantiation_failure(message, spec)
    if "all fuel consumed" in message:
        return Failure("fuel", "fuel exhausted")
    if "call stack exhausted" in message:
        return Failure("stack", "stack overflow")
    return Failure("trap", f"trap: {message}")


def _classify(
    error: wasmtime.Trap | wasmtime.WasmtimeError,
    watch: _Watch,
    store: wasmtime.Store,
    instance: ffi.wasmtime_instance_t | None,
    spec: SandboxSpec,
) -> Failure:
    stopped = _stopped_by_watch(watch)
    if stopped is not None:
        return stopped
    message = _summary(error)
    if instance is None:
        return _instantiation_failure(message, spec)
    code = error.trap_code if isinstance(error, wasmtime.Trap) else None
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return Failure("fuel", "fuel exhausted")
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return Failure("stack", "stack overflow")
    used = capi.memory_size(store, instance)
    if used is not None and used + 2 * _WASM_PAGE * 16 >= spec.memory_limit:
        return Failure(
            "memory",
            f"trap with linear memory at its limit ({used} of {spec.memory_limit} bytes): "
            f"{message}",
        )
    return Failure("trap", f"trap: {message}")


def _summary(error: Exception) -> str:
    """The cause of a trap in one line, without the backtrace wasmtime prints first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Caused by:" in lines:
        causes = lines[lines.index("Caused by:") + 1 :]
        return "; ".join(re.sub(r"^\d+: ", "", cause) for cause in causes)
    return lines[0] if lines else type(error).__name__
