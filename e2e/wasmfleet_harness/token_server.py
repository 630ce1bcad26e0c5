"""A token service for the registry's bearer-token auth, on loopback, for tests and ``make up``.

Distribution's ``auth.token`` mode is what Docker Hub, GHCR, Harbor and most hosted registries
speak: the registry answers 401 with ``Bearer realm=…,service=…,scope=…``, the client asks the
realm for a token (with Basic credentials, or anonymously) and retries with it. This server is
such a realm. It checks Basic credentials against its users, grants the pull and push actions a
known user asks for (an anonymous caller gets a token that grants nothing), and signs an ES256
JWT whose header carries the signing certificate (``x5c``); the registry trusts it because that
certificate is in the ``rootcertbundle`` written here.

Distribution 2.8 accepts either an ``x5c`` chain ending in a root of the bundle or a ``kid``
equal to the libtrust fingerprint of a bundled key; both were tried against the real registry,
and ``x5c`` is used because it needs no libtrust-specific encoding. Its ``aud`` claim must be a
single string (2.8 rejects a list).

It runs in a daemon thread of the test process (`http.server`), so it works from synchronous
fixtures and from tests running their own event loop alike.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["IssuedToken", "TokenServer"]

_GRANTABLE = frozenset({"pull", "push"})


@dataclass(frozen=True)
class IssuedToken:
    """One token the server handed out: to whom (None = anonymous), asked for and granted."""

    username: str | None
    scopes: tuple[str, ...]
    granted: tuple[str, ...]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signing_identity() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasmfleet test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [action for action in actions.split(",") if action]


class TokenServer:
    """A realm that issues registry tokens to ``users`` (name -> password)."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str],
        service: str = "wasmfleet-registry",
        issuer: str = "wasmfleet-token-server",
        lifetime: int = 300,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.cert_path = workdir / "token-signer.crt"
        self._key, self._cert = _signing_identity()
        self._lock = threading.Lock()
        self._issued: list[IssuedToken] = []
        self._refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        if self._server is None:
            raise RuntimeError("the token server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def issued(self) -> list[IssuedToken]:
        """Every token issued so far, oldest first."""
        with self._lock:
            return list(self._issued)

    @property
    def refused(self) -> int:
        """How many requests had credentials that did not match a user."""
        with self._lock:
            return self._refused

    def registry_auth_config(self) -> dict[str, object]:
        """The registry's ``auth`` section that makes it trust this server's tokens."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert_path),
            }
        }

    def start(self) -> None:
        """Writes the signing certificate and serves on a free loopback port."""
        if self._server is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called from the handler thread -------------------------------------------------------

    def authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """``(accepted, username)``: no header is an accepted anonymous caller."""
        if header is None:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            username, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        expected = self.users.get(username)
        if expected is None or not hmac.compare_digest(expected, password):
            with self._lock:
                self._refused += 1
            return False, None
        return True, username

    def issue(self, username: str | None, scopes: list[str]) -> dict[str, Any]:
        access: list[dict[str, object]] = []
        granted: list[str] = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None or username is None:
                continue
            kind, name, actions = parsed
            allowed = [action for action in actions if action in _GRANTABLE]
            if kind == "repository" and allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
                granted.append(f"{kind}:{name}:{','.join(allowed)}")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": username or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        token = signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        with self._lock:
            self._issued.append(IssuedToken(username, tuple(scopes), tuple(granted)))
        return {"token": token, "expires_in": self.lifetime}


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                self._answer(404, {"error": "not found"})
                return
            query = urllib.parse.parse_qs(url.query)
            if query.get("service") != [server.service]:
                self._answer(400, {"error": "unknown service"})
                return
            accepted, username = server.authenticate(self.headers.get("Authorization"))
            if not accepted:
                self._answer(401, {"error": "invalid credentials"}, challenge=True)
                return
            self._answer(200, server.issue(username, query.get("scope", [])))

        def _answer(self, status: int, body: dict[str, Any], *, challenge: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if challenge:
                self.send_header("WWW-Authenticate", 'Basic realm="wasmfleet-token-server"')
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # requests are counted in `issued`; keep the test output quiet

    return Handler
