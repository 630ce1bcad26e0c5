"""Listening sockets for served modules, optionally inside another network namespace.

On a real node the agent listens on the node's address. In the local environment each agent
stands for a separate host with its own address inside a network namespace (Kubernetes
refuses loopback endpoints); the agent stays in the root namespace to reach the API server
and opens only its listening sockets inside the host's namespace.

Worker processes (`server.workers`) each accept on a socket of their own: `bind_group` binds
several sockets to one address and port with ``SO_REUSEPORT``, and the kernel spreads new
connections over them by a hash of each connection's addresses. One socket accepted on by
every worker would let whichever worker woke first take a whole burst of connections (asyncio
accepts up to its backlog at once), leaving the others idle for those connections' lifetime.
"""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

__all__ = ["bind_group", "bind_in_namespace"]

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns failed: {os.strerror(errno)}")


def bind_in_namespace(netns: Path | None, address: str, port: int = 0) -> socket.socket:
    """A listening TCP socket bound to ``address`` inside ``netns`` (None: this namespace).

    Switches only the calling thread's namespace, and switches it back before returning; the
    socket stays in the namespace it was created in.
    """
    return bind_group(netns, address, port, 1)[0]


def bind_group(netns: Path | None, address: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address and port inside ``netns``, in one
    ``SO_REUSEPORT`` group when there are several (port 0: the first one's port)."""
    if netns is None:
        return _listen_group(address, port, count)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return _listen_group(address, port, count)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _listen_group(address: str, port: int, count: int) -> list[socket.socket]:
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(_listen(address, port, reuse_port=count > 1))
            port = int(group[0].getsockname()[1])
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def _listen(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    # an IPv6 literal (``serve --host ::1``) needs an IPv6 socket; anything else is IPv4
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
