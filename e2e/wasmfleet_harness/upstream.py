"""An HTTP server on loopback for outbound requests of guests to reach, recording each one.

``/slow`` holds its answer until `Upstream.release` is set (or 10 s pass), ``/redirect``
answers 302, ``/big`` a body of `Upstream.big` bytes; every other path ``200 upstream says
hi``. TLS when given a server context.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from dataclasses import dataclass, field

__all__ = ["Upstream"]


@dataclass
class Upstream:
    """A threaded HTTP server on 127.0.0.1 that records every request it is sent."""

    tls: ssl.SSLContext | None = None
    big: int = 1 << 20
    """Bytes of the body ``/big`` answers with."""
    seen: list[dict[str, object]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                upstream.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode("latin-1"),
                    }
                )
                if self.path == "/slow":
                    upstream.release.wait(timeout=10)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = b"y" * upstream.big if self.path == "/big" else b"upstream says hi\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("X-Upstream", "yes")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)  # a client past its cap stops reading

            do_GET = do_POST = _answer  # noqa: N815 - the names http.server looks up

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if self.tls is not None else "http"
        self.origin = f"{self.scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
