"""The one place where Wasmfleet's own code talks to the Kubernetes API.

A small async client on aiohttp, shared by the operator (bindings, Services, EndpointSlices,
status, events) and the agents (their WasmAgent, Lease and bindings). It speaks server-side
apply with a field manager, merge patches, list and watch, and nothing else; it knows the
paths of the few kinds Wasmfleet touches. Credentials come from a kubeconfig (loaded with the
kubernetes package, so exec plugins and contexts work) or from the in-cluster service account,
whose token file is re-read as the kubelet rotates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from wasmfleet_common.backoff import Backoff

__all__ = [
    "API_ERRORS",
    "MAX_WATCH_EVENT",
    "NETWORK_ERRORS",
    "START_BACKOFF",
    "ApiError",
    "KubeClient",
    "KubeConfig",
    "Resource",
    "encode_body",
    "load_configuration",
    "resource_for",
    "retry_until_stopped",
]

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """An error status from the API server; ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    api_version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [prefix]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        return "/".join(parts)


_RESOURCES = {
    ("v1", "Service"): Resource("v1", "services", True),
    ("v1", "Secret"): Resource("v1", "secrets", True),
    ("v1", "ConfigMap"): Resource("v1", "configmaps", True),
    ("v1", "Node"): Resource("v1", "nodes", False),
    ("v1", "Namespace"): Resource("v1", "namespaces", False),
    ("events.k8s.io/v1", "Event"): Resource("events.k8s.io/v1", "events", True),
    ("discovery.k8s.io/v1", "EndpointSlice"): Resource(
        "discovery.k8s.io/v1", "endpointslices", True
    ),
    ("coordination.k8s.io/v1", "Lease"): Resource("coordination.k8s.io/v1", "leases", True),
    ("wasmfleet.dev/v1alpha1", "WasmService"): Resource(
        "wasmfleet.dev/v1alpha1", "wasmservices", True
    ),
    ("wasmfleet.dev/v1alpha1", "WasmBinding"): Resource(
        "wasmfleet.dev/v1alpha1", "wasmbindings", True
    ),
    ("wasmfleet.dev/v1alpha1", "WasmAgent"): Resource(
        "wasmfleet.dev/v1alpha1", "wasmagents", False
    ),
}


NETWORK_ERRORS = (OSError, TimeoutError, aiohttp.ClientError)
"""What a call raises when the network or the server's connection fails."""
API_ERRORS = (ApiError, *NETWORK_ERRORS)
"""What a call to the API server raises when the server or the network fails: worth a retry."""

START_BACKOFF = Backoff(base=0.5, cap=10.0)
"""Waits between start-up calls to the API server that failed."""


