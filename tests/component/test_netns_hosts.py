"""Test hosts in network namespaces: own addresses, reachable from the run, removed after."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest

from wasmfleet_agent.sockets import bind_in_namespace
from wasmfleet_harness.netns import NetworkHosts, netns_available

pytestmark = pytest.mark.skipif(
    not netns_available(), reason="creating network namespaces needs root and iproute2"
)


def test_a_socket_bound_inside_a_host_namespace_is_reachable_at_the_host_address() -> None:
    with NetworkHosts() as hosts:
        first, second = hosts.add(), hosts.add()
        assert first.address != second.address
        listener = bind_in_namespace(first.netns, first.address)
        listener.setblocking(True)
        port = listener.getsockname()[1]

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"from the namespace")

        server = threading.Thread(target=answer)
        server.start()
        with socket.create_connection((first.address, port), timeout=5) as client:
            assert client.recv(64) == b"from the namespace"
        server.join(timeout=5)
        listener.close()
        # The address lives only in that namespace, not in the one the test runs in.
        with pytest.raises(OSError, match="assign requested address"):
            bind_in_namespace(None, first.address)
        names = [h.name for h in hosts.hosts]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
