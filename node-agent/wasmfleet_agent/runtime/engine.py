"""One wasmtime Engine per process (per setting set), its epoch clock and its compiled code.

Deadlines use epoch interruption: a daemon thread advances every engine's epoch each
``TICK_SECONDS``; every store asks to be called back at the next tick (see `sandbox`), so a
guest that runs past its deadline traps within one tick, without a thread per request. The
thread ticks only while some run is under way (`EpochClock`): an idle agent does not wake up
200 times a second.

Compiled code is cached on disk under ``cache_dir``, keyed by the module's digest, the
wasmtime version, the engine settings and the CPU architecture (compiled code loads only into
the same combination). A cache file appears by an atomic rename and is memory-mapped when
loaded, so it is never rewritten in place; a file that fails to load is dropped and the
module compiled again. A restart therefore deserializes instead of compiling.

A `ModuleSlot` holds a served module's machine code between requests. With
``unload_idle_seconds`` set, a sweeper thread drops the code of slots unused for that long,
and the next request loads it again from the cache (a deserialize: about a millisecond), so
an agent's memory follows the modules in use rather than every module it hosts.

Modules that need metering (``fuel``) run in a second engine with fuel consumption turned on,
created on first use: metering every module would slow all of them down.

A WASI 0.2 component is loaded the same way (the same cache, keyed the same way) and linked
with wasmtime's WASI 0.2 host; `component` says which components the agent runs. A
`CompiledModule` says which of the two it holds (``kind``) and the world it is run as.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import wasmtime
from wasmtime import component as wcomponent

from wasmfleet_agent.runtime import gil, hostcalls, sandbox, wasi_http
from wasmfleet_agent.runtime.component import MODULE_WORLD, PROXY_WORLD, inspect_component
from wasmfleet_agent.runtime.errors import ModuleLoadError
from wasmfleet_agent.runtime.shape import (
    COMPONENT_HEADER,
    MODULE_HEADER,
    parse_component_shape,
    parse_shape,
)
from wasmfleet_oci import atomic

__all__ = [
    "MAX_COMPONENT_MEMORIES",
    "TICK_SECONDS",
    "CompiledModule",
    "EngineSettings",
    "EpochClock",
    "ModuleKind",
    "ModuleSlot",
    "Runtime",
]

_log = logging.getLogger(__name__)

TICK_SECONDS = 0.005
"""Epoch period: the precision of deadlines and of the output-size check."""

WASMTIME_VERSION = metadata.version("wasmtime")
_MAX_WASM_STACK = 1 << 20

ModuleKind = Literal["module", "component"]
_Code = TypeVar("_Code", wasmtime.Module, wcomponent.Component)

MAX_COMPONENT_MEMORIES = 4
"""Linear memories a component's core modules may define in all. The store's memory limit
applies to each, so a component may take up to this many times ``resources.memory``; one
built from a preview 1 program with the adapter has two (the program's and the adapter's
small one)."""
_MAX_COMPONENT_TABLES = 64
"""Tables a component's core modules may define (the component model's glue modules define one
each); every one is capped at the same number of elements as a module's."""


@dataclass(frozen=True)
class EngineSettings:
    """Everything that changes the machine code wasmtime produces."""

    fuel: bool = False

    def fingerprint(self) -> str:
        parts = (
            f"wasmtime={WASMTIME_VERSION}",
            f"arch={platform.machine()}",
            f"fuel={self.fuel}",
            "epoch=True",
            "multi_memory=False",
            f"stack={_MAX_WASM_STACK}",
        )
        return ";".join(parts)


