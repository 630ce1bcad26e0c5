"""The local control plane is a real Kubernetes API: watches, authentication and RBAC work."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.processes import wait_until


@pytest.fixture
def core_api(control_plane: ControlPlane) -> Iterator[client.CoreV1Api]:
    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    with api_client:
        yield client.CoreV1Api(api_client)


def test_server_reports_the_pinned_version(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.get_raw("/version"))
    assert version["gitVersion"] == control_plane.binaries.kubernetes_version
    assert control_plane.get_raw("/readyz") == "ok"


def test_a_watch_sees_a_configmap_created_and_modified_with_kubectl(
    control_plane: ControlPlane, namespace: str, core_api: client.CoreV1Api
) -> None:
    listing = core_api.list_namespaced_config_map(namespace)
    assert listing.metadata is not None
    start = listing.metadata.resource_version
    control_plane.kubectl("create", "configmap", "greeting", "-n", namespace, "--from-literal=a=1")
    control_plane.kubectl(
        "patch", "configmap", "greeting", "-n", namespace, "-p", '{"data":{"a":"2"}}'
    )

    seen: list[tuple[str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        core_api.list_namespaced_config_map,
        namespace,
        resource_version=start,
        timeout_seconds=20,
    ):
        obj = event["object"]
        if obj.metadata.name == "greeting":
            seen.append((event["type"], obj.data["a"]))
        if len(seen) == 2:
            stream.stop()
    assert seen == [("ADDED", "1"), ("MODIFIED", "2")]


def test_a_service_account_token_is_denied_without_a_binding_and_allowed_with_one(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = control_plane.kubectl(
        "create", "token", "reader", "-n", namespace, "--duration=10m"
    ).stdout.strip()
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig")
    reader_api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    with pytest.raises(client.ApiException) as denied:
        reader_api.list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(denied.value.body)

    control_plane.kubectl(
        "create",
        "role",
        "read-configmaps",
        "-n",
        namespace,
        "--verb=get,list",
        "--resource=configmaps",
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "reader-reads",
        "-n",
        namespace,
        "--role=read-configmaps",
        f"--serviceaccount={namespace}:reader",
    )

    def allowed() -> bool:
        try:
            reader_api.list_namespaced_config_map(namespace)
        except client.ApiException as error:
            if error.status != 403:
                raise
            return False
        return True

    # The RBAC authorizer reads bindings through an informer: poll, don't assume.
    wait_until(allowed, timeout=10, message="RoleBinding never took effect")
    with pytest.raises(client.ApiException) as still_denied:
        reader_api.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403
    reader_api.api_client.close()


def test_an_unauthenticated_request_is_refused(control_plane: ControlPlane) -> None:
    context = ssl.create_default_context(cafile=str(control_plane.pki_dir / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(control_plane.server + "/api/v1/namespaces", context=context)
    assert refused.value.code in (401, 403)
    refused.value.close()


def test_deleting_an_owner_cascades_to_its_dependents(
    control_plane: ControlPlane, namespace: str, core_api: client.CoreV1Api
) -> None:
    owner = core_api.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    assert owner.metadata is not None
    owner_uid = owner.metadata.uid
    core_api.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner_uid
                    )
                ],
            )
        ),
    )
    core_api.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        items = core_api.list_namespaced_config_map(namespace).items
        names = [c.metadata.name for c in items if c.metadata is not None]
        return "dependent" not in names

    # Only the garbage collector in kube-controller-manager makes this true.
    wait_until(dependent_gone, timeout=30, message="garbage collector did not cascade")
