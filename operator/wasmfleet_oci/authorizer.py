"""The auth dance: which ``Authorization`` each registry request carries.

Every registry is first spoken to anonymously; its 401 challenge says what it wants. A Basic
challenge is answered with the caller's credentials, a Bearer challenge with a token bought
from the realm it names (with those credentials, or anonymously). What each registry asked
for is remembered, and tokens are cached per registry, scope and credentials, so one caller's
token never serves another's request and concurrent requests buy one token, not many.

The parsing (challenges, token answers, pull secrets) is pure and lives in `auth`; this module
holds the state and the one call to a token service. It sits on the `transport`, whose
request loop asks it for a header before each try and tells it about each challenge.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from wasmfleet_oci import auth, errors
from wasmfleet_oci.reference import Reference
from wasmfleet_oci.transport import Transport, plan_plain_http, render_safe_url

__all__ = ["Authorizer", "RequestAuthorization", "fetch_bearer_token"]

_MAX_TOKEN_RESPONSE = 1 << 20
_TokenKey = tuple[str, str, str]


async def fetch_bearer_token(
    *,
    session: aiohttp.ClientSession,
    challenge: auth.Challenge,
    scopes: Sequence[str],
    credentials: auth.Credentials | None,
    ssl: bool | ssl_module.SSLContext = True,
    clock: Callable[[], float] = time.monotonic,
) -> auth.BearerToken:
    """Asks the realm of a Bearer ``challenge`` for a token covering ``scopes``.

    Sends ``GET realm?service=…&scope=…`` with Basic credentials when there are any (an
    anonymous token otherwise). Redirects are not followed, so the credentials go to the realm
    the registry named and nowhere else. The token expires on ``clock``, which must be the
    clock its validity is checked by. Raises `errors.Unauthorized` when refused and
    `errors.RegistryUnavailable` on a connection failure or a 5xx/429 answer.
    """
    if challenge.realm is None:
        raise errors.Unauthorized("a Bearer challenge without a realm")
    realm = URL(challenge.realm)
    if realm.scheme not in ("http", "https") or not realm.host:
        raise errors.Unauthorized("the token realm is not an http(s) URL")
    query: list[tuple[str, str]] = list(realm.query.items())
    if challenge.service is not None:
        query.append(("service", challenge.service))
    query.extend(("scope", scope) for scope in scopes)
    headers = {"Accept": "application/json"}
    if credentials is not None:
        headers["Authorization"] = credentials.basic_header()
    where = str(realm.with_query(None))
    try:
        async with session.get(
            realm.with_query(query),
            headers=headers,
            allow_redirects=False,
            ssl=ssl,
        ) as response:
            if response.status in (401, 403):
                raise errors.Unauthorized(
                    f"the token service {where} refused "
                    f"{'the credentials' if credentials else 'an anonymous request'} "
                    f"({response.status})"
                )
            if response.status == 429 or response.status >= 500:
                raise errors.RegistryUnavailable(
                    f"the token service {where} answered {response.status}"
                )
            if response.status != 200:
                raise errors.Unauthorized(f"the token service {where} answered {response.status}")
            body = await response.content.read(_MAX_TOKEN_RESPONSE)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
        raise errors.RegistryUnavailable(
            f"the token service {where} is unreachable: {type(error).__name__}"
        ) from error
    return auth.parse_token_response(body, now=clock())


class Authorizer:
    """The challenges and tokens of every registry one client talks to."""

    def __init__(
        self, transport: Transport, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._transport = transport
        self._clock = clock
        self._challenges: dict[str, auth.Challenge] = {}
        self._tokens: dict[_TokenKey, auth.BearerToken] = {}
        self._token_locks: dict[_TokenKey, asyncio.Lock] = {}

    def for_request(
        self, *, reference: Reference, actions: str, credentials: auth.Credentials | None
    ) -> RequestAuthorization:
        """The authorization of one request to ``reference``'s repository for ``actions``
        (``pull`` or ``pull,push``), as the transport's request loop uses it."""
        scope = f"repository:{reference.repository}:{actions}"
        return RequestAuthorization(self, reference, scope, credentials)

    def _token_key(
        self, reference: Reference, scope: str, credentials: auth.Credentials | None
    ) -> _TokenKey:
        return (reference.registry, scope, credentials.fingerprint() if credentials else "")

    async def authorization(
        self, *, reference: Reference, scope: str, credentials: auth.Credentials | None
    ) -> str | None:
        """The header for a request to ``reference`` in ``scope``: none until the registry
        has challenged, then Basic credentials or a Bearer token (bought when none valid)."""
        challenge = self._challenges.get(reference.registry)
        if challenge is None:
            return None  # anonymous until the registry asks for more
        if challenge.scheme == "basic":
            return credentials.basic_header() if credentials is not None else None
        key = self._token_key(reference, scope, credentials)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None or not token.valid(now=self._clock()):
                token = await self._fetch_token(challenge, scope, credentials)
                self._tokens[key] = token
        return f"Bearer {token.token}"

    async def _fetch_token(
        self, challenge: auth.Challenge, scope: str, credentials: auth.Credentials | None
    ) -> auth.BearerToken:
        transport = self._transport
        try:
            realm = URL(challenge.realm or "")
            port = realm.explicit_port
        except ValueError:
            raise errors.Unauthorized(
                "the token realm of the registry's Bearer challenge is not a valid URL"
            ) from None
        if realm.scheme == "http" and not plan_plain_http(
            realm.host or "", port, settings=transport.settings
        ):
            raise errors.Unauthorized(
                f"the token realm {render_safe_url(realm)} uses plain HTTP and is not an "
                "insecure registry; refusing to ask it for a token"
            )
        attempt = 0
        while True:
            try:
                return await fetch_bearer_token(
                    session=transport.session(),
                    challenge=challenge,
                    scopes=[scope],
                    credentials=credentials,
                    ssl=transport.ssl,
                    clock=self._clock,
                )
            except errors.RegistryUnavailable:
                attempt += 1
                if attempt >= transport.settings.max_attempts:
                    raise
                await transport.back_off(attempt)

    def learn_challenge(
        self,
        header: str,
        *,
        reference: Reference,
        scope: str,
        credentials: auth.Credentials | None,
        sent: str | None,
    ) -> None:
        """Remembers what ``reference``'s registry asked for in a 401's ``WWW-Authenticate``
        ``header``; raises `errors.Unauthorized` when asking again cannot help."""
        try:
            challenges = auth.parse_www_authenticate(header)
        except ValueError:
            challenges = []
        by_scheme = {c.scheme: c for c in reversed(challenges)}
        if "bearer" in by_scheme:
            self._challenges[reference.registry] = by_scheme["bearer"]
            # The token we sent (if any) was refused or expired: fetch a fresh one.
            self._tokens.pop(self._token_key(reference, scope, credentials), None)
            return
        if "basic" in by_scheme:
            self._challenges[reference.registry] = by_scheme["basic"]
            if credentials is None:
                raise errors.Unauthorized(
                    f"{reference.registry} requires credentials for {reference.repository} "
                    "and none were given"
                )
            if sent is not None and sent.startswith("Basic "):
                raise errors.Unauthorized(
                    f"{reference.registry} refused access to {reference.repository} with the "
                    "credentials given"
                )
            return
        raise errors.Unauthorized(
            f"{reference.registry} answered 401 without a Basic or Bearer challenge"
        )


@dataclass(frozen=True)
class RequestAuthorization:
    """One request's view of an `Authorizer`, as the `transport.Authentication` it needs."""

    authorizer: Authorizer
    reference: Reference
    scope: str
    credentials: auth.Credentials | None

    async def authorization(self) -> str | None:
        return await self.authorizer.authorization(
            reference=self.reference, scope=self.scope, credentials=self.credentials
        )

    def challenged(self, header: str, *, sent: str | None) -> None:
        self.authorizer.learn_challenge(
            header,
            reference=self.reference,
            scope=self.scope,
            credentials=self.credentials,
            sent=sent,
        )
