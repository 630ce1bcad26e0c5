"""wasi:http/proxy components, served per request by the agent's own host of the proxy world.

Two real components built from source: ``hello-http-component`` (Rust, no_std, the canonical ABI
by hand) and ``http-probe-python`` (Python, componentize-py), whose paths each exercise a part
of the host (see its ``app.py``). What the probe sees is compared with what it sees under native
``wasmtime serve`` (wasmtime's own wasi:http host), side by side; where the agent differs on
purpose (outbound requests refused, an unfinished body refused, limits), the test says so.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import json
import operator
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmfleet_agent.runtime.engine import Runtime
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.link import STREAM_AFTER
from wasmfleet_agent.runtime.sandbox import Preopen, RunLimits, SandboxSpec
from wasmfleet_agent.runtime.service import HttpModule, IncomingRequest, check_fits
from wasmfleet_harness.agent import ServedModule, wasmtime_cli
from wasmfleet_harness.processes import ManagedProcess, Workspace, free_port, wait_until

DEADLINE = 1.0
SLACK = 0.5
MAX_RESPONSE = 1 << 20

Response = tuple[int, list[tuple[str, str]], bytes]


def _call(
    base: str,
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    body: bytes | None = None,
) -> Response:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


class NativeServe:
    """``wasmtime serve`` (the wasmtime CLI of the dev extra) on a free loopback port."""

    def __init__(self, workdir: Path, component: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            str(wasmtime_cli()),
            "serve",
            "-S",
            "cli=y",
            "--addr",
            f"127.0.0.1:{self.port}",
            str(component),
        ]
        self.process = ManagedProcess("wasmtime-serve", argv, log_path=workdir / "native.log")

    def start(self) -> None:
        self.process.start()
        wait_until(
            self._ready,
            timeout=120,
            message=lambda: f"wasmtime serve not ready\n{self.process.log_tail()}",
        )

    def _ready(self) -> bool:
        self.process.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def probe(workspace: Workspace, wasm_modules: dict[str, Path]) -> Iterator[ServedModule]:
    served = ServedModule(
        workspace.subdir("wasi-http-probe"),
        wasm_modules["http-probe-python"],
        extra=[
            "--timeout",
            f"{int(DEADLINE * 1000)}ms",
            "--max-response",
            str(MAX_RESPONSE),
            "--memory",
            "64Mi",
            "--env",
            "GIVEN=yes",
        ],
        name="wasi-http-probe",
    )
    with served:
        yield served


@pytest.fixture(scope="module")
def native(workspace: Workspace, wasm_modules: dict[str, Path]) -> Iterator[NativeServe]:
    server = NativeServe(workspace.subdir("wasi-http-native"), wasm_modules["http-probe-python"])
    server.start()
    try:
        yield server
    finally:
        server.process.stop()


def _echo(base: str, **request: object) -> dict[str, object]:
    status, _, body = _call(base, **request)  # type: ignore[arg-type]
    assert status == 200, body
    seen: dict[str, object] = json.loads(body)
    # field names are case-insensitive; hyper lowercases them, the agent keeps them as sent
    headers = seen.pop("headers")
    assert isinstance(headers, list)
    seen["headers"] = sorted((name.lower(), value) for name, value in headers)
    authority = seen.pop("authority")
    assert authority == base.removeprefix("http://"), "the authority is the Host the client sent"
    return seen


ECHO_REQUESTS = {
    "get-with-query": {"path": "/echo/a%20b/%7Efile?x=1&y=%2F&x=2"},
    "post-body": {
        "path": "/echo/upload",
        "method": "POST",
        "body": bytes(range(256)) * 800,
        "headers": [("Content-Type", "application/octet-stream")],
    },
    "repeated-headers": {
        "path": "/echo",
        "headers": [("X-Many", "one"), ("x-many", "two"), ("X-Case", "MiXeD value")],
    },
    "put": {"path": "/echo", "method": "PUT", "body": b"{}"},
    "patch": {"path": "/echo", "method": "PATCH", "body": b"-"},
    "delete": {"path": "/echo?id=7", "method": "DELETE"},
    "options": {"path": "/echo", "method": "OPTIONS"},
    "extension-method": {"path": "/echo", "method": "PURGE"},
}


@pytest.mark.parametrize("request_", ECHO_REQUESTS.values(), ids=ECHO_REQUESTS.keys())
def test_the_guest_sees_each_request_as_it_does_under_native_wasmtime_serve(
    probe: ServedModule, native: NativeServe, request_: dict[str, object]
) -> None:
    headers = [("User-Agent", "wasmfleet-test"), *request_.get("headers", [])]  # type: ignore[misc]
    ours = _echo(probe.url, **{**request_, "headers": headers})
    theirs = _echo(native.url, **{**request_, "headers": headers})
    assert ours == theirs
    assert ours["method"] == request_.get("method", "GET")
    assert ours["path_with_query"] == request_["path"], "the target exactly as sent"
    assert ours["scheme"] == "http"
    assert ours["append_to_request_headers"] == "HeaderError_Immutable"
    assert ("user-agent", "wasmfleet-test") in ours["headers"]  # type: ignore[operator]
    assert not any(name == "host" for name, _ in ours["headers"]), "Host is the authority"  # type: ignore[attr-defined]


_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
_segments = st.lists(
    st.one_of(
        st.text(_PATH_CHARS, min_size=1, max_size=12),
        st.binary(min_size=1, max_size=3).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    ),
    max_size=4,
)
_requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"]),
        "path": st.builds(
            lambda parts, query: "/echo/" + "/".join(parts) + (f"?{query}" if query else ""),
            _segments,
            st.one_of(st.none(), st.text(_PATH_CHARS + "/?", max_size=20)),
        ),
        "headers": st.lists(
            st.tuples(
                st.text(_TOKEN_CHARS, min_size=1, max_size=10).map(lambda n: "X-" + n),
                st.text(
                    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
                ),
            ),
            max_size=6,
        ),
        "body": st.one_of(
            st.binary(max_size=2048),
            st.integers(0, 300_000).map(lambda n: bytes(i % 251 for i in range(n))),
        ),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_=_requests)
def test_any_request_is_seen_and_answered_alike_by_the_agent_and_native_wasmtime_serve(
    probe: ServedModule, native: NativeServe, request_: dict[str, object]
) -> None:
    """A property over methods, targets, header sets and body sizes: the guest sees the same
    request and sets the same response (status, its headers, its body) under both hosts."""
    answers = []
    for base in (probe.url, native.url):
        status, headers, body = _call(base, **request_)  # type: ignore[arg-type]
        seen = json.loads(body)
        seen["headers"] = sorted((name.lower(), value) for name, value in seen["headers"])
        seen.pop("authority")
        guest_set = sorted(
            (name.lower(), value) for name, value in headers if name.lower() == "content-type"
        )
        answers.append((status, guest_set, seen))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200


def test_response_status_and_repeated_headers_pass_through_as_native_ones_do(
    probe: ServedModule, native: NativeServe
) -> None:
    for base in (probe.url, native.url):
        status, headers, body = _call(base, "/headers")
        assert (status, body) == (200, b"headers\n")
        lowered = [(name.lower(), value) for name, value in headers]
        assert [v for n, v in lowered if n == "x-repeated"] == ["one", "two"]
        assert ("x-mixed-case", "Value") in lowered
        assert ("content-type", "text/plain") in lowered
        for code in (201, 301, 404, 418, 503):
            assert _call(base, f"/status?{code}")[0] == code


def test_the_fields_api_refuses_forbidden_and_malformed_fields_as_native_does(
    probe: ServedModule, native: NativeServe
) -> None:
    ours = json.loads(_call(probe.url, "/refused")[2])
    assert ours == json.loads(_call(native.url, "/refused")[2])
    assert ours == {
        "connection": "HeaderError_Forbidden",
        "bad name": "HeaderError_InvalidSyntax",
        "x-ok": "HeaderError_InvalidSyntax",
    }


def test_the_rust_component_answers_like_the_wagi_hello_module(
    workspace: Workspace, wasm_modules: dict[str, Path]
) -> None:
    served = ServedModule(
        workspace.subdir("wasi-http-hello"), wasm_modules["hello-http-component"], name="hello"
    )
    with served:
        for _ in range(3):  # a fresh instance each time
            status, headers, body = _call(served.url, "/anything?at=all")
            assert (status, body) == (200, b"Hello from a Rust Wasm microservice!\n")
            assert ("Content-Type", "text/plain") in headers


class _Listener:
    """A TCP listener on loopback that counts the connections it is offered."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def test_an_outbound_request_is_denied_by_the_spec_error_and_never_leaves_the_agent(
    probe: ServedModule,
) -> None:
    listener = _Listener()
    try:
        status, _, body = _call(probe.url, f"/outbound?http://127.0.0.1:{listener.port}/x")
    finally:
        listener.close()
    assert status == 200
    assert json.loads(body) == {"error": "ErrorCode_HttpRequestDenied"}
    assert listener.accepted == 0


