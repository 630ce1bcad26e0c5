"""Registry credentials and the two halves of the Distribution auth handshake.

Credentials come from a ``kubernetes.io/dockerconfigjson`` document (what ``pullSecrets``
name); challenges come from a registry's ``WWW-Authenticate`` header; tokens come from the
realm a Bearer challenge names. Everything here is pure: the dance itself (asking for tokens,
caching them, answering challenges) is the `authorizer`'s. Secrets never reach a log line, a
``repr`` or an exception message: the messages name the registry and what was wrong, not the
value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmfleet_oci import errors
from wasmfleet_oci.reference import parse_registry_host

__all__ = [
    "PULL_SECRET_TYPE",
    "BearerToken",
    "Challenge",
    "Credentials",
    "PullSecretError",
    "find_credentials",
    "normalize_registry_key",
    "parse_docker_config",
    "parse_token_response",
    "parse_www_authenticate",
    "pull_secret_credentials",
]

_DEFAULT_TOKEN_LIFETIME = 60.0  # seconds; the token spec's default when expires_in is absent


@dataclass(frozen=True)
class Credentials:
    """A username and password (or registry token used as a password)."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if ":" in self.username:
            raise ValueError("a registry username must not contain ':'")

    def basic_header(self) -> str:
        """The value of an ``Authorization: Basic …`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def fingerprint(self) -> str:
        """A one-way identity for cache keys, so tokens never cross between credentials."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lower-case."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


@dataclass(frozen=True)
class BearerToken:
    """A token from a registry's token service, valid until ``expires_at`` (a monotonic time)."""

    token: str = field(repr=False)
    expires_at: float

    def valid(self, *, now: float, margin: float = 5.0) -> bool:
        return now + margin < self.expires_at


def normalize_registry_key(key: str) -> str:
    """Turns a dockerconfigjson ``auths`` key into the registry name a `Reference` carries.

    Strips a scheme and a path (``https://index.docker.io/v1/`` is Docker Hub), lower-cases
    the host and maps Docker Hub's aliases to ``docker.io``.
    """
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    host = text.split("/", 1)[0]
    return parse_registry_host(host)


def _decode_auth_field(registry: str, value: object) -> Credentials:
    if not isinstance(value, str):
        raise ValueError(f"dockerconfigjson: the auth of {registry!r} is not a string")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(
            f"dockerconfigjson: the auth of {registry!r} is not base64 of 'username:password'"
        ) from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ValueError(
            f"dockerconfigjson: the auth of {registry!r} does not decode to 'username:password'"
        )
    return Credentials(username=username, password=password)


def _entry_credentials(registry: str, entry: object) -> Credentials | None:
    if not isinstance(entry, Mapping):
        raise ValueError(f"dockerconfigjson: the entry of {registry!r} is not an object")
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credentials(username=username, password=password)
    if entry.get("auth"):
        return _decode_auth_field(registry, entry["auth"])
    # An entry with only an identitytoken (an OAuth refresh token) or nothing usable.
    return None


def parse_docker_config(document: str | bytes | Mapping[str, Any]) -> dict[str, Credentials]:
    """Reads the ``auths`` map of a dockerconfigjson; returns registry name -> credentials.

    ``username``/``password`` win over ``auth`` (base64 of ``username:password``) when an
    entry has both. Entries with neither are skipped. Keys are normalised with
    `normalize_registry_key`. Raises ValueError on a malformed document, without echoing it.
    """
    if isinstance(document, str | bytes):
        try:
            loaded = json.loads(document)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("dockerconfigjson: the document is not JSON") from None
    else:
        loaded = document
    if not isinstance(loaded, Mapping):
        raise ValueError("dockerconfigjson: the document is not a JSON object")
    auths = loaded.get("auths")
    if not isinstance(auths, Mapping):
        raise ValueError("dockerconfigjson: the document has no 'auths' object")
    found: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(key, str):
            raise ValueError("dockerconfigjson: an 'auths' key is not a string")
        try:
            registry = normalize_registry_key(key)
        except ValueError:
            raise ValueError(f"dockerconfigjson: {key!r} is not a registry address") from None
        credentials = _entry_credentials(registry, entry)
        if credentials is not None:
            found[registry] = credentials
    return found


PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"
"""The one Secret type a pull secret may have (``kubectl create secret docker-registry``)."""


class PullSecretError(ValueError):
    """A pull secret that cannot give credentials (wrong type, not a docker config)."""


def pull_secret_credentials(
    secrets: Sequence[tuple[str, Mapping[str, Any] | None]],
) -> dict[str, Credentials]:
    """Registry name -> credentials from a workload's pull secrets, as (name, Secret object,
    or None where it does not exist), in the order the workload lists them.

    The one rule both programs apply, so that the operator never resolves a tag with a Secret
    the agents then refuse: a missing Secret only means anonymous pulls (as for kubelets); a
    Secret of another type than `PULL_SECRET_TYPE`, or whose ``.dockerconfigjson`` is not a
    docker config, raises `PullSecretError` naming it; for a registry named by several, the
    first one listed wins.
    """
    found: dict[str, Credentials] = {}
    for name, secret in secrets:
        if secret is None:
            continue
        if secret.get("type") != PULL_SECRET_TYPE:
            raise PullSecretError(f"pull secret {name} is not of type {PULL_SECRET_TYPE}")
        encoded = (secret.get("data") or {}).get(".dockerconfigjson", "")
        try:
            configs = parse_docker_config(base64.b64decode(encoded, validate=True))
        except (ValueError, binascii.Error):
            raise PullSecretError(f"pull secret {name} is not a valid docker config") from None
        for registry, credentials in configs.items():
            found.setdefault(registry, credentials)
    return found


def find_credentials(configs: Mapping[str, Credentials], *, registry: str) -> Credentials | None:
    """The credentials for ``registry`` (a `Reference.registry`), or None."""
    return configs.get(parse_registry_host(registry))


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _read_token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] not in ' \t,="':
        pos += 1
    return text[start:pos], pos


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    # ``pos`` is just after the opening quote; backslash escapes the next character.
    chars: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            chars.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(chars), pos + 1
        else:
            chars.append(char)
            pos += 1
    raise ValueError("WWW-Authenticate: a quoted value is not terminated")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parses a ``WWW-Authenticate`` value into its challenges, in order.

    Handles several challenges in one header (``Basic realm="a", Bearer realm="b"``), quoted
    values with commas and escapes, and unquoted values. Scheme and parameter names are
    lower-cased. Raises ValueError if the header is malformed.
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    scheme: str | None = None
    pos = 0
    while True:
        pos = _skip_spaces(header, pos)
        while pos < len(header) and header[pos] == ",":
            pos = _skip_spaces(header, pos + 1)
        if pos >= len(header):
            break
        token, pos = _read_token(header, pos)
        if not token:
            raise ValueError(f"WWW-Authenticate: unexpected {header[pos]!r} at {pos}")
        after = _skip_spaces(header, pos)
        if after < len(header) and header[after] == "=":
            if scheme is None:
                raise ValueError("WWW-Authenticate: a parameter comes before any scheme")
            pos = _skip_spaces(header, after + 1)
            if pos < len(header) and header[pos] == '"':
                value, pos = _read_quoted(header, pos + 1)
            else:
                value, pos = _read_token(header, pos)
            params[token.lower()] = value
        else:
            if scheme is not None:
                challenges.append(Challenge(scheme=scheme, params=params))
            scheme, params, pos = token.lower(), {}, after
    if scheme is not None:
        challenges.append(Challenge(scheme=scheme, params=params))
    return challenges


def parse_token_response(body: bytes, *, now: float) -> BearerToken:
    """Reads a token service's JSON answer; accepts ``token`` or ``access_token``.

    ``now`` is a monotonic time; the token expires ``expires_in`` seconds later (60 when the
    service does not say, as the token specification prescribes).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.Unauthorized("the token service answered something that is not JSON") from None
    if not isinstance(document, Mapping):
        raise errors.Unauthorized("the token service answered something that is not an object")
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise errors.Unauthorized("the token service answered without a token")
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = _DEFAULT_TOKEN_LIFETIME
    return BearerToken(token=token, expires_at=now + float(lifetime))
