"""Property tests: hostile or malformed input gets a clear refusal, never a crash.

Hypothesis generates the input: a module's stdout (CGI output), request headers, registry
answers (manifests, tar layers, references) and WasmService specs. Each parser must either
return something that holds its invariants or raise its own documented error type.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from wasmfleet_agent.runtime import cgi
from wasmfleet_api.wasmservice import WasmService
from wasmfleet_oci import errors, formats
from wasmfleet_oci.reference import parse_reference
from wasmfleet_operator.planner import NodeInfo, PlacedReplica, plan_placements
from wasmfleet_operator.render import render_revision

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
    min_size=1,
    max_size=20,
)

T = TypeVar("T")


def _refused_or(
    refusal: type[Exception], call: Callable[..., T], *args: Any, **kwargs: Any
) -> T | None:
    """``call``'s result, or None when it raised ``refusal`` with a message saying why; any
    other exception fails the test."""
    message = None
    try:
        return call(*args, **kwargs)
    except refusal as error:
        message = str(error)
    assert message, f"{refusal.__name__} without a message"
    return None


# ---- CGI output ------------------------------------------------------------------------


@EXAMPLES
@given(st.binary(max_size=4096))
def test_any_module_output_is_a_response_or_a_clear_error(output: bytes) -> None:
    response = _refused_or(cgi.CgiError, cgi.parse_output, output)
    if response is None:
        return
    assert 200 <= response.status <= 599
    for name, value in response.headers:
        assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)
        assert not any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value)
    assert any(name.lower() == "content-type" for name, _ in response.headers)
    assert response.body in output


@EXAMPLES
@given(
    st.integers(min_value=200, max_value=599),
    st.lists(
        st.tuples(
            _TOKEN.filter(lambda n: n.lower() != "status"),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
                str.strip
            ),
        ),
        max_size=8,
    ),
    st.binary(max_size=512),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_well_formed_output_round_trips(
    status: int, headers: list[tuple[str, str]], body: bytes, newline: bytes
) -> None:
    lines = [f"Status: {status} Whatever".encode()]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    output = newline.join(lines) + newline + newline + body
    response = cgi.parse_output(output)
    assert response.status == status
    assert response.body == body
    assert [(n, v) for n, v in response.headers if n.lower() != "content-type" or headers][
        : len(headers)
    ] == [(n, v) for n, v in headers][: len(headers)]


@EXAMPLES
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.text(
                alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                max_size=40,
            ),
        ),
        max_size=12,
    )
)
@example(headers=[("0\n", "")])  # "$" in the name pattern once let a trailing newline in
def test_request_headers_become_safe_cgi_variables(headers: list[tuple[str, str]]) -> None:
    variables = cgi.request_variables(
        method="GET",
        path="/",
        query="",
        headers=headers,
        body_length=0,
        remote_addr="10.0.0.1",
        server_name="example",
        server_port=80,
        server_software="wasmfleet",
    )
    names = [name for name, _ in variables]
    assert len(names) == len(set(names))
    for name, value in variables:
        assert re.fullmatch(r"[A-Z0-9_]+", name), name
        assert "\0" not in value
    assert "HTTP_PROXY" not in names


# ---- registry answers ------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
_MANIFEST_KEYS = st.sampled_from(
    ["schemaVersion", "mediaType", "config", "layers", "manifests", "artifactType", "digest"]
)


@EXAMPLES
@given(
    st.dictionaries(_MANIFEST_KEYS, _JSON, max_size=6),
    st.none()
    | st.sampled_from(
        [formats.OCI_MANIFEST, "application/vnd.oci.image.index.v1+json", "text/plain"]
    ),
)
def test_any_manifest_document_parses_or_is_refused_clearly(
    document: dict[str, Any], content_type: str | None
) -> None:
    body = json.dumps(document).encode()
    manifest = _refused_or(
        errors.UnsupportedArtifact, formats.parse_manifest, body, content_type=content_type
    )
    if isinstance(manifest, formats.ImageManifest):
        _refused_or(errors.RegistryError, formats.plan_module_source, manifest)


@EXAMPLES
@given(st.binary(max_size=2048))
def test_any_bytes_as_a_manifest_are_refused_clearly(body: bytes) -> None:
    _refused_or(errors.UnsupportedArtifact, formats.parse_manifest, body)


_MEMBER = st.text(alphabet="ab./", min_size=1, max_size=12)


@EXAMPLES
@given(
    st.lists(
        st.tuples(_MEMBER, st.sampled_from(["file", "dir", "symlink", "hardlink"]), _MEMBER),
        min_size=1,
        max_size=6,
    )
)
def test_tar_layers_never_yield_paths_outside_the_layer(
    members: list[tuple[str, str, str]],
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, target
            data = b"\0asm\1\0\0\0" if kind == "file" else b""
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    entries = _refused_or(
        errors.RegistryError, formats.parse_tar_layer, buffer, max_unpacked_bytes=1 << 20
    )
    for entry in entries or []:
        assert not entry.path.startswith("/"), entry
        assert ".." not in entry.path.split("/"), entry


@EXAMPLES
@given(st.text(max_size=80))
def test_any_text_is_a_reference_or_a_clear_value_error(text: str) -> None:
    reference = _refused_or(ValueError, parse_reference, text)
    if reference is None:
        return
    assert reference.registry
    assert reference.repository
    assert reference.tag is not None or reference.digest is not None


# ---- WasmService specs -----------------------------------------------------------------

_SPEC_VALUES: dict[str, Any] = {
    "replicas": st.integers(min_value=-3, max_value=50) | _JSON,
    "http": st.none()
    | st.just({})
    | st.fixed_dictionaries(
        {}, optional={"port": st.integers(-1, 70000), "timeout": st.text(max_size=6)}
    )
    | _JSON,
    "job": st.none() | st.just({}) | _JSON,
    "env": st.lists(
        st.fixed_dictionaries(
            {"name": st.text(max_size=12)}, optional={"value": st.text(max_size=8)}
        ),
        max_size=3,
    )
    | _JSON,
    "placement": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "architectures": st.lists(st.sampled_from(["amd64", "arm64", "s390x", ""]), max_size=3),
            "nodeSelector": st.dictionaries(_TOKEN, _TOKEN, max_size=2),
        },
    ),
    "strategy": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "maxSurge": st.integers(-1, 5) | st.sampled_from(["25%", "0%", "x"]),
            "maxUnavailable": st.integers(-1, 5) | st.sampled_from(["25%", "100%"]),
        },
    ),
    "resources": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "memory": st.sampled_from(["16Mi", "0", "5Gi", "x"]),
            "fuel": st.integers(-1, 10**9),
        },
    ),
}


@EXAMPLES
@given(
    st.fixed_dictionaries({}, optional=_SPEC_VALUES),
    st.lists(
        st.tuples(_TOKEN, st.sampled_from(["amd64", "arm64"]), st.booleans(), st.integers(0, 4)),
        max_size=5,
        unique_by=lambda n: n[0],
    ),
)
def test_any_spec_is_refused_clearly_or_planned_without_crashing(
    spec: dict[str, Any], nodes: list[tuple[str, str, bool, int]]
) -> None:
    body = {
        "apiVersion": "wasmfleet.dev/v1alpha1",
        "kind": "WasmService",
        "metadata": {"name": "web", "namespace": "team", "uid": "u"},
        "spec": {"module": {"image": "registry.example/team/web:1"}, **spec},
    }
    service = _refused_or(ValidationError, WasmService.model_validate, body)
    if service is None:
        return
    assume(service.spec.replicas >= 0)
    infos = [
        NodeInfo(
            name=name,
            arch=arch,
            labels={"kubernetes.io/arch": arch, "kubernetes.io/hostname": name},
            ready=ready,
            capacity=capacity,
            allocated=0,
        )
        for name, arch, ready, capacity in nodes
    ]
    revision = render_revision(_workload(service), "sha256:" + "a" * 64)
    plan = plan_placements(
        desired=service.spec.replicas,
        revision=revision,
        placement=service.spec.placement,
        strategy=service.spec.strategy,
        nodes=infos,
        replicas=[PlacedReplica(name="old", node=infos[0].name, revision="r0", ready=True)]
        if infos
        else [],
    )
    placed = [p.node for p in plan.create]
    assert len(placed) == len(set(placed))  # bindings are per node and revision
    for node in placed:
        assert any(info.name == node and info.ready for info in infos)
    assert len(plan.create) <= service.spec.replicas + 5


def _workload(service: WasmService) -> Any:

    return service.spec.workload()
