"""What crosses between the agent and its request workers: orders, counts, metrics."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec
from wasmfleet_agent.server.http import HttpLimits
from wasmfleet_agent.server.inflight import InFlightCells
from wasmfleet_agent.server.metrics import AgentMetrics, snapshot
from wasmfleet_agent.server.orders import (
    ServeOrder,
    read_message,
    receive_fd,
    send_fd,
    write_message,
)


def _order() -> ServeOrder:
    return ServeOrder(
        key="team/web-abc",
        name="team/web",
        module_path=Path("/var/lib/wasmfleet/modules/sha256/ab"),
        digest="sha256:" + "a" * 64,
        fuel=True,
        spec=SandboxSpec(
            args=("web", "--flag"),
            env=(("GREETING", "hé=llo"), ("EMPTY", "")),
            preopens=(Preopen(Path("/srv/config"), "/config"), Preopen(Path("/t"), "/t", True)),
            memory_limit=16 << 20,
            fuel=1000,
        ),
        limits=RunLimits(deadline_seconds=2.5, max_output=1 << 20),
        http=HttpLimits(max_concurrency=7, max_request_body=65536),
        server_software="wasmfleet-agent/0.1",
    )


def test_an_order_survives_the_wire() -> None:
    order = _order()
    left, right = socket.socketpair()
    with left, right:
        write_message(left, {"op": "serve", "order": order.to_json()})
        message = read_message(right)
    assert ServeOrder.from_json(message["order"]) == order


def test_a_socket_follows_its_message_without_being_read_ahead() -> None:
    left, right = socket.socketpair()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    with left, right, listener:
        write_message(left, {"op": "serve", "fd": True})
        send_fd(left, listener.fileno())
        write_message(left, {"op": "next"})
        assert read_message(right)["fd"] is True
        fd = receive_fd(right)
        with socket.socket(fileno=fd) as received:
            assert received.getsockname() == listener.getsockname()
        assert read_message(right) == {"op": "next"}


def test_a_closed_channel_is_an_eof() -> None:
    left, right = socket.socketpair()
    left.close()
    with right, pytest.raises(EOFError):
        read_message(right)


def test_in_flight_counts_add_up_across_workers_and_reset() -> None:
    table = InFlightCells.create(slots=4, workers=3)
    try:
        mine, theirs = table.service(2, 0), table.service(2, 1)
        mine.add(1)
        theirs.add(2)
        table.service(1, 2).add(5)  # another service
        assert mine.total() == theirs.total() == table.total(2) == 3
        table.reset_worker(1)  # worker 1 died with two requests in flight
        assert mine.total() == 1
        table.reset_slot(1)
        assert table.total(1) == 0
        with pytest.raises(ValueError, match="no cell"):
            table.service(4, 0)
    finally:
        table.close()


def test_metrics_of_workers_are_summed_into_one_family_each() -> None:
    agent, one, two = AgentMetrics(), AgentMetrics(), AgentMetrics()
    agent.pulls.labels("pulled").inc()
    one.requests.labels("team/web", "200").inc(3)
    two.requests.labels("team/web", "200").inc(4)
    two.requests.labels("team/web", "500").inc()
    one.request_seconds.labels("team/web").observe(0.0002)
    two.request_seconds.labels("team/web").observe(0.3)
    text = agent.render([snapshot(one.registry), snapshot(two.registry)]).decode()
    assert 'wasmfleet_agent_requests_total{code="200",service="team/web"} 7.0' in text
    assert 'wasmfleet_agent_requests_total{code="500",service="team/web"} 1.0' in text
    assert 'wasmfleet_agent_pulls_total{result="pulled"} 1.0' in text
    assert 'wasmfleet_agent_request_duration_seconds_count{service="team/web"} 2.0' in text
    assert 'request_duration_seconds_bucket{le="0.00025",service="team/web"} 1.0' in text
    assert text.count("# TYPE wasmfleet_agent_requests_total counter") == 1
