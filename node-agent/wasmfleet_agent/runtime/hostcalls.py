"""Host functions the agent puts in front of wasmtime's own WASI.

``poll_oneoff`` is replaced: wasmtime's version sleeps inside the host, where epoch
interruption cannot reach, so a guest sleeping past its deadline would hold its thread (and its
request) until it woke. An absolute time on the monotonic clock is the guest's own monotonic
time, which starts at zero with the run (`sandbox.guest_monotonic_origin`). This version waits
on the run's own clock: never past the run's deadline (`sandbox.current_deadline`); once the
deadline has passed it returns at once, and the guest traps at its next epoch check; a try that
may not block (`sandbox.may_block`) is stopped instead of sleeping. Descriptor
subscriptions report ready immediately: a guest's stdin and files are in memory or on local
disk and never block.

Layouts are WASI preview 1's (little endian): a subscription is 48 bytes (userdata u64 at 0,
tag u8 at 8, then clock id u32 at 16, timeout u64 at 24, precision u64 at 32, flags u16 at 40;
or the descriptor u32 at 16); an event is 32 bytes (userdata u64 at 0, errno u16 at 8, type u8
at 10, bytes available u64 at 16, flags u16 at 24).
"""

from __future__ import annotations

import struct
import time

import wasmtime

from wasmfleet_agent.runtime import sandbox

__all__ = ["define"]

_SUBSCRIPTION = 48
_EVENT = 32
_TAG_CLOCK = 0
_CLOCK_REALTIME = 0
_ABSTIME = 1
_ERRNO_SUCCESS = 0
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_MAX_SUBSCRIPTIONS = 4096


def define(linker: wasmtime.Linker) -> None:
    """Adds the agent's host functions to ``linker`` (shadowing WASI's where named alike)."""
    i32 = wasmtime.ValType.i32()
    linker.define_func(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        wasmtime.FuncType([i32, i32, i32, i32], [i32]),
        _poll_oneoff,
        access_caller=True,
    )


def _poll_oneoff(
    caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, count_out: int
) -> int:
    if count <= 0 or count > _MAX_SUBSCRIPTIONS:
        return _ERRNO_INVAL
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return _ERRNO_FAULT
    size = memory.data_len(caller)
    end = in_ptr + count * _SUBSCRIPTION
    if in_ptr < 0 or end > size or out_ptr < 0 or out_ptr + count * _EVENT > size:
        return _ERRNO_FAULT
    data = bytes(memory.read(caller, in_ptr, end))
    ready: list[bytes] = []
    earliest: tuple[float, int] | None = None
    for index in range(count):
        base = index * _SUBSCRIPTION
        userdata, tag = struct.unpack_from("<QB", data, base)
        if tag == _TAG_CLOCK:
            clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", data, base + 16)
            wait = _relative_wait(clock_id, timeout, flags)
            if earliest is None or wait < earliest[0]:
                earliest = (wait, userdata)
        else:
            ready.append(struct.pack("<QHBxxxxxQH6x", userdata, _ERRNO_SUCCESS, tag, 0, 0))
    if not ready and earliest is not None:
        wait, userdata = earliest
        deadline = sandbox.current_deadline()
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        if wait > 0:
            if not sandbox.may_block():
                sandbox.stop_run("budget")
                raise wasmtime.WasmtimeError("a try may not sleep")
            time.sleep(wait)
        ready.append(struct.pack("<QHBxxxxxQH6x", userdata, _ERRNO_SUCCESS, _TAG_CLOCK, 0, 0))
    events = b"".join(ready)
    memory.write(caller, events, out_ptr)
    memory.write(caller, struct.pack("<I", len(ready)), count_out)
    return _ERRNO_SUCCESS


def _relative_wait(clock_id: int, timeout: int, flags: int) -> float:
    if not flags & _ABSTIME:
        return timeout / 1e9
    if clock_id == _CLOCK_REALTIME:
        now = time.time_ns()
    else:  # the guest's monotonic clock, which starts at zero with its run
        now = time.monotonic_ns() - sandbox.guest_monotonic_origin()
    return max(0, timeout - now) / 1e9
