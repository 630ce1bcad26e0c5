"""Worker processes: requests on every core, a dead worker replaced while the others answer.

``wasmfleet-agent serve --processes N`` runs N request workers, each accepting on a socket of
its own in one ``SO_REUSEPORT`` group; the agent process keeps the sockets, the orders and the
metrics together.
The probe's whole HTTP contract is also run against two workers in ``test_agent_serve``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmfleet_harness.agent import ServedModule
from wasmfleet_harness.processes import Workspace, wait_until

HELLO = "Hello from a C Wasm microservice!"


def _workers(agent: ServedModule) -> set[int]:
    """The pids of the agent's request workers (its children running the worker module)."""
    pid = agent.process.pid
    assert pid is not None
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"wasmfleet_agent.server.worker" in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status), response.read().decode()


def _served(agent: ServedModule) -> int:
    text = agent.metrics()
    match = re.search(r'^wasmfleet_agent_requests_total\{code="200",[^}]*\} ([\d.]+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


@contextlib.contextmanager
def _started(
    workspace: Workspace, wasm_modules: dict[str, Path], name: str, *, processes: int
) -> Iterator[ServedModule]:
    """hello-c served with ``processes`` workers, returned once every worker runs."""
    served = ServedModule(
        workspace.subdir(f"serve-{name}"),
        wasm_modules["hello-c"],
        extra=["--processes", str(processes)],
        name=f"agent-{name}",
    )
    with served:
        wait_until(lambda: len(_workers(served)) == processes, timeout=10)
        yield served


@pytest.fixture
def two_workers(workspace: Workspace, wasm_modules: dict[str, Path]) -> Iterator[ServedModule]:
    with _started(workspace, wasm_modules, "workers", processes=2) as served:
        yield served


def test_a_killed_worker_is_replaced_and_the_other_keeps_answering(
    two_workers: ServedModule,
) -> None:
    first, second = sorted(_workers(two_workers))
    os.kill(first, signal.SIGKILL)
    # Every listening socket lives on in the agent: connections the kernel gives the dead
    # worker's wait in its backlog for the replacement; nothing is refused.
    for _ in range(40):
        assert _get(two_workers.url + "/") == (200, HELLO + "\n")
    wait_until(
        lambda: len(_workers(two_workers) - {first, second}) == 1,
        timeout=20,
        message=lambda: "the worker was not started again\n" + two_workers.process.log_tail(),
    )
    assert "starting it again" in two_workers.process.log_path.read_text()

    # Now the replacement must answer alone: it was handed the service again.
    os.kill(second, signal.SIGKILL)
    for _ in range(40):
        assert _get(two_workers.url + "/") == (200, HELLO + "\n")
    wait_until(lambda: len(_workers(two_workers)) == 2, timeout=20)
    two_workers.process.check_alive()


def _listening_sockets(pid: int) -> set[str]:
    """The ``socket:[inode]`` names among the descriptors of process ``pid``."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:"):
                found.add(target)
    return found


def test_each_worker_accepts_on_a_socket_of_its_own(two_workers: ServedModule) -> None:
    first, second = sorted(_workers(two_workers))
    port = two_workers.port
    listening = _listening_inodes(port)
    assert len(listening) == 2, "one listening socket per worker, on the same port"
    mine = [_listening_sockets(pid) & listening for pid in (first, second)]
    assert all(len(sockets) == 1 for sockets in mine)
    assert mine[0] != mine[1]


def _listening_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            found.add(f"socket:[{inode}]")
    return found


def test_metrics_sum_what_every_worker_served(two_workers: ServedModule) -> None:
    before = _served(two_workers)
    for _ in range(60):
        assert _get(two_workers.url + "/")[0] == 200
    assert _served(two_workers) == before + 60
    text = two_workers.metrics()
    # one family per metric, whatever the number of processes
    assert text.count("# TYPE wasmfleet_agent_requests_total counter") == 1
    assert text.count("# TYPE wasmfleet_agent_request_duration_seconds histogram") == 1


def test_workers_stop_with_the_agent(workspace: Workspace, wasm_modules: dict[str, Path]) -> None:
    with _started(workspace, wasm_modules, "workers-stop", processes=3) as served:
        pids = _workers(served)
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15)


def test_a_killed_agent_takes_its_workers_with_it(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    with _started(workspace, wasm_modules, "workers-orphan", processes=2) as served:
        pids = _workers(served)
        assert served.process.pid is not None
        os.kill(served.process.pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15)