class EpochClock:
    """Counts the runs under way, so that the ticker sleeps while there are none."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._stopped = False

    def enter(self) -> None:
        with self._condition:
            self._running += 1
            if self._running == 1:
                self._condition.notify_all()

    def leave(self) -> None:
        with self._condition:
            self._running -= 1

    def wait_for_runs(self) -> bool:
        """Blocks while no run is under way; False once the clock is stopped."""
        with self._condition:
            while self._running == 0 and not self._stopped:
                self._condition.wait()
            return not self._stopped

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()


@dataclass(frozen=True)
class ComponentCode:
    """What a run of a component needs besides the store: its code, linker and entry point."""

    component: wcomponent.Component
    linker: wcomponent.Linker
    entry: tuple[wcomponent.ExportIndex, wcomponent.ExportIndex]
    """The exported interface (``wasi:cli/run@…``) and its ``run`` function."""
    memories: int
    tables: int
    world_kind: Literal["command", "proxy"] = "command"
    lowers: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    """How to lower the entry function's parameters (`conversions.lowerer`): made at load for
    a ``wasi:http/proxy`` component, whose ``handle`` the agent calls per request."""


@dataclass(frozen=True)
class CompiledModule:
    """A module or component compiled for one engine and linked against the agent's host."""

    digest: str
    settings: EngineSettings
    engine: wasmtime.Engine
    module: wasmtime.Module | None
    """The core module (None for a component)."""
    pre: wasmtime.InstancePre | None
    """The core module, linked (None for a component)."""
    source: str
    """``compiled`` or ``cache``: where the machine code came from."""
    seconds: float
    clock: EpochClock = field(default_factory=EpochClock, compare=False, repr=False)
    """The clock of the engine's ticker: every run enters and leaves it."""
    kind: ModuleKind = "module"
    world: str = MODULE_WORLD
    """The world it runs as: `component.MODULE_WORLD` or ``wasi:cli/command@0.2.x``."""
    component: ComponentCode | None = field(default=None, compare=False, repr=False)

    def get(self) -> CompiledModule:
        """Itself (a `ModuleSlot` loads on demand; both are used the same way)."""
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """The linear memories and tables one instance may have, as its store allows."""
        if self.component is None:
            return 1, sandbox.MAX_TABLES
        return self.component.memories, self.component.tables


class ModuleSlot:
    """A module's machine code, loaded on use and dropped by the runtime when idle."""

    def __init__(self, runtime: Runtime, path: Path, compiled: CompiledModule) -> None:
        self.runtime = runtime
        self.path = path
        self.digest = compiled.digest
        self.settings = compiled.settings
        self.shape = compiled.shape
        self.world = compiled.world
        self.last_used = time.monotonic()
        self._compiled: CompiledModule | None = compiled
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._compiled is not None

    def get(self) -> CompiledModule:
        """The machine code, loaded again from the cache if it was dropped (blocking)."""
        self.last_used = time.monotonic()
        compiled = self._compiled
        if compiled is not None:
            return compiled
        with self._lock:
            if self._compiled is None:
                self._compiled = self.runtime.load(self.path, self.digest, self.settings)
            return self._compiled

    def unload_if_idle(self, idle_seconds: float, now: float) -> bool:
        """Drops the machine code if unused for ``idle_seconds`` (runs under way keep theirs)."""
        with self._lock:
            if self._compiled is None or now - self.last_used < idle_seconds:
                return False
            self._compiled = None
            return True


class _EngineSlot:
    def __init__(self, settings: EngineSettings) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = settings.fuel
        config.max_wasm_stack = _MAX_WASM_STACK
        # One memory per module, so that the store's memory limit bounds all of a request's
        # linear memory (the limit applies per memory); `_compile` says so before this would.
        config.wasm_multi_memory = False
        config.wasm_component_model = True
        self.settings = settings
        gil.install()
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self.linker.allow_shadowing = True
        hostcalls.define(self.linker)
        self._component_linker: wcomponent.Linker | None = None
        self._lock = threading.Lock()

    @property
    def component_linker(self) -> wcomponent.Linker:
        """wasmtime's WASI 0.2 host, made on first use (agents without components skip it)."""
        with self._lock:
            if self._component_linker is None:
                linker = wcomponent.Linker(self.engine)
                linker.add_wasip2()
                self._component_linker = linker
            return self._component_linker


