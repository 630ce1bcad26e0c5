"""Listening sockets for served modules, optionally inside another network namespace.

On a real node the agent listens on the node's address. In the local environment each agent
stands for a separate host with its own address inside a network namespace (Kubernetes
refuses loopback endpoints); the agent stays in the root namespace to reach the API server
and opens only its listening sockets inside the host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

__all__ = ["bind_in_namespace"]

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
    if netns is None:
        return _listen(address, port)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return _listen(address, port)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _listen(address: str, port: int) -> socket.socket:
    # an IPv6 literal (``serve --host ::1``) needs an IPv6 socket; anything else is IPv4
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