def test_a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline(probe: ServedModule) -> None:
    started = time.monotonic()
    status, headers, _ = _call(probe.url, "/sleep?10000")
    seconds = time.monotonic() - started
    assert status == 504
    assert dict(headers).get("x-wasmfleet-error-id")
    assert DEADLINE <= seconds < DEADLINE + SLACK
    assert _call(probe.url, "/sleep?10")[0] == 200, "a short sleep is served"


def _logged(served: ServedModule, *words: str) -> None:
    wait_until(
        lambda: any(
            all(w in line for w in words) for line in served.process.log_tail(400).split("\n")
        ),
        timeout=10,
        message=lambda: f"no log line with {words}\n{served.process.log_tail()}",
    )


def test_a_response_body_past_the_cap_is_cut_short_and_one_within_it_is_whole(
    probe: ServedModule,
) -> None:
    """A body this long streams (it is past `STREAM_AFTER`): its status is out before the cap
    is reached, so the client learns of it by the body ending short of its last chunk."""
    status, _, body = _call(probe.url, f"/big?{MAX_RESPONSE}")
    assert (status, len(body)) == (200, MAX_RESPONSE)
    with pytest.raises(http.client.IncompleteRead):
        _call(probe.url, f"/big?{MAX_RESPONSE + 1}")
    _logged(probe, "request failed after its response started", "module response too large")


