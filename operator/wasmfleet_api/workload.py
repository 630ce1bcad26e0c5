"""What runs: the module, its mode (HTTP or job), and every capability granted to it.

These types are shared by `WasmService` (what a person asks for) and `WasmBinding` (what an
agent is told to run on its node), so a field means the same thing at both ends. Everything a
module can see is listed here: arguments, environment variables and preopened directories;
nothing else from the host reaches it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from wasmfleet_api.base import (
    Duration,
    KubeModel,
    LocalObjectReference,
    Quantity,
    bounded_duration,
    bounded_quantity,
    rule,
    schema,
)

__all__ = [
    "CGI_RESERVED_ENV",
    "IMAGE_NAME_MAX_LENGTH",
    "IMAGE_PATTERN",
    "ConfigMapFiles",
    "EmptyDirFiles",
    "EnvVar",
    "EnvVarSource",
    "FileMount",
    "HttpSpec",
    "JobSpec",
    "KeySelector",
    "ModuleSource",
    "NetworkSpec",
    "PullPolicy",
    "Resources",
    "SecretFiles",
    "WorkloadSpec",
    "parse_outbound_host",
    "render_outbound_host",
]

# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest], in RE2 syntax.
_DOMAIN_PART = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_PORT = r"0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
IMAGE_PATTERN = (
    rf"^(({_DOMAIN_PART}(\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(:{_PORT})?/)?"
    rf"{_PATH_PART}(/{_PATH_PART})*"
    r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
# The reference without its tag and digest. The resolver and the agents refuse a name longer
# than 255 characters once a Docker Hub name is spelled out (docker.io/library/...: at most 18
# more), so the CRD holds the name as written to 255 - 18.
_IMAGE_NAME = r"^([^/@]+/)?[^:@]*"
IMAGE_NAME_MAX_LENGTH = 237

# Variables the agent sets for every HTTP request (the WAGI/CGI convention); a module's own
# environment may not shadow them.
CGI_RESERVED_ENV = (
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "GATEWAY_INTERFACE",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "REQUEST_URI",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "X_FULL_URL",
    "X_MATCHED_ROUTE",
)

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class ModuleSource(KubeModel):
    """Where the Wasm module comes from."""

    image: str = Field(
        min_length=1,
        max_length=512,
        json_schema_extra=schema(
            rule(
                f"self.matches(r'{IMAGE_PATTERN}')",
                "must be an OCI image reference such as registry.example.com/team/hello:1.0 "
                "or registry.example.com/team/hello@sha256:<64 hex digits> (a registry port "
                "between 1 and 65535)",
            ),
            rule(
                f"self.find(r'{_IMAGE_NAME}').size() <= {IMAGE_NAME_MAX_LENGTH}",
                f"registry and repository (before :tag and @digest) must be at most "
                f"{IMAGE_NAME_MAX_LENGTH} characters, 255 with docker.io/library/ spelled out",
            ),
        ),
    )
    """OCI reference of the module: a tag (``registry/repo:1.0``) or a digest
    (``registry/repo@sha256:...``). A tag is resolved to a digest once per rollout, so every
    node runs the same bytes."""
    pull_policy: PullPolicy = "IfNotPresent"
    """When an agent contacts the registry: Always (check the digest on every start),
    IfNotPresent (only when the module is not cached, or when these pull secrets have not yet
    been shown to have access to the cached module), Never (use only the cache, and only a
    module these pull secrets were shown to have access to)."""
    pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=schema(list_type="map", list_map_keys=["name"]),
    )
    """Secrets of type kubernetes.io/dockerconfigjson in this namespace with credentials
    for the registry."""


class HttpSpec(KubeModel):
    """Serve the module over HTTP: every request runs a fresh instance (WAGI/CGI)."""

    port: int = Field(default=80, ge=1, le=65535)
    """Port of the Kubernetes Service that routes to the replicas."""
    timeout: Duration = Field(default="30s", **bounded_duration("1ms", "1h"))
    """Longest a request may run; past it the instance is stopped and the client gets 504."""
    max_concurrency: int = Field(default=64, ge=1, le=10000)
    """Requests one replica runs at once; beyond it the agent answers 503 at once."""
    max_request_body_size: Quantity = Field(default="1Mi", **bounded_quantity("0", "1Gi"))
    """Largest request body accepted; a larger one is answered 413 without running the module."""
    max_response_size: Quantity = Field(default="16Mi", **bounded_quantity("1Ki", "1Gi"))
    """Largest output (headers and body) a request may write; past it the request fails with 502."""


# An allowed outbound origin: http or https, a DNS name (optionally "*." and a name of at
# least two labels: any name under it), an IPv4 address or a bracketed IPv6 address, and an
# optional port; no path, no user, no other wildcard (RE2 syntax, for CEL).
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_OUTBOUND_HOST = (
    rf"^https?://({_LABEL}(\.{_LABEL})*|\*(\.{_LABEL}){{2,}}|\[[0-9a-fA-F:.]+\])"
    rf"(:{_PORT})?$"
)
WILDCARD = "*."
"""How an allowed host that stands for every name under it begins."""


def parse_outbound_host(text: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an allowed outbound origin such as
    ``https://api.example.com`` (port 443), ``https://*.example.com`` (every name under
    example.com, not example.com itself) or ``http://[::1]:8080``; the host in lower case,
    an IPv6 address without brackets. Raises ValueError for anything else."""
    match = re.fullmatch(_OUTBOUND_HOST.strip("^$"), text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an outbound origin such as https://api.example.com, "
            "https://*.example.com or http://svc.ns.svc:8080 (scheme http or https, a host, "
            "an optional port)"
        )
    scheme, rest = text.split("://", 1)
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, _, port = rest.partition(":")
    return scheme, host.lower(), int(port) if port else (443 if scheme == "https" else 80)


