"""What a request-worker process is told to serve, and the wire format between the processes.

The agent's main process decides what runs; a `serving.Server` serves it. A `ServeOrder`
carries everything needed to serve one module on a listening socket handed over alongside:
where the module file is, the sandbox spec, the limits, and, while it stays in the process
that loaded it, the machine code itself. A worker process (`workers`) gets the order without
the machine code and loads it from the shared compiled-code cache.

Messages are JSON, framed by a 4-byte big-endian length. A listening socket travels as
``SCM_RIGHTS`` on a one-byte message that follows the order announcing it; the reader reads
exact lengths, so the descriptor is never consumed by a read-ahead.
"""

from __future__ import annotations

import array
import asyncio
import json
import socket
import struct
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from wasmfleet_agent.runtime.engine import ModuleSlot
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec
from wasmfleet_agent.server.http import HttpLimits

__all__ = [
    "SERVER_SOFTWARE",
    "ServeOrder",
    "read_message",
    "read_message_async",
    "receive_fd",
    "send_fd",
    "write_message",
]

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 << 20

SERVER_SOFTWARE = f"wasmfleet-agent/{metadata.version('wasmfleet')}"
"""What the agent tells a module it is (CGI ``SERVER_SOFTWARE``)."""


@dataclass(frozen=True)
class ServeOrder:
    """One module to serve, under ``key``; ``name`` labels its metrics and logs."""

    key: str
    name: str
    module_path: Path
    digest: str
    fuel: bool
    spec: SandboxSpec
    limits: RunLimits
    http: HttpLimits
    server_software: str = SERVER_SOFTWARE
    module: ModuleSlot | None = field(default=None, compare=False, repr=False)
    """The machine code, when the order is served in the process that loaded it; never sent
    to another process (which loads it by ``module_path`` and ``digest``)."""

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "key": self.key,
            "name": self.name,
            "module_path": str(self.module_path),
            "digest": self.digest,
            "fuel": self.fuel,
            "spec": {
                "args": list(spec.args),
                "env": [list(pair) for pair in spec.env],
                "preopens": [[str(p.host), p.guest, p.writable] for p in spec.preopens],
                "memory_limit": spec.memory_limit,
                "fuel": spec.fuel,
                "outbound": list(spec.outbound),
            },
            "limits": asdict(self.limits),
            "http": asdict(self.http),
            "server_software": self.server_software,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServeOrder:
        spec = data["spec"]
        return cls(
            key=data["key"],
            name=data["name"],
            module_path=Path(data["module_path"]),
            digest=data["digest"],
            fuel=bool(data["fuel"]),
            spec=SandboxSpec(
                args=tuple(spec["args"]),
                env=tuple((str(k), str(v)) for k, v in spec["env"]),
                preopens=tuple(
                    Preopen(host=Path(host), guest=guest, writable=bool(writable))
                    for host, guest, writable in spec["preopens"]
                ),
                memory_limit=int(spec["memory_limit"]),
                fuel=spec["fuel"],
                outbound=tuple(str(origin) for origin in spec.get("outbound", ())),
            ),
            limits=RunLimits(**data["limits"]),
            http=HttpLimits(**data["http"]),
            server_software=data["server_software"],
        )


def encode(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload)) + payload


def write_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Sends one message on a blocking socket."""
    sock.sendall(encode(message))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the other process closed the channel")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes is over the limit")
    return int(size)


def read_message(sock: socket.socket) -> dict[str, Any]:
    """Reads one message from a blocking socket; EOFError when the peer is gone."""
    size = _size(_read_exactly(sock, _HEADER.size))
    message: dict[str, Any] = json.loads(_read_exactly(sock, size))
    return message


async def read_message_async(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Reads one message from a stream (asyncio.IncompleteReadError when the peer is gone)."""
    size = _size(await reader.readexactly(_HEADER.size))
    message: dict[str, Any] = json.loads(await reader.readexactly(size))
    return message


def send_fd(sock: socket.socket, fd: int) -> None:
    socket.send_fds(sock, [b"F"], [fd])


def receive_fd(sock: socket.socket) -> int:
    """Receives the descriptor sent by `send_fd` (a one-byte message carrying it)."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    if data != b"F":
        raise ValueError("expected a descriptor on the channel")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if len(fds) != 1:
        for extra in fds:
            socket.close(extra)
        raise ValueError("expected exactly one descriptor on the channel")
    return fds[0]
