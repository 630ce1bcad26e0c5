"""The WasmService API on the real API server: columns, docs, scale, validation, no drift."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from wasmfleet_api.base import GROUP, VERSION
from wasmfleet_api.wasmservice import WasmService
from wasmfleet_harness.binaries import REPO_ROOT
from wasmfleet_harness.controlplane import ControlPlane

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*/wasmservice.yaml"))
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def custom_api(wasmfleet_crds: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    api_client = config.new_client_from_config(config_file=str(wasmfleet_crds.kubeconfig))
    with api_client:
        yield client.CustomObjectsApi(api_client)


def _base() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WasmService",
        "metadata": {"name": "subject"},
        "spec": {"module": {"image": "registry.example.com/team/hello:1.0"}, "http": {}},
    }


def _with(**spec: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["spec"].update(copy.deepcopy(spec))

    return mutate


def _without(*keys: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        for key in keys:
            document["spec"].pop(key)

    return mutate


def _named(name: str, **spec: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["metadata"]["name"] = name
        document["spec"].update(copy.deepcopy(spec))

    return mutate


def _env(*items: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return _with(env=list(items))


def _files(*items: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return _with(files=list(items))


CM = {"configMap": {"name": "c"}}

# (id, mutation of a valid manifest, substrings the API server's message must contain)
INVALID: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str, ...]]] = [
    ("both-http-and-job", _with(job={}), ("spec", "exactly one of http")),
    ("neither-http-nor-job", _without("http"), ("spec", "exactly one of http")),
    ("no-module", _without("module"), ("spec.module", "Required")),
    ("negative-replicas", _with(replicas=-1), ("spec.replicas", "greater than or equal to 0")),
    ("replicas-not-a-number", _with(replicas="two"), ("spec.replicas", "integer")),
    ("unknown-field", _with(replica=2), ("unknown field", "spec.replica")),
    ("malformed-image", _with(module={"image": "Not A Reference"}), ("spec.module.image",)),
    (
        "short-digest",
        _with(module={"image": "r.example.com/x@sha256:abc"}),
        ("spec.module.image", "OCI image reference"),
    ),
    ("empty-image", _with(module={"image": ""}), ("spec.module.image",)),
    (
        "registry-port-out-of-range",
        _with(module={"image": "localhost:99999/x:1"}),
        ("spec.module.image", "port between 1 and 65535"),
    ),
    (
        "image-name-too-long",
        _with(module={"image": "r.example.com/" + "a" * 230 + ":1"}),
        ("spec.module.image", "at most 237 characters"),
    ),
    ("http-name-with-a-dot", _named("a.b"), ("metadata.name", "must be a DNS label")),
    ("http-name-starting-with-a-digit", _named("1st"), ("metadata.name", "DNS label")),
    ("name-too-long", _named("x" * 64), ("metadata.name", "63")),
    (
        "unknown-pull-policy",
        _with(module={"image": "r/x:1", "pullPolicy": "Sometimes"}),
        ("spec.module.pullPolicy", "Unsupported value"),
    ),
    ("port-zero", _with(http={"port": 0}), ("spec.http.port",)),
    ("port-too-large", _with(http={"port": 70000}), ("spec.http.port",)),
    ("timeout-in-words", _with(http={"timeout": "5 seconds"}), ("spec.http.timeout", "duration")),
    (
        "timeout-too-long",
        _with(http={"timeout": "2h"}),
        ("spec.http.timeout", "between 1ms and 1h"),
    ),
    ("timeout-zero", _with(http={"timeout": "0s"}), ("spec.http.timeout",)),
    ("zero-concurrency", _with(http={"maxConcurrency": 0}), ("spec.http.maxConcurrency",)),
    (
        "body-limit-too-large",
        _with(http={"maxRequestBodySize": "2Gi"}),
        ("spec.http.maxRequestBodySize", "quantity"),
    ),
    ("memory-in-words", _with(resources={"memory": "lots"}), ("spec.resources.memory", "quantity")),
    ("memory-over-4gi", _with(resources={"memory": "8Gi"}), ("spec.resources.memory",)),
    ("memory-fractional", _with(resources={"memory": "500m"}), ("spec.resources.memory",)),
    ("memory-too-small", _with(resources={"memory": 1024}), ("spec.resources.memory",)),
    (
        "quantity-with-an-exponent",
        _with(resources={"memory": "1e8"}),
        ("spec.resources.memory", "digits with an optional Ki"),
    ),
    (
        "quantity-with-a-sign",
        _with(http={"maxRequestBodySize": "+1Mi"}),
        ("spec.http.maxRequestBodySize", "quantity"),
    ),
    ("fuel-zero", _with(resources={"fuel": 0}), ("spec.resources.fuel",)),
    (
        "unknown-architecture",
        _with(placement={"architectures": ["riscv64"]}),
        ("spec.placement.architectures[0]", "Unsupported value"),
    ),
    (
        "duplicate-architecture",
        _with(placement={"architectures": ["amd64", "amd64"]}),
        ("spec.placement.architectures[1]", "Duplicate value"),
    ),
    (
        "toleration-exists-with-value",
        _with(placement={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        ("spec.placement.tolerations[0]", "value must be empty"),
    ),
    (
        "spread-zero-skew",
        _with(placement={"spread": {"maxSkew": 0}}),
        ("spec.placement.spread.maxSkew",),
    ),
    ("env-name-starts-with-digit", _env({"name": "1BAD", "value": "x"}), ("spec.env[0].name",)),
    ("env-name-with-space", _env({"name": "HAS SPACE", "value": "x"}), ("spec.env[0].name",)),
    (
        "duplicate-env-names",
        _env({"name": "A", "value": "1"}, {"name": "A", "value": "2"}),
        ("spec.env[1]", "Duplicate value"),
    ),
    (
        "env-value-and-value-from",
        _env({"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        ("spec.env[0]", "mutually exclusive"),
    ),
    (
        "value-from-with-both-sources",
        _env(
            {
                "name": "A",
                "valueFrom": {
                    "secretKeyRef": {"name": "s", "key": "k"},
                    "configMapKeyRef": {"name": "c", "key": "k"},
                },
            }
        ),
        ("spec.env[0].valueFrom", "exactly one of configMapKeyRef or secretKeyRef"),
    ),
    (
        "value-from-with-no-source",
        _env({"name": "A", "valueFrom": {}}),
        ("spec.env[0].valueFrom", "exactly one of configMapKeyRef or secretKeyRef"),
    ),
    (
        "reserved-cgi-variable",
        _env({"name": "REQUEST_METHOD", "value": "GET"}),
        ("spec.env", "set per request"),
    ),
    ("reserved-http-header-variable", _env({"name": "HTTP_HOST", "value": "x"}), ("spec.env",)),
    ("relative-mount-path", _files({"mountPath": "config", **CM}), ("spec.files[0].mountPath",)),
    (
        "mount-path-with-dotdot",
        _files({"mountPath": "/a/../b", **CM}),
        ("spec.files[0].mountPath",),
    ),
    (
        "duplicate-mount-paths",
        _files({"mountPath": "/a", **CM}, {"mountPath": "/a", "emptyDir": {}}),
        ("spec.files[1]", "Duplicate value"),
    ),
    (
        "file-with-two-sources",
        _files({"mountPath": "/a", **CM, "secret": {"name": "s"}}),
        ("spec.files[0]", "exactly one of configMap, secret or emptyDir"),
    ),
    ("file-with-no-source", _files({"mountPath": "/a"}), ("spec.files[0]", "exactly one of")),
    (
        "writable-configmap",
        _files({"mountPath": "/a", "writable": True, **CM}),
        ("spec.files[0]", "only an emptyDir can be writable"),
    ),
    (
        "rollout-that-cannot-progress",
        _with(strategy={"maxSurge": 0, "maxUnavailable": "0%"}),
        ("spec.strategy", "cannot both be zero"),
    ),
    (
        "surge-not-a-percentage",
        _with(strategy={"maxSurge": "many"}),
        ("spec.strategy.maxSurge", "percentage"),
    ),
    (
        "cron-in-words",
        _with(http=None, job={"schedule": "every day"}),
        ("spec.job.schedule", "cron schedule"),
    ),
    (
        "negative-backoff-limit",
        _with(http=None, job={"backoffLimit": -1}),
        ("spec.job.backoffLimit",),
    ),
    *(
        (
            f"outbound-{name}",
            _with(network={"allowedOutboundHosts": [origin]}),
            ("spec.network.allowedOutboundHosts", "each entry must be an origin"),
        )
        for name, origin in (
            ("with-a-path", "https://api.example.com/v1"),
            ("wildcard-alone", "https://*"),
            ("wildcard-over-a-top-level-domain", "https://*.com"),
            ("wildcard-inside", "https://api.*.example.com"),
            ("wildcard-without-dot", "https://*example.com"),
            ("other-scheme", "ftp://files.example.com"),
            ("no-scheme", "api.example.com"),
            ("port-0", "http://api.example.com:0"),
            ("user-info", "http://user@api.example.com"),
        )
    ),
    (
        "outbound-duplicate",
        _with(network={"allowedOutboundHosts": ["https://a.example", "https://a.example"]}),
        ("spec.network.allowedOutboundHosts", "Duplicate value"),
    ),
]

VALID: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("minimal-http", _with()),
    ("minimal-job", _with(http=None, job={})),
    ("by-digest", _with(module={"image": f"registry.example.com:5000/a/b/c@{DIGEST}"})),
    ("tag-and-digest", _with(module={"image": f"localhost:5001/x:1.0@{DIGEST}"})),
    ("ip-registry", _with(module={"image": "127.0.0.1:5000/team/svc_name-1:v1.2.3"})),
    ("zero-replicas", _with(replicas=0)),
    (
        "quantities-as-integers",
        _with(resources={"memory": 1048576}, http={"maxRequestBodySize": 0}),
    ),
    ("percentages", _with(strategy={"maxSurge": "25%", "maxUnavailable": "25%"})),
    ("arm64-only", _with(placement={"architectures": ["arm64"]})),
    ("tolerate-everything", _with(placement={"tolerations": [{"operator": "Exists"}]})),
    ("cron-schedule", _with(http=None, job={"schedule": "*/5 * * * *", "timeout": "1m"})),
    ("named-schedule", _with(http=None, job={"schedule": "@hourly"})),
    (
        "every-capability",
        _with(
            env=[
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            ],
            files=[
                {"mountPath": "/config", **CM},
                {"mountPath": "/tmp", "writable": True, "emptyDir": {"sizeLimit": "1Mi"}},
            ],
            args=["--flag", "value"],
        ),
    ),
    ("cgi-name-allowed-for-jobs", _with(http=None, job={}, env=[{"name": "QUERY_STRING"}])),
    ("job-name-with-a-dot", _named("nightly.report", http=None, job={})),
    ("name-of-63-characters", _named("x" * 63)),
    ("registry-port-65535", _with(module={"image": "localhost:65535/x:1"})),
    (
        "outbound-origins",
        _with(
            network={
                "allowedOutboundHosts": [
                    "https://api.example.com",
                    "http://svc.team.svc.cluster.local:8080",
                    "http://10.0.0.5:9000",
                    "http://[fd00::5]:8080",
                    "https://*.example.com",
                    "http://*.team.svc.cluster.local:8080",
                ]
            }
        ),
    ),
]


def _drop_none(document: dict[str, Any]) -> dict[str, Any]:
    document["spec"] = {k: v for k, v in document["spec"].items() if v is not None}
    return document


def _as_dict(value: object) -> dict[str, Any]:
    assert isinstance(value, dict)
    return value


def _create(api: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> Any:
    return api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "wasmservices", body, field_validation="Strict"
    )


@pytest.mark.parametrize(("case", "mutate", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_wasmservice_is_rejected_at_admission_naming_the_field(
    custom_api: client.CustomObjectsApi,
    namespace: str,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    expected: tuple[str, ...],
) -> None:
    document = _base()
    mutate(document)
    with pytest.raises(client.ApiException) as rejected:
        _create(custom_api, namespace, _drop_none(document))
    assert rejected.value.status in (400, 422), rejected.value.body
    message = json.loads(str(rejected.value.body))["message"]
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_the_invalid_table_is_large_enough() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize(("case", "mutate"), VALID, ids=[c[0] for c in VALID])
def test_a_valid_variant_is_accepted(
    custom_api: client.CustomObjectsApi,
    namespace: str,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    document = _base()
    mutate(document)
    created = _create(custom_api, namespace, _drop_none(document))
    # The operator can honour what the server accepted: the models parse it.
    WasmService.model_validate({**created, "metadata": {"name": created["metadata"]["name"]}})


def _service_name(path: Path) -> str:
    return next(
        str(d["metadata"]["name"])
        for d in yaml.safe_load_all(path.read_text())
        if d and d["kind"] == "WasmService"
    )


def _apply_examples(plane: ControlPlane, namespace: str) -> None:
    for path in EXAMPLES:
        plane.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))


def test_every_example_applies_and_kubectl_get_prints_the_columns(
    wasmfleet_crds: ControlPlane, namespace: str
) -> None:
    _apply_examples(wasmfleet_crds, namespace)
    names = {_service_name(path) for path in EXAMPLES}
    expected = {"hello-rust", "hello-go", "hello-c", "greeter", "hello-component", "hello-python"}
    assert expected <= names
    for resource in ("wasmservices", "wsvc", "wasm"):
        table = wasmfleet_crds.kubectl("get", resource, "-n", namespace).stdout.splitlines()
        assert table[0].split() == ["NAME", "READY", "STATUS", "DIGEST", "URL", "AGE"], resource
        assert {line.split()[0] for line in table[1:]} == names, resource


def test_kubectl_get_shows_status_in_the_columns(
    wasmfleet_crds: ControlPlane, namespace: str
) -> None:
    wasmfleet_crds.kubectl(
        "apply",
        "--server-side",
        "-n",
        namespace,
        "-f",
        str(REPO_ROOT / "examples/hello-c/wasmservice.yaml"),
    )
    status = {
        "status": {
            "ready": "2/2",
            "digest": DIGEST,
            "shortDigest": DIGEST[7:19],
            "url": f"http://hello-c.{namespace}.svc",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllReplicasReady",
                    "message": "2 of 2 replicas ready",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    wasmfleet_crds.kubectl(
        "patch",
        "wasmservice",
        "hello-c",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    row = wasmfleet_crds.kubectl("get", "wsvc", "hello-c", "-n", namespace).stdout.splitlines()[1]
    assert row.split()[:5] == [
        "hello-c",
        "2/2",
        "AllReplicasReady",
        "aaaaaaaaaaaa",
        f"http://hello-c.{namespace}.svc",
    ]


def test_kubectl_explain_prints_the_field_docs(wasmfleet_crds: ControlPlane) -> None:
    text = wasmfleet_crds.kubectl("explain", "wasmservice.spec.http").stdout
    assert "Serve the module over HTTP" in text
    for field in ("port", "timeout", "maxConcurrency", "maxRequestBodySize"):
        assert field in text
    assert "503" in wasmfleet_crds.kubectl("explain", "wasmservice.spec.http.maxConcurrency").stdout


def test_kubectl_scale_changes_replicas_through_the_scale_subresource(
    wasmfleet_crds: ControlPlane, namespace: str
) -> None:
    _apply_examples(wasmfleet_crds, namespace)
    wasmfleet_crds.kubectl("scale", "-n", namespace, "wasmservice/hello-go", "--replicas=3")
    spec = wasmfleet_crds.kubectl_json("get", "wasmservice", "hello-go", "-n", namespace)["spec"]
    assert spec["replicas"] == 3
    scale = json.loads(
        wasmfleet_crds.get_raw(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/wasmservices/hello-go/scale"
        )
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_server_side_apply_twice_changes_nothing_and_shows_no_drift(
    wasmfleet_crds: ControlPlane, namespace: str, path: Path
) -> None:
    name = _service_name(path)

    def resource_version() -> str:
        got = wasmfleet_crds.kubectl_json("get", "wasmservice", name, "-n", namespace)
        return str(got["metadata"]["resourceVersion"])

    wasmfleet_crds.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    first = resource_version()
    again = wasmfleet_crds.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    assert "conflict" not in again.stderr.lower()
    assert resource_version() == first
    diff = wasmfleet_crds.kubectl(
        "diff", "--server-side", "-n", namespace, "-f", str(path), check=False
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_an_example_survives_a_round_trip_through_the_api_server(
    custom_api: client.CustomObjectsApi, namespace: str, path: Path
) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document["kind"] != "WasmService":
            continue
        parsed = WasmService.model_validate(document)
        created = _create(custom_api, namespace, parsed.to_kube())
        read = _as_dict(
            custom_api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "wasmservices", created["metadata"]["name"]
            )
        )
        back = WasmService.model_validate({**read, "metadata": {"name": read["metadata"]["name"]}})
        assert back == parsed