def render_outbound_host(scheme: str, host: str, port: int) -> str:
    """The canonical spelling of an outbound origin, with its port."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class NetworkSpec(KubeModel):
    """What the module may reach over the network: nothing unless listed here."""

    allowed_outbound_hosts: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=schema(
            rule(
                f"self.all(h, h.matches(r'{_OUTBOUND_HOST}'))",
                "each entry must be an origin such as https://api.example.com, "
                "https://*.example.com or http://svc.ns.svc:8080: scheme http or https, a host "
                "name (or *. and a name of two labels or more) or IP address, an optional port "
                "(1-65535), no path",
            ),
            list_type="set",
        ),
    )
    """Origins (scheme, host, port) a wasi:http component may send requests to, for example
    ``https://api.example.com`` or ``http://svc.ns.svc:8080``; the port defaults to the
    scheme's. ``https://*.example.com`` stands for every name under example.com (not
    example.com itself), on that scheme and port. Every other request fails with
    HTTP-request-denied. A host name that resolves
    to a loopback or link-local address is refused unless that address itself is listed.
    Redirects are not followed. WASI preview 1 modules and wasi:cli components have no
    sockets and make no request whatever this says."""


class JobSpec(KubeModel):
    """Run the module to completion (its ``_start``), optionally on a schedule."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries after a failed run (non-zero exit, trap or timeout) before the job fails."""
    backoff: Duration = Field(default="10s", **bounded_duration("0s", "1h"))
    """Delay before the first retry; it doubles with every further retry."""
    timeout: Duration | None = Field(default=None, **bounded_duration("1ms", "24h"))
    """Longest one run may take; unset means the agent's default (``--job-timeout``, one
    hour unless the chart's ``agent.jobTimeout`` says otherwise)."""
    schedule: str | None = Field(
        default=None,
        max_length=128,
        json_schema_extra=rule(
            r"self.matches(r'^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
            r"(\S+\s+){4}\S+)$')",
            "must be a cron schedule with five fields, such as '*/5 * * * *', or @hourly/@daily",
        ),
    )
    """Cron schedule (five fields, UTC) for repeated runs; unset runs once."""


class KeySelector(KubeModel):
    """One key of a ConfigMap or Secret in the same namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the ConfigMap or Secret."""
    key: str = Field(min_length=1, max_length=253)
    """Key within it."""
    optional: bool = False
    """If true, a missing object or key leaves the variable unset instead of failing."""


class EnvVarSource(KubeModel):
    """Where a variable's value comes from; exactly one source."""

    model_config = ConfigDict(
        json_schema_extra=rule(
            "has(self.configMapKeyRef) != has(self.secretKeyRef)",
            "exactly one of configMapKeyRef or secretKeyRef must be set",
        )
    )

    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""
    secret_key_ref: KeySelector | None = None
    """A key of a Secret."""