@dataclass
class Runtime:
    """Engines, the epoch ticker and the compiled-code cache of one agent process."""

    cache_dir: Path
    on_compile: Callable[[str, float], None] | None = None
    """Called with (``compiled`` or ``cache``, seconds) after each load, for metrics."""
    unload_idle_seconds: float = 0.0
    """Drop a slot's machine code after this long unused (0: never)."""
    _held: weakref.WeakSet[ModuleSlot] = field(default_factory=weakref.WeakSet, init=False)
    _sweeper: threading.Thread | None = field(default=None, init=False)
    _slots: dict[EngineSettings, _EngineSlot] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _clock: EpochClock = field(default_factory=EpochClock, init=False)
    _ticker: threading.Thread | None = field(default=None, init=False)
    _loading: dict[tuple[str, EngineSettings], threading.Lock] = field(
        default_factory=dict, init=False
    )

    def __post_init__(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.cache_dir.glob("*.partial*"):
            leftover.unlink(missing_ok=True)
        self.engine(EngineSettings())
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()
        if self.unload_idle_seconds > 0:
            self._sweeper = threading.Thread(target=self._sweep, name="wasm-unload", daemon=True)
            self._sweeper.start()

    def slot(self, path: Path, compiled: CompiledModule) -> ModuleSlot:
        """A slot for ``compiled`` (loaded from ``path``), unloaded by this runtime when idle."""
        slot = ModuleSlot(self, path, compiled)
        with self._lock:
            self._held.add(slot)
        return slot

    def loaded_count(self) -> int:
        """Slots whose machine code is in memory now."""
        with self._lock:
            return sum(1 for slot in self._held if slot.loaded)

    def unload_idle(self, now: float | None = None) -> int:
        """Drops the machine code of every slot idle for ``unload_idle_seconds``; how many."""
        if self.unload_idle_seconds <= 0:
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            slots = list(self._held)
        return sum(slot.unload_if_idle(self.unload_idle_seconds, now) for slot in slots)

    def _sweep(self) -> None:
        period = min(30.0, max(0.05, self.unload_idle_seconds / 4))
        while not self._stop.wait(period):
            dropped = self.unload_idle()
            if dropped:
                _log.debug("unloaded idle modules", extra={"modules": dropped})

    def engine(self, settings: EngineSettings) -> _EngineSlot:
        with self._lock:
            slot = self._slots.get(settings)
            if slot is None:
                slot = self._slots[settings] = _EngineSlot(settings)
            return slot

    def close(self) -> None:
        self._stop.set()
        self._clock.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        if self._sweeper is not None:
            self._sweeper.join(timeout=1)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        while self._clock.wait_for_runs() and not self._stop.wait(TICK_SECONDS):
            with self._lock:
                engines = [slot.engine for slot in self._slots.values()]
            for engine in engines:
                engine.increment_epoch()

    def cache_path(self, digest: str, settings: EngineSettings) -> Path:
        key = hashlib.sha256(f"{digest};{settings.fingerprint()}".encode()).hexdigest()
        name = digest.split(":", 1)[-1][:32]
        return self.cache_dir / f"{name}-{key[:16]}.cwasm"

    def is_cached(self, digest: str, settings: EngineSettings = EngineSettings()) -> bool:
        return self.cache_path(digest, settings).is_file()

    def load(
        self, path: Path, digest: str | None = None, settings: EngineSettings = EngineSettings()
    ) -> CompiledModule:
        """Compiles the module at ``path`` (or loads its cached machine code) and links it.

        Blocking (compiling takes up to seconds): call it from a worker thread. Concurrent
        loads of one module compile it once.
        """
        if digest is None:
            digest = "sha256:" + _sha256_file(path)
        with self._lock:
            gate = self._loading.setdefault((digest, settings), threading.Lock())
        with gate:
            return self._load(path, digest, settings)

    def _load(self, path: Path, digest: str, settings: EngineSettings) -> CompiledModule:
        if _header(path, digest) == COMPONENT_HEADER:
            return self._load_component(path, digest, settings)
        slot = self.engine(settings)
        cached = self.cache_path(digest, settings)
        started = time.perf_counter()
        source = "cache"
        module = _from_cache(cached, partial(wasmtime.Module.deserialize_file, slot.engine))
        if module is None:
            source = "compiled"
            module = _compile(slot.engine, path, digest)
            with contextlib.suppress(OSError):
                atomic.write_atomically(cached, bytes(module.serialize()))
        if not any(
            export.name == "_start" and isinstance(export.type, wasmtime.FuncType)
            for export in module.exports
        ):
            raise ModuleLoadError(
                f"module {digest} exports no _start function: it is not a WASI command "
                "(a reactor or library module cannot be run)"
            )
        try:
            pre = slot.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as error:
            raise ModuleLoadError(
                f"module {digest} cannot be linked: {_first_line(error)}"
            ) from None
        seconds = time.perf_counter() - started
        if self.on_compile is not None:
            self.on_compile(source, seconds)
        return CompiledModule(
            digest, settings, slot.engine, module, pre, source, seconds, self._clock
        )

    def _load_component(self, path: Path, digest: str, settings: EngineSettings) -> CompiledModule:
        slot = self.engine(settings)
        cached = self.cache_path(digest, settings)
        started = time.perf_counter()
        source = "cache"
        data = _read(path)
        shape = parse_component_shape(data)
        if shape is None:
            raise ModuleLoadError(f"component {digest} is truncated or malformed")
        if shape.memories > MAX_COMPONENT_MEMORIES:
            raise ModuleLoadError(
                f"component {digest} defines {shape.memories} linear memories; the agent runs "
                f"components with at most {MAX_COMPONENT_MEMORIES}, each bounded by "
                "resources.memory"
            )
        if shape.tables > _MAX_COMPONENT_TABLES:
            raise ModuleLoadError(
                f"component {digest} defines {shape.tables} tables; the agent runs components "
                f"with at most {_MAX_COMPONENT_TABLES}"
            )
        component = _from_cache(cached, partial(wcomponent.Component.deserialize_file, slot.engine))
        if component is None:
            source = "compiled"
            try:
                component = wcomponent.Component(slot.engine, data)
            except wasmtime.WasmtimeError as error:
                raise ModuleLoadError(
                    f"component {digest} does not compile: {_first_line(error)}"
                ) from None
            with contextlib.suppress(OSError):
                atomic.write_atomically(cached, bytes(component.serialize()))
        info = inspect_component(slot.engine, component, digest)
        proxy = info.world.startswith(PROXY_WORLD)
        function = "handle" if proxy else "run"
        interface = component.get_export_index(info.entry)
        entry = component.get_export_index(function, interface) if interface else None
        if interface is None or entry is None:
            raise ModuleLoadError(f"component {digest} exports {info.entry} without {function}")
        linker = slot.component_linker
        lowers: tuple[Any, ...] = ()
        if proxy:
            # Its imports are defined by name, at the versions it asks for: a linker each.
            linker = wcomponent.Linker(slot.engine)
            try:
                wasi_http.define(linker, slot.engine, component)
                lowers = wasi_http.entry_lowers(slot.engine, component, info.entry)
            except wasmtime.WasmtimeError as error:
                raise ModuleLoadError(
                    f"component {digest} cannot be linked: {_first_line(error)}"
                ) from None
        seconds = time.perf_counter() - started
        if self.on_compile is not None:
            self.on_compile(source, seconds)
        code = ComponentCode(
            component,
            linker,
            (interface, entry),
            memories=max(1, shape.memories),
            tables=shape.tables,
            world_kind="proxy" if proxy else "command",
            lowers=lowers,
        )
        return CompiledModule(
            digest,
            settings,
            slot.engine,
            None,
            None,
            source,
            seconds,
            self._clock,
            kind="component",
            world=info.world,
            component=code,
        )


def _from_cache(cached: Path, deserialize: Callable[[str], _Code]) -> _Code | None:
    """The machine code in ``cached``, or None when there is none or it cannot be loaded (a
    damaged or foreign file, which is removed so that the caller compiles again)."""
    if not cached.is_file():
        return None
    try:
        return deserialize(str(cached))
    except wasmtime.WasmtimeError as error:
        _log.warning(
            "dropping unusable compiled-code cache file",
            extra={"path": str(cached), "error": str(error)},
        )
        cached.unlink(missing_ok=True)
        return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ModuleLoadError(f"module file {path} cannot be read: {error.strerror}") from None


def _header(path: Path, digest: str) -> bytes:
    """The first 8 bytes: magic number, version and layer; refused unless module or component."""
    try:
        with path.open("rb") as handle:
            header = handle.read(8)
    except OSError as error:
        raise ModuleLoadError(f"module file {path} cannot be read: {error.strerror}") from None
    if header[:4] != b"\0asm":
        raise ModuleLoadError(f"module {digest} is not a WebAssembly binary (bad magic number)")
    if header not in (MODULE_HEADER, COMPONENT_HEADER):
        raise ModuleLoadError(
            f"module {digest} has WebAssembly version {header[4:8].hex()}, neither a core "
            "module (01000000) nor a component (0d000100)"
        )
    return header


def _compile(engine: wasmtime.Engine, path: Path, digest: str) -> wasmtime.Module:
    data = _read(path)
    shape = parse_shape(data)
    if shape is not None and shape.memories > 1:
        raise ModuleLoadError(
            f"module {digest} declares {shape.memories} linear memories; the agent runs "
            "modules with at most one, so that resources.memory bounds all of a request's memory"
        )
    if shape is not None and shape.tables > sandbox.MAX_TABLES:
        raise ModuleLoadError(
            f"module {digest} declares {shape.tables} tables; the agent runs modules with at "
            f"most {sandbox.MAX_TABLES}, so that their elements stay within a bounded size"
        )
    try:
        return wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as error:
        raise ModuleLoadError(f"module {digest} does not compile: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(error).__name__


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise ModuleLoadError(f"module file {path} cannot be read: {error.strerror}") from None
    return digest.hexdigest()
