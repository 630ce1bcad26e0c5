"""The WAGI/CGI conventions: variables in, response out."""

from __future__ import annotations

import pytest

from wasmfleet_agent.runtime.cgi import CgiError, parse_output, request_variables, reserved


def _vars(**overrides: object) -> dict[str, str]:
    arguments: dict[str, object] = {
        "method": "GET",
        "path": "/a/b",
        "query": "x=1",
        "headers": [],
        "body_length": 0,
        "remote_addr": "10.0.0.1",
        "server_name": "svc.local",
        "server_port": 8080,
        "server_software": "wasmfleet-agent/test",
    }
    arguments.update(overrides)
    return dict(request_variables(**arguments))  # type: ignore[arg-type]


def test_request_variables_follow_cgi_names() -> None:
    variables = _vars(
        headers=[("X-Trace", "a"), ("x-trace", "b"), ("Content-Type", "text/x"), ("Host", "h")],
        body_length=3,
        method="POST",
    )
    assert variables["REQUEST_METHOD"] == "POST"
    assert variables["PATH_INFO"] == "/a/b"
    assert variables["QUERY_STRING"] == "x=1"
    assert variables["REQUEST_URI"] == "/a/b?x=1"
    assert variables["SERVER_PORT"] == "8080"
    assert variables["REMOTE_ADDR"] == "10.0.0.1"
    assert variables["CONTENT_LENGTH"] == "3"
    assert variables["CONTENT_TYPE"] == "text/x"
    assert variables["HTTP_X_TRACE"] == "a, b"
    assert variables["HTTP_HOST"] == "h"
    assert "HTTP_CONTENT_TYPE" not in variables


def test_dangerous_or_malformed_headers_are_not_passed() -> None:
    variables = _vars(headers=[("Proxy", "http://evil"), ("Bad Name", "x"), ("X-Nul", "a\0b")])
    assert not any(name.startswith("HTTP_") for name in variables)
    assert "CONTENT_LENGTH" not in _vars()


def test_reserved_names() -> None:
    assert reserved("PATH_INFO")
    assert reserved("HTTP_HOST")
    assert not reserved("GREETING")


def test_print_only_output_is_a_plain_200() -> None:
    response = parse_output(b"Hello from a module!\n")
    assert response.status == 200
    assert response.headers == (("content-type", "text/plain"),)
    assert response.body == b"Hello from a module!\n"
    assert parse_output(b"").body == b""


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_headers_status_and_body(newline: bytes) -> None:
    output = newline.join(
        [b"Status: 201 Created", b"Content-Type: application/json", b"X-A: 1", b"", b'{"a":1}']
    )
    response = parse_output(output)
    assert response.status == 201
    assert ("Content-Type", "application/json") in response.headers
    assert ("X-A", "1") in response.headers
    assert response.body == b'{"a":1}'


def test_location_without_status_redirects() -> None:
    response = parse_output(b"location: /there\n\n")
    assert response.status == 302
    assert ("location", "/there") in response.headers
    assert ("content-type", "text/plain") in response.headers


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"content-type: text/plain\nx-a: 1\n", "no empty line"),
        (b"content-type: text/plain\nnot a header\n\nbody", "invalid header line"),
        (b"status: abc\n\n", "not a final HTTP status"),
        (b"status: 700\n\n", "not a final HTTP status"),
        (b"status: 100 Continue\n\n", "not a final HTTP status"),
        (b"status: 199\n\n", "not a final HTTP status"),
        (b"status: \xb2\xb2\xb2 x\n\n", "not a final HTTP status"),
        (b"status: \xd9\xa2\xd9\xa0\xd9\xa0\n\n", "not a final HTTP status"),
        (b"x-a: 1\x01\n\n", "control characters"),
        (b"x-a: caf\xe9\n\n", "not UTF-8"),
    ],
)
def test_malformed_cgi_output_is_an_error(output: bytes, message: str) -> None:
    with pytest.raises(CgiError, match=message):
        parse_output(output)


def test_utf8_header_values_are_kept_as_text() -> None:
    response = parse_output("x-name: café ✓\n\nbody".encode())
    assert ("x-name", "café ✓") in response.headers


def test_the_query_and_request_uri_are_passed_as_sent() -> None:
    variables = _vars(path="/a b/c", query="q=%3C+x&r=%00", request_uri="/a%20b/c?q=%3C+x&r=%00")
    assert variables["PATH_INFO"] == "/a b/c"
    assert variables["QUERY_STRING"] == "q=%3C+x&r=%00"
    assert variables["REQUEST_URI"] == "/a%20b/c?q=%3C+x&r=%00"
    assert variables["X_FULL_URL"] == "http://svc.local:8080/a%20b/c?q=%3C+x&r=%00"