class EnvVar(KubeModel):
    """An environment variable the module sees (Kubernetes EnvVar shape)."""

    model_config = ConfigDict(
        json_schema_extra=rule(
            "!(has(self.value) && has(self.valueFrom))",
            "value and valueFrom are mutually exclusive",
        )
    )

    name: str = Field(
        min_length=1,
        max_length=256,
        json_schema_extra=rule(
            f"self.matches(r'{ENV_NAME_PATTERN}')",
            "must start with a letter or underscore and contain only letters, digits, '_', '.' "
            "and '-'",
        ),
    )
    """Name of the variable."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value read from a ConfigMap or Secret key at run time; changes reach new instances."""


class ConfigMapFiles(KubeModel):
    """The keys of a ConfigMap as read-only files."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the ConfigMap in the same namespace."""
    optional: bool = False
    """If true, a missing ConfigMap gives an empty directory instead of failing."""


class SecretFiles(KubeModel):
    """The keys of a Secret as read-only files."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret in the same namespace."""
    optional: bool = False
    """If true, a missing Secret gives an empty directory instead of failing."""


class EmptyDirFiles(KubeModel):
    """An empty scratch directory, private to one replica and emptied when it stops."""

    size_limit: Quantity | None = Field(default=None, **bounded_quantity("1Ki", "64Gi"))
    """Most bytes the directory may hold."""


_MOUNT_PATH_RULE = rule(
    "self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..') "
    "&& !self.contains('//') && !self.contains('\\\\')",
    "must be an absolute path without '..' or empty segments, such as /config",
)


class FileMount(KubeModel):
    """A directory the module may open (a WASI preopened directory); exactly one source."""

    model_config = ConfigDict(
        json_schema_extra=schema(
            rule(
                "[has(self.configMap), has(self.secret), has(self.emptyDir)]"
                ".filter(x, x).size() == 1",
                "exactly one of configMap, secret or emptyDir must be set",
            ),
            rule(
                "!self.writable || has(self.emptyDir)",
                "only an emptyDir can be writable; configMap and secret files are read-only",
            ),
        )
    )

    mount_path: str = Field(min_length=1, max_length=1024, json_schema_extra=_MOUNT_PATH_RULE)
    """Absolute path at which the module sees the directory."""
    writable: bool = False
    """Whether the module may create and change files there (emptyDir only)."""
    config_map: ConfigMapFiles | None = None
    """Files from a ConfigMap, one per key."""
    secret: SecretFiles | None = None
    """Files from a Secret, one per key."""
    empty_dir: EmptyDirFiles | None = None
    """A scratch directory."""


class Resources(KubeModel):
    """Limits enforced inside the sandbox, per instance (that is, per request for HTTP)."""

    memory: Quantity = Field(default="64Mi", **bounded_quantity("64Ki", "4Gi"))
    """Largest linear memory an instance may grow to; growing past it fails inside the module."""
    fuel: int | None = Field(default=None, ge=1, le=2**62)
    """Wasm instructions (roughly) an instance may execute; unset means no fuel limit."""


_LIST_OF_NAMES = schema(list_type="map", list_map_keys=["name"])


class WorkloadSpec(KubeModel):
    """The module and everything it is allowed to see; shared by services and bindings."""

    model_config = ConfigDict(
        json_schema_extra=schema(
            rule(
                "has(self.http) != has(self.job)",
                "exactly one of http (a service) or job (run to completion) must be set",
            ),
            rule(
                "!has(self.http) || !has(self.env) || self.env.all(e, "
                f"!(e.name in {list(CGI_RESERVED_ENV)}) && !e.name.startsWith('HTTP_'))",
                "env: names set per request in http mode (REQUEST_METHOD, PATH_INFO, "
                "QUERY_STRING, HTTP_*, ...) cannot be set",
                field_path=".env",
            ),
        )
    )

    module: ModuleSource
    """The Wasm module to run."""
    http: HttpSpec | None = None
    """Serve the module over HTTP; mutually exclusive with job."""
    job: JobSpec | None = None
    """Run the module to completion; mutually exclusive with http."""
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    """Arguments after the program name (argv[1:])."""
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, json_schema_extra=_LIST_OF_NAMES
    )
    """Environment variables; the module sees these and nothing from the host."""
    files: list[FileMount] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=schema(list_type="map", list_map_keys=["mountPath"]),
    )
    """Directories the module may open; it sees no other files."""
    resources: Resources = Field(default_factory=Resources, json_schema_extra={"default": {}})
    """Memory and fuel limits per instance."""
    network: NetworkSpec | None = None
    """Outbound HTTP the module may make (wasi:http components); unset: none."""
