"""Where the pinned control-plane binaries live, and building them when they are missing.

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

__all__ = [
    "REPO_ROOT",
    "TOOLCHAIN_DIR",
    "Binaries",
    "cache_dir",
    "ensure_binaries",
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


def ensure_binaries() -> Binaries:
    """Returns the pinned binaries, building the missing ones first (minutes when cold)."""
    binaries = Binaries.from_cache()
    if binaries.missing():
        if shutil.which("go") is None:
            raise RuntimeError(
                "the control-plane binaries are not cached and Go is not installed: "
                f"missing {', '.join(map(str, binaries.missing()))}"
            )
        subprocess.run(["bash", str(TOOLCHAIN_DIR / "build.sh"), "all"], check=True)
    still_missing = binaries.missing()
    if still_missing:
        raise RuntimeError(f"build.sh finished but these are missing: {still_missing}")
    return binaries
