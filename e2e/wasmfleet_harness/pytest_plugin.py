"""pytest fixtures that start each real service once per test session.

Loaded for every test run through ``-p wasmfleet_harness.pytest_plugin`` in pyproject.toml.
Fixtures are lazy: a unit-test run starts nothing, a component run starts registries, and only
tests that ask for ``control_plane`` start etcd and kube-apiserver (building them first if the
cache is cold).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wasmfleet_harness.binaries import REPO_ROOT, Binaries, ensure_binaries
from wasmfleet_harness.controlplane import ControlPlane
from wasmfleet_harness.findings import Findings
from wasmfleet_harness.images import distribution
from wasmfleet_harness.images.build import BuiltImage, build_images
from wasmfleet_harness.images.buildah import Buildah
from wasmfleet_harness.images.recipe import Platform
from wasmfleet_harness.images.rootfs import ImageRoot
from wasmfleet_harness.modules import build_all
from wasmfleet_harness.processes import Workspace, install_termination_handler
from wasmfleet_harness.registry import BasicAuth, Registry
from wasmfleet_harness.token_server import TokenServer

__all__ = [
    "binaries",
    "control_plane",
    "findings",
    "image_root",
    "namespace",
    "project_images",
    "registry",
    "registry_basic_auth",
    "registry_with_basic_auth",
    "registry_with_token_auth",
    "wasm_modules",
    "wasmfleet_crds",
    "workspace",
]


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`) then unwinds through the fixtures' finalizers.
    install_termination_handler()


def _workspace_root() -> Path:
    return Path(os.environ.get("WASMFLEET_TEST_TMP", "/tmp")) / "wasmfleet-tests"


@pytest.fixture(scope="session")
def workspace() -> Iterator[Workspace]:
    """One scratch directory for the whole session, removed at its end."""
    with Workspace(root=_workspace_root()) as ws:
        yield ws


@pytest.fixture(scope="session")
def findings() -> Iterator[Findings]:
    """Rows for `docs/reliability.md`, saved to ``build/reports/reliability.json`` at the end."""
    found = Findings()
    yield found
    found.save()


@pytest.fixture(scope="session")
def wasm_modules() -> dict[str, Path]:
    """Every example and test module, built from source; name -> path of the ``.wasm``."""
    return build_all()


@pytest.fixture(scope="session")
def registry(workspace: Workspace) -> Iterator[Registry]:
    """An anonymous-access OCI registry on loopback."""
    server = Registry(workspace.subdir("registry"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_basic_auth() -> BasicAuth:
    return BasicAuth(username="wasmfleet", password="s3cret-for-tests")


@pytest.fixture(scope="session")
def registry_with_basic_auth(
    workspace: Workspace, registry_basic_auth: BasicAuth
) -> Iterator[Registry]:
    """An OCI registry that refuses anonymous access (htpasswd basic auth)."""
    server = Registry(
        workspace.subdir("registry-auth"), auth=registry_basic_auth, name="registry-auth"
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_with_token_auth(
    workspace: Workspace, registry_basic_auth: BasicAuth
) -> Iterator[Registry]:
    """An OCI registry that only accepts bearer tokens from its token server.

    ``registry.token_server`` issues them to the ``registry_basic_auth`` user (anonymous
    callers get tokens that grant nothing) and records every token it issued.
    """
    directory = workspace.subdir("registry-token")
    tokens = TokenServer(
        directory / "token-server",
        users={registry_basic_auth.username: registry_basic_auth.password},
    )
    server = Registry(directory, token_server=tokens, name="registry-token")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        tokens.stop()


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The pinned control-plane binaries, built through the Go module proxy if missing."""
    return ensure_binaries()


@pytest.fixture(scope="session")
def control_plane(binaries: Binaries, workspace: Workspace) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, ready, for the whole session."""
    plane = ControlPlane(binaries, workspace.subdir("control-plane"))
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def wasmfleet_crds(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with Wasmfleet's CRDs from ``crds/`` applied and established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=wasmfleet"
    )
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def project_images(registry: Registry) -> dict[str, BuiltImage]:
    """The operator and agent images (name -> image) for linux/amd64 and linux/arm64 in the
    session's registry: built, or reused from the image store in ``~/.cache/wasmfleet``.

    Cold, this makes the Debian base images first (debootstrap; arm64 under emulation): give
    the first test that asks for it a long timeout.
    """
    return {image.name: image for image in build_images(registry=registry.host)}


@pytest.fixture(scope="session")
def image_root(
    workspace: Workspace, registry: Registry, project_images: dict[str, BuiltImage]
) -> Iterator[Callable[[str, Platform], ImageRoot]]:
    """``image_root(name, platform)``: that image pulled from the registry into an image store
    of the session's own (once), its root mounted, with the settings of its configuration."""
    directory = workspace.subdir("pulled-images")
    store = Buildah(root=directory / "root", runroot=directory / "run")
    roots: dict[tuple[str, Platform], ImageRoot] = {}

    def pull(name: str, platform: Platform) -> ImageRoot:
        if (name, platform) not in roots:
            image = project_images[name]
            container = store.pull(image.reference, platform=platform, tls_verify=False)
            repository = image.repository.partition("/")[2]
            config = distribution.fetch_config(registry.host, repository, image.tag, platform)
            roots[name, platform] = ImageRoot.from_config(store.mount(container), config["config"])
        return roots[name, platform]

    yield pull
    store.remove_all_containers()