def _raw_request(base: str, head: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(head)
    return connection


def _read_until(connection: socket.socket, received: bytearray, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, f"gave up with {len(received)} bytes received"
        data = connection.recv(1 << 16)
        assert data, f"the connection closed after {len(received)} bytes"
        received += data


def _dechunk(raw: bytes) -> bytes:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]


@pytest.mark.parametrize("host", ["agent", "native"])
def test_a_request_body_streams_to_the_guest_and_back_while_the_client_sends_it(
    probe: ServedModule, native: NativeServe, host: str
) -> None:
    """The guest echoes each part of the body as it reads it: the client sends half its body
    and gets that half back before it sends the rest, as under native ``wasmtime serve``."""
    base = probe.url if host == "agent" else native.url
    half = 256 << 10
    head = (
        f"POST /stream-echo HTTP/1.1\r\nHost: {base.removeprefix('http://')}\r\n"
        f"Content-Length: {2 * half}\r\nConnection: close\r\n\r\n"
    ).encode()
    connection = _raw_request(base, head + b"x" * half)
    received = bytearray()
    with connection:
        # "x" is no hex digit: every one counted is body, not chunk framing
        _read_until(connection, received, lambda: received.count(b"x") >= half)
        assert b"y" not in received.partition(b"\r\n\r\n")[2]
        connection.sendall(b"y" * half)
        _read_until(connection, received, lambda: received.endswith(b"\r\n0\r\n\r\n"))
    assert received.startswith(b"HTTP/1.1 200")
    assert _dechunk(bytes(received)) == b"x" * half + b"y" * half


@pytest.mark.parametrize("host", ["agent", "native"])
def test_lines_a_guest_flushes_before_it_waits_reach_the_client_as_they_are_written(
    probe: ServedModule, native: NativeServe, host: str
) -> None:
    base = probe.url if host == "agent" else native.url
    pause = 0.2
    connection = _raw_request(base, b"GET /ticks?4&200 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = bytearray()
    arrived = []
    with connection:
        for index in range(4):
            line = b"tick %d\n" % index
            _read_until(connection, received, functools.partial(operator.contains, received, line))
            arrived.append(time.monotonic())
    assert received.startswith(b"HTTP/1.1 200")
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert all(gap > pause / 2 for gap in gaps), f"lines came together: {gaps}"


def test_a_streamed_response_whose_run_fails_is_cut_short_and_logged(probe: ServedModule) -> None:
    with pytest.raises(http.client.IncompleteRead):
        _call(probe.url, "/big-then-raise?300000")
    _logged(probe, "request failed after its response started", "module failed: trap")
    assert _call(probe.url, "/status?200")[0] == 200


def test_a_request_body_past_the_limit_while_the_guest_reads_it_is_413(
    probe: ServedModule,
) -> None:
    """The body has no length: the limit is found while the guest reads it (as under the
    agent's limit of 1 MiB), and the answer is 413 whatever the guest made of the short read.
    A response that had started by then is cut short instead."""
    body = b"z" * ((1 << 20) + 1)
    for path, expected in (("/echo", 413), ("/stream-echo", None)):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        connection = _raw_request(probe.url, head)
        received = bytearray()
        with connection:
            try:
                for start in range(0, len(body), 1 << 16):
                    part = body[start : start + (1 << 16)]
                    connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                connection.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the agent may close before the client is done sending
            connection.settimeout(10)
            with contextlib.suppress(ConnectionResetError):  # a cut connection may be reset
                while data := connection.recv(1 << 16):
                    received += data
        if expected is not None:
            assert received.startswith(b"HTTP/1.1 413"), bytes(received[:200])
        else:
            assert received.startswith(b"HTTP/1.1 200")
            assert not received.endswith(b"\r\n0\r\n\r\n"), "the body was ended as if whole"
    assert _call(probe.url, "/status?200")[0] == 200


def test_a_guest_sees_only_its_own_environment_and_no_files(probe: ServedModule) -> None:
    assert json.loads(_call(probe.url, "/env")[2]) == {"GIVEN": "yes"}
    assert _call(probe.url, "/file")[2] == b"no file: FileNotFoundError\n"


@pytest.mark.parametrize(
    ("path", "status", "text", "logged"),
    [
        ("/loop", 504, b"module timed out", "deadline exceeded"),
        ("/raise", 500, b"module failed", "trap"),
        ("/alloc?200", 500, b"module failed", "trap"),
        ("/noresponse", 500, b"module failed", "without setting a response"),
        ("/error", 500, b"module failed", "answered with error internal-error('probe')"),
        ("/unfinished", 502, b"module wrote an invalid response", "its body was not finished"),
    ],
    ids=[
        "busy-loop",
        "exception",
        "past-memory-limit",
        "no-response",
        "error-code",
        "unfinished-body",
    ],
)
def test_a_guest_that_fails_gets_a_5xx_with_an_error_id_and_the_next_request_is_served(
    probe: ServedModule, path: str, status: int, text: bytes, logged: str
) -> None:
    got, headers, body = _call(probe.url, path)
    error_id = dict(headers).get("x-wasmfleet-error-id")
    assert (got, body.split(b" (")[0]) == (status, text)
    assert error_id is not None
    wait_until(
        lambda: any(
            error_id in line and logged in line for line in probe.process.log_tail(400).splitlines()
        ),
        timeout=10,
        message=lambda: f"no log line for {error_id}\n{probe.process.log_tail()}",
    )
    assert _call(probe.url, "/status?200")[0] == 200


def test_what_a_guest_prints_goes_to_the_agents_log(probe: ServedModule) -> None:
    assert _call(probe.url, "/print")[0] == 200
    wait_until(
        lambda: "to stderr from the probe" in probe.process.log_tail(400),
        timeout=10,
        message=probe.process.log_tail,
    )


# ---- what the agent refuses --------------------------------------------------------------------


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(tmp_path / "compiled") as value:
        yield value


def test_a_proxy_component_is_refused_as_a_job_and_with_directories(
    runtime: Runtime, wasm_modules: dict[str, Path], tmp_path: Path
) -> None:
    compiled = runtime.load(wasm_modules["hello-http-component"])
    assert compiled.world == "wasi:http/proxy@0.2.12"
    check_fits(compiled, SandboxSpec(), job=False)
    with pytest.raises(SandboxConfigError, match="answers HTTP requests: a job runs"):
        check_fits(compiled, SandboxSpec(), job=True)
    granted = SandboxSpec(preopens=(Preopen(tmp_path, "/data"),))
    with pytest.raises(SandboxConfigError, match="gives those no directories yet"):
        check_fits(compiled, granted, job=False)


def _proxy_component(*, function: str = "handle", imports: str = "wasi:io/error@0.2.0") -> bytes:
    import wasmtime

    return bytes(
        wasmtime.wat2wasm(f"""
    (component
      (import "{imports}" (instance))
      (core module $m (func (export "f")))
      (core instance $i (instantiate $m))
      (func $f (canon lift (core func $i "f")))
      (instance $inst (export "{function}" (func $f)))
      (export "wasi:http/incoming-handler@0.2.0" (instance $inst))
    )""")
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_proxy_component(function="serve"), "exports wasi:http/incoming-handler@0.2.0 without"),
        (
            _proxy_component(imports="fermyon:spin/key-value@2.0.0"),
            "imports fermyon:spin/key-value@2.0.0, which this agent does not provide to "
            "wasi:http/proxy components",
        ),
        (
            _proxy_component(imports="wasi:http/types@0.3.0"),
            "imports wasi:http/types@0.3.0, which this agent does not provide",
        ),
    ],
    ids=["no-handle", "unknown-package", "wasi-0.3"],
)
def test_a_proxy_component_the_agent_cannot_serve_is_refused_at_load(
    runtime: Runtime, tmp_path: Path, data: bytes, reason: str
) -> None:
    path = tmp_path / "bad.wasm"
    path.write_bytes(data)
    with pytest.raises(ModuleLoadError, match=reason):
        runtime.load(path)


