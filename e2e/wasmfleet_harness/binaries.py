"""Where the pinned control-plane and node binaries live, and building them when missing.

The versions are pinned in ``e2e/toolchain/versions.env``; ``e2e/toolchain/build.sh`` builds
them through the Go module proxy into a cache directory keyed by version. This module reads
the same pins so Python and the shell agree on the paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

__all__ = [
    "REPO_ROOT",
    "TOOLCHAIN_DIR",
    "Binaries",
    "NodeBinaries",
    "cache_dir",
    "ensure_binaries",
    "ensure_node_binaries",
    "pinned_versions",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN_DIR = REPO_ROOT / "e2e" / "toolchain"


def cache_dir() -> Path:
    """The project's cache root: ``$WASMFLEET_CACHE`` or ``$XDG_CACHE_HOME/wasmfleet``."""
    explicit = os.environ.get("WASMFLEET_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "wasmfleet"


def pinned_versions() -> dict[str, str]:
    """The ``NAME=value`` pins of ``versions.env`` (comments and blanks skipped)."""
    pins = {}
    for line in (TOOLCHAIN_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pins[name.strip()] = value.strip()
    return pins


@dataclass(frozen=True)
class Binaries:
    """Paths of the binaries one version pin provides."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path
    kubernetes_version: str
    helm_version: str

    @classmethod
    def from_cache(cls) -> Binaries:
        pins = pinned_versions()
        kube = cache_dir() / "bin" / f"kubernetes-{pins['KUBERNETES_VERSION']}"
        helm = cache_dir() / "bin" / f"helm-{pins['HELM_VERSION']}"
        return cls(
            etcd=kube / "etcd",
            kube_apiserver=kube / "kube-apiserver",
            kube_controller_manager=kube / "kube-controller-manager",
            kubectl=kube / "kubectl",
            helm=helm / "helm",
            kubernetes_version=pins["KUBERNETES_VERSION"],
            helm_version=pins["HELM_VERSION"],
        )

    def missing(self) -> list[Path]:
        paths = [
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kubectl,
            self.helm,
        ]
        return [p for p in paths if not os.access(p, os.X_OK)]


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of what a real node runs: the Kubernetes node components from the same pin as
    the control plane, and the container runtime, OCI runtime, CNI plugins and cluster DNS."""

    kubelet: Path
    kube_proxy: Path
    kube_scheduler: Path
    containerd: Path
    containerd_shim_runc_v2: Path
    ctr: Path
    runc: Path
    cni_bin_dir: Path
    coredns: Path
    kubernetes_version: str
    containerd_version: str
    runc_version: str
    cni_plugins_version: str
    coredns_version: str

    CNI_PLUGINS: ClassVar[tuple[str, ...]] = ("bridge", "host-local", "loopback", "portmap")

    @classmethod
    def from_cache(cls) -> NodeBinaries:
        pins = pinned_versions()
        bin_dir = cache_dir() / "bin"
        kube = bin_dir / f"kubernetes-node-{pins['KUBERNETES_VERSION']}"
        containerd = bin_dir / f"containerd-{pins['CONTAINERD_VERSION']}"
        return cls(
            kubelet=kube / "kubelet",
            kube_proxy=kube / "kube-proxy",
            kube_scheduler=kube / "kube-scheduler",
            containerd=containerd / "containerd",
            containerd_shim_runc_v2=containerd / "containerd-shim-runc-v2",
            ctr=containerd / "ctr",
            runc=bin_dir / f"runc-{pins['RUNC_VERSION']}" / "runc",
            cni_bin_dir=bin_dir / f"cni-plugins-{pins['CNI_PLUGINS_VERSION']}",
            coredns=bin_dir / f"coredns-{pins['COREDNS_VERSION']}" / "coredns",
            kubernetes_version=pins["KUBERNETES_VERSION"],
            containerd_version=pins["CONTAINERD_VERSION"],
            runc_version=pins["RUNC_VERSION"],
            cni_plugins_version=pins["CNI_PLUGINS_VERSION"],
            coredns_version=pins["COREDNS_VERSION"],
        )

    def missing(self) -> list[Path]:
        paths = [
            self.kubelet,
            self.kube_proxy,
            self.kube_scheduler,
            self.containerd,
            self.containerd_shim_runc_v2,
            self.ctr,
            self.runc,
            self.coredns,
            *(self.cni_bin_dir / plugin for plugin in self.CNI_PLUGINS),
        ]
        return [p for p in paths if not os.access(p, os.X_OK)]


def _build(target: str, missing: list[Path]) -> None:
    if shutil.which("go") is None:
        raise RuntimeError(
            f"the {target} binaries are not cached and Go is not installed: "
            f"missing {', '.join(map(str, missing))}"
        )
    subprocess.run(["bash", str(TOOLCHAIN_DIR / "build.sh"), target], check=True)


def ensure_binaries() -> Binaries:
    """Returns the pinned control-plane binaries, building the missing ones first (minutes
    when cold)."""
    binaries = Binaries.from_cache()
    if binaries.missing():
        _build("control-plane", binaries.missing())
    still_missing = binaries.missing()
    if still_missing:
        raise RuntimeError(f"build.sh finished but these are missing: {still_missing}")
    return binaries


def ensure_node_binaries() -> NodeBinaries:
    """Returns the pinned node binaries, building the missing ones first (cold: about
    ten minutes on 2 cores, most of it the kubelet)."""
    binaries = NodeBinaries.from_cache()
    if binaries.missing():
        _build("node", binaries.missing())
    still_missing = binaries.missing()
    if still_missing:
        raise RuntimeError(f"build.sh finished but these are missing: {still_missing}")
    return binaries
