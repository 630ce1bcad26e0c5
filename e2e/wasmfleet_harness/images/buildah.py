"""The only module that runs ``buildah``: image builds, manifest lists, pushes, root filesystems.

Every call names the same private image store (``--root``, ``--runroot``), so the project's
images, bases and working containers never mix with the machine's own store, and a test can
pull into a store of its own. Builds use chroot isolation: no OCI runtime is needed, the
build's RUN steps share the host's network, and arm64 steps run through qemu-user's binfmt
handler (registered with the F flag, so it works inside the chroot).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmfleet_harness.images.recipe import Platform

__all__ = ["Buildah", "BuildahError", "buildah_binary"]


class BuildahError(RuntimeError):
    """A buildah command failed; the message holds its command line and its output."""


def buildah_binary() -> str:
    path = shutil.which("buildah")
    if path is None:
        raise BuildahError("buildah is not installed: run `make system-packages`")
    return path


@dataclass(frozen=True)
class Buildah:
    """buildah bound to one image store."""

    root: Path
    runroot: Path
    driver: str = "overlay"

    def _argv(self, args: Sequence[str | os.PathLike[str]]) -> list[str]:
        return [
            buildah_binary(),
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
            *(os.fspath(arg) for arg in args),
        ]

    def run(
        self,
        *args: str | os.PathLike[str],
        log: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Runs one buildah command; its output goes to ``log`` when given (long builds),
        else it is returned. A failure raises `BuildahError` with the output's tail."""
        argv = self._argv(args)
        if log is None:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            output = result.stdout + result.stderr
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as sink:
                result = subprocess.run(
                    argv, stdout=sink, stderr=subprocess.STDOUT, text=True, check=False
                )
            output = log.read_text(errors="replace")
        if check and result.returncode != 0:
            tail = "\n".join(output.splitlines()[-30:])
            where = f" (log: {log})" if log is not None else ""
            raise BuildahError(f"{' '.join(argv)} exited with {result.returncode}{where}\n{tail}")
        return result

    def image_exists(self, reference: str) -> bool:
        return self.run("inspect", "--type", "image", reference, check=False).returncode == 0

    def manifest_exists(self, reference: str) -> bool:
        return self.run("manifest", "inspect", reference, check=False).returncode == 0

    def image_config(self, reference: str) -> dict[str, Any]:
        """The OCI image configuration (architecture, os, config: User, Env, Entrypoint...)."""
        config: dict[str, Any] = self._inspect(reference)["OCIv1"]
        return config

    def image_size(self, reference: str) -> int:
        """Bytes of the image's layers, unpacked (the store keeps them uncompressed)."""
        manifest = json.loads(self._inspect(reference)["Manifest"])
        return sum(int(layer["size"]) for layer in manifest["layers"])

    def _inspect(self, reference: str) -> dict[str, Any]:
        details: dict[str, Any] = json.loads(
            self.run("inspect", "--type", "image", reference).stdout
        )
        return details

    def build(
        self,
        *,
        context: Path,
        dockerfile: Path,
        platform: Platform,
        tag: str,
        build_args: Mapping[str, str],
        volumes: Sequence[str] = (),
        log: Path,
    ) -> None:
        """Builds one platform's image from a Dockerfile into the store, as ``tag``.

        ``--pull=never``: every base is local, and a name that is not must fail here rather
        than reach out to a public registry.
        """
        args: list[str] = [
            "build",
            "--isolation",
            "chroot",
            "--pull=never",
            "--platform",
            str(platform),
            "--file",
            str(dockerfile),
            "--tag",
            tag,
        ]
        for name, value in build_args.items():
            args += ["--build-arg", f"{name}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        self.run(*args, str(context), log=log)

    def import_rootfs(
        self,
        archive: Path,
        *,
        reference: str,
        platform: Platform,
        env: Mapping[str, str],
        cmd: str,
    ) -> None:
        """Commits a root filesystem (a tar archive) as a one-layer image ``reference``."""
        container = self.run("from", "--quiet", "scratch").stdout.strip()
        try:
            self.run("add", "--quiet", container, str(archive), "/")
            config = ["config", "--os", platform.os, "--arch", platform.architecture]
            for name, value in env.items():
                config += ["--env", f"{name}={value}"]
            self.run(*config, "--cmd", cmd, container)
            self.run("commit", "--quiet", "--rm", container, reference)
        except BaseException:
            self.run("rm", container, check=False)
            raise

    def image_names(self, repository: str) -> list[str]:
        """Names (``repository:tag``) of the stored images and manifest lists in
        ``repository``."""
        images: list[dict[str, Any]] = json.loads(self.run("images", "--json").stdout or "[]")
        return [
            name
            for image in images or []
            for name in image.get("names") or []
            if name.rpartition(":")[0] == repository
        ]

    def remove_image(self, reference: str) -> None:
        """Removes an image or a manifest list (not the images a list names)."""
        if self.manifest_exists(reference):
            self.run("manifest", "rm", reference)
        else:
            self.run("rmi", reference)

    def create_manifest_list(self, reference: str, images: Sequence[str]) -> None:
        """Makes ``reference`` a manifest list of exactly ``images`` (each already stored);
        a list of that name from an earlier run is replaced."""
        if self.manifest_exists(reference):
            self.run("manifest", "rm", reference)
        self.run("manifest", "create", reference)
        for image in images:
            self.run("manifest", "add", reference, f"containers-storage:{image}")

    def push_manifest_list(
        self, reference: str, destination: str, *, tls_verify: bool, digest_file: Path
    ) -> str:
        """Pushes the list and every image in it to ``destination`` (``host/repo:tag``) as an
        OCI image index; returns the index's digest."""
        self.run(
            "manifest",
            "push",
            "--all",
            "--quiet",
            "--format",
            "oci",
            f"--tls-verify={str(tls_verify).lower()}",
            "--digestfile",
            str(digest_file),
            reference,
            f"docker://{destination}",
        )
        return digest_file.read_text().strip()

    def pull(self, source: str, *, platform: Platform, tls_verify: bool) -> str:
        """Pulls one platform's image of ``source`` (``host/repo:tag``) into a new working
        container; returns the container's name."""
        return self.run(
            "from",
            "--quiet",
            "--pull=always",
            "--platform",
            str(platform),
            f"--tls-verify={str(tls_verify).lower()}",
            f"docker://{source}",
        ).stdout.strip()

    def mount(self, container: str) -> Path:
        """Mounts the container's root filesystem (writable: its own layer) and returns it."""
        return Path(self.run("mount", container).stdout.strip())

    def remove_container(self, container: str) -> None:
        self.run("rm", container)

    def remove_all_containers(self) -> None:
        self.run("rm", "--all")