class _RecordingLink:
    """A client connection that keeps what a run sends it (the server's `ClientLink` is shown
    over real sockets above; this one lets a test see which run streamed)."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.sent = bytearray()

    def receive(self, timeout: float | None) -> bytes:
        return b""

    def start(self, status: int, headers: list[tuple[str, str]], timeout: float | None) -> None:
        self.started.append(status)

    def send(self, data: bytes, timeout: float | None) -> None:
        self.sent += data


def test_an_inline_try_that_would_stream_stops_and_the_run_on_a_thread_streams(
    runtime: Runtime, wasm_modules: dict[str, Path]
) -> None:
    """A try (on the event loop's thread) must not wait on the client: one whose response
    grows past what is held is stopped untouched, and the run again on a thread streams."""
    compiled = runtime.load(wasm_modules["http-probe-python"])
    module = HttpModule("probe", compiled, SandboxSpec(), RunLimits(deadline_seconds=10))
    link = _RecordingLink()
    size = 3 * STREAM_AFTER
    request = IncomingRequest(
        method="GET",
        path="/big",
        query=str(size),
        headers=(("Host", "probe"),),
        body=b"",
        remote_addr="127.0.0.1",
        server_name="probe",
        server_port=80,
        request_uri=f"/big?{size}",
        link=link,
    )
    assert module.repeatable
    assert module.attempt(request, 10.0) is None, "the try must stop, not stream"
    assert (link.started, bytes(link.sent)) == ([], b"")
    outcome = module.execute(request)
    assert outcome.error is None, outcome.error
    assert link.started == [200]
    assert bytes(link.sent) + outcome.body == b"x" * size
    assert len(link.sent) >= STREAM_AFTER
