"""`sockets.bind_group`: sockets of one ``SO_REUSEPORT`` group share the connections."""

from __future__ import annotations

import select
import socket

from wasmfleet_agent.sockets import bind_group


def test_a_group_shares_one_port_and_the_kernel_spreads_connections_over_it() -> None:
    group = bind_group(None, "127.0.0.1", 0, 2)
    clients: list[socket.socket] = []
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(ports) == 1
        port = ports.pop()
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = [0, 0]
        while sum(accepted) < 64:
            ready, _, _ = select.select(group, [], [], 5)
            assert ready, f"only {sum(accepted)} of 64 connections accepted"
            for sock in ready:
                connection, _ = sock.accept()
                connection.close()
                accepted[group.index(sock)] += 1
        # 64 connections hashed over two sockets: both get some (all on one: odds of 2**-63)
        assert min(accepted) > 0, accepted
    finally:
        for sock in [*clients, *group]:
            sock.close()


def test_one_socket_is_a_plain_listener() -> None:
    (only,) = bind_group(None, "127.0.0.1", 0, 1)
    try:
        assert only.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        only.close()