async def retry_until_stopped(
    attempt: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    on_error: Callable[[BaseException, float], None],
    backoff: Backoff = START_BACKOFF,
) -> bool:
    """Runs ``attempt`` until it succeeds (True) or ``stop`` is set (False).

    After each `API_ERRORS` failure, ``on_error(error, delay)`` reports it and the next try
    waits ``backoff``'s delay; a stop cuts the wait short.
    """
    failures = 0
    while not stop.is_set():
        try:
            await attempt()
            return True
        except API_ERRORS as error:
            failures += 1
            delay = backoff.delay(failures)
            on_error(error, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    return False


_BEYOND_PRINTABLE_ASCII = re.compile("[^\x20-\x7e\U00010000-\U0010ffff]")


def encode_body(body: Any) -> bytes:
    """``body`` as JSON that a YAML parser reads back the same, for every request.

    The API server parses a server-side apply patch as YAML, and YAML refuses the surrogate
    pairs (``\\ud83d\\ude00``) JSON escapes a character beyond U+FFFF to, so those go as
    UTF-8; every other character outside printable ASCII stays escaped, as YAML refuses some of
    them raw (DEL, C1 controls, U+FFFE) and folds others (NEL).
    """
    text = json.dumps(body, ensure_ascii=False)
    return _BEYOND_PRINTABLE_ASCII.sub(lambda m: f"\\u{ord(m[0]):04x}", text).encode()


def resource_for(api_version: str, kind: str) -> Resource:
    try:
        return _RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the client does not know {kind}.{api_version}") from None


def load_configuration(path: str | Path | None = None) -> tuple[Any, str | None]:
    """A kubeconfig resolved by the kubernetes package (contexts, exec plugins, embedded
    data), as its Configuration and the bearer token, if the user has one."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(path) if path is not None else None,
        client_configuration=configuration,
    )
    keys = configuration.api_key
    token = keys.get("BearerToken") or keys.get("authorization")
    if token is not None and token.lower().startswith("bearer "):
        token = token[len("bearer ") :]
    return configuration, token


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None
    token_file: Path | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None) -> KubeConfig:
        configuration, token = load_configuration(path)
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        return cls(server=configuration.host, ssl_context=context, token=token)

    @classmethod
    def in_cluster(cls, directory: Path = IN_CLUSTER_DIR) -> KubeConfig:
        import os

        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return cls(
            server=f"https://{host}:{port}", ssl_context=context, token_file=directory / "token"
        )

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


class KubeClient:
    """Async access to the API server for one component, named by its field manager."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        field_manager: str,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.field_manager = field_manager
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._in_flight: set[asyncio.Timeout] = set()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def drop_connections(self) -> None:
        """Gives up on every connection, for when they may be dead without anyone knowing.

        Requests and watches in flight (connecting, waiting or streaming) end at once with
        `TimeoutError`; once they have unwound, the old pool is closed, and the next request
        connects afresh. (Closing a pool under a response that is still streaming would
        cancel the task reading it instead.)
        """
        aborted = list(self._in_flight)
        now = asyncio.get_running_loop().time()
        for scope in aborted:
            scope.reschedule(now)
        old = self._session if self._owns_session else None
        if old is not None:
            self._session = None
        for _ in range(200):  # a few loop turns at most; bounded in any case
            if not any(scope in self._in_flight for scope in aborted):
                break
            await asyncio.sleep(0.005)
        if old is not None:
            await old.close()

    @contextlib.asynccontextmanager
    async def _abortable(self) -> AsyncIterator[None]:
        """A scope that `drop_connections` can end with `TimeoutError`."""
        async with asyncio.timeout(None) as scope:
            self._in_flight.add(scope)
            try:
                yield
            finally:
                self._in_flight.discard(scope)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.config.ssl_context, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; JSON in, JSON out; raises `ApiError` on an error status."""
        url = self.config.server + path + (f"?{urlencode(query)}" if query else "")
        data = encode_body(body) if body is not None else None
        async with (
            self._abortable(),
            self._http().request(
                method,
                url,
                data=data,
                headers=self._headers(content_type if data is not None else None),
                timeout=self._timeout,
            ) as response,
        ):
            text = await response.text()
        if response.status >= 400:
            raise _api_error(response.status, text)
        return json.loads(text) if text else None

    # ---- typed helpers -------------------------------------------------------------

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Any:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Any:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        return await self.request("GET", resource.path(namespace), query=query)

    async def apply(self, body: Mapping[str, Any], *, force: bool = True) -> Any:
        """Server-side apply of ``body`` as this client's field manager."""
        resource = resource_for(body["apiVersion"], body["kind"])
        metadata = body["metadata"]
        return await self.request(
            "PATCH",
            resource.path(metadata.get("namespace"), metadata["name"]),
            query={"fieldManager": self.field_manager, "force": "true" if force else "false"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def apply_status(self, body: Mapping[str, Any]) -> Any:
        """Server-side apply of ``body["status"]`` through the status subresource."""
        resource = resource_for(body["apiVersion"], body["kind"])
        metadata = body["metadata"]
        return await self.request(
            "PATCH",
            resource.path(metadata.get("namespace"), metadata["name"]) + "/status",
            query={"fieldManager": self.field_manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Any:
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        return await self.request(
            "PATCH",
            path,
            query={"fieldManager": self.field_manager},
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def create(self, body: Mapping[str, Any]) -> Any:
        resource = resource_for(body["apiVersion"], body["kind"])
        namespace = body["metadata"].get("namespace")
        return await self.request(
            "POST",
            resource.path(namespace),
            query={"fieldManager": self.field_manager},
            body=body,
        )

    async def delete(self, resource: Resource, name: str, namespace: str | None = None) -> bool:
        """Deletes an object; False if it was already gone."""
        try:
            await self.request(
                "DELETE",
                resource.path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields (type, object) events from ``resource_version`` until the server ends it.

        Bookmarks are requested and yielded (type BOOKMARK) so the caller can resume from
        a fresh resourceVersion; an ERROR event (e.g. 410 Gone) raises `ApiError`.
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        url = self.config.server + resource.path(namespace) + "?" + urlencode(query)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        async with (
            self._abortable(),
            self._http().get(url, headers=self._headers(), timeout=timeout) as response,
        ):
            if response.status >= 400:
                raise _api_error(response.status, await response.text())
            async for event in self._events(response):
                yield event

    @staticmethod
    async def _events(
        response: aiohttp.ClientResponse,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for line in _lines(response.content, MAX_WATCH_EVENT):
            if not line.strip():
                continue
            event = json.loads(line)
            if event["type"] == "ERROR":
                status = event["object"]
                raise ApiError(
                    int(status.get("code", 500)),
                    str(status.get("reason", "")),
                    str(status.get("message", "")),
                )
            yield event["type"], event["object"]


MAX_WATCH_EVENT = 64 << 20
"""The longest watch event read (one JSON line). The API server stores objects of up to
about 1.5 MiB (etcd's request limit); aiohttp's line reader stops at its buffer's high-water
mark and raised ``LineTooLong`` on such objects, which killed the task reading the watch."""


async def _lines(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """The newline-terminated lines of ``content``, however long, up to ``limit`` bytes each
    (a longer one is an `ApiError` 413: the stream cannot be followed past it)."""
    pending = bytearray()
    async for chunk in content.iter_any():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if pending:
                pending += chunk[start:end]
                yield bytes(pending)
                pending.clear()
            else:
                yield chunk[start:end]
            start = end + 1
        pending += chunk[start:]
        if len(pending) > limit:
            raise ApiError(413, "WatchEventTooLarge", f"a watch event exceeds {limit} bytes")
    if pending:
        yield bytes(pending)


def _api_error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
        return ApiError(status, str(body.get("reason", "")), str(body.get("message", text)))
    except (ValueError, AttributeError):
        return ApiError(status, "", text[:500])
