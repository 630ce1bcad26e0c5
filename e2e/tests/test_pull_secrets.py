"""One rule for pull secrets, on the real API server and registry: the operator and the agents
accept and refuse the same Secrets.

The operator once resolved a tag with a Secret of type Opaque that held a docker config,
which every agent then refused ("not of type kubernetes.io/dockerconfigjson"), so the service
crash-looped on every node instead of saying at once what was wrong.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from wasmfleet_agent.cluster.config import ConfigError, resolve_config
from wasmfleet_api.base import LocalObjectReference
from wasmfleet_api.workload import WorkloadSpec
from wasmfleet_common.kube import KubeClient, KubeConfig
from wasmfleet_harness.agent import push_module
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.registry import Registry
from wasmfleet_oci.client import ClientSettings
from wasmfleet_operator.resolver import ResolveError, Resolver


def _secret(namespace: str, name: str, type_: str, registry: Registry) -> dict[str, object]:
    config = {"auths": {registry.host: {"username": "u", "password": "p"}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": type_,
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


@pytest.mark.parametrize(
    ("type_", "refused"), [("Opaque", True), ("kubernetes.io/dockerconfigjson", False)]
)
async def test_the_operator_and_the_agent_accept_and_refuse_the_same_pull_secrets(
    control_plane: ControlPlane,
    namespace: str,
    registry: Registry,
    wasm_modules: dict[str, Path],
    tmp_path: Path,
    type_: str,
    refused: bool,
) -> None:
    image = f"{registry.host}/wasmfleet/pull-secrets/hello-c:1.0"
    push_module(wasm_modules["hello-c"], image)
    control_plane.kubectl_apply(_secret(namespace, "regcred", type_, registry))
    workload = WorkloadSpec.model_validate(
        {"module": {"image": image, "pullSecrets": [{"name": "regcred"}]}, "http": {}}
    )
    async with KubeClient(
        KubeConfig.from_kubeconfig(control_plane.kubeconfig), field_manager="test"
    ) as kube:
        resolver = Resolver(kube, ClientSettings())
        try:
            operator_error = None
            try:
                digest = await resolver.resolve(
                    namespace, image, [LocalObjectReference(name="regcred")]
                )
                assert digest.startswith("sha256:")
            except ResolveError as error:
                operator_error = error
        finally:
            await resolver.close()
        agent_error = None
        try:
            config = await resolve_config(kube, namespace, workload, tmp_path)
            assert registry.host in config.credentials
        except ConfigError as error:
            agent_error = error
    if refused:
        assert operator_error is not None, "the operator resolved with a Secret agents refuse"
        assert operator_error.reason == "PullFailed"
        assert str(agent_error) == operator_error.message
        assert "pull secret regcred is not of type kubernetes.io/dockerconfigjson" in str(
            agent_error
        )
    else:
        assert operator_error is None
        assert agent_error is None
