"""The local base image: Debian's python3 from Debian's own packages, no public registry.

No public container registry is reachable from this machine kind, so the images' ``BASE``
(python:3.11-slim-bookworm for Docker users) is made here: ``debootstrap --variant=minbase``
of the suite with python3, python3-venv and ca-certificates, from the mirror apt uses, for
each architecture (arm64 runs its package scripts through qemu-user). The root is trimmed
(apt's lists and caches, logs, manuals, translations; the host's resolv.conf and hostname)
and kept as a tar archive under ``~/.cache/wasmfleet/images/base/``, in a directory named
by `recipe.BaseSpec.key`; the image made from it is named the same way. A warm run finds the
image, or the archive, and spends no time here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_harness.images.buildah import Buildah
from wasmfleet_harness.images.recipe import BaseSpec, Platform, parse_apt_mirror

__all__ = ["BaseImage", "apt_mirror", "ensure_base", "require_emulation"]

APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# Kept out of the archive: the runtime mounts its own /dev, /proc and /sys.
_NOT_ARCHIVED = ("./dev/*", "./proc/*", "./sys/*")


@dataclass(frozen=True)
class BaseImage:
    """A base image in the store and what it holds."""

    reference: str
    platform: Platform
    python: str
    glibc: str
    seconds: float
    """Seconds spent making it in this run (0 when it was there already)."""


def apt_mirror(suite: str) -> str | None:
    """The Debian mirror this machine's apt sources name for ``suite``."""
    texts = []
    for path in APT_SOURCES:
        if path.is_dir():
            files = sorted(path.glob("*.sources")) + sorted(path.glob("*.list"))
        else:
            files = [path]
        texts += [f.read_text(errors="replace") for f in files if f.is_file()]
    return parse_apt_mirror("\n\n".join(texts), suite=suite)


def require_emulation(platform: Platform) -> None:
    """Raises unless this machine can run ``platform``'s programs (natively or by qemu-user)."""
    if platform.machine == os.uname().machine:
        return
    handler = Path(f"/proc/sys/fs/binfmt_misc/qemu-{platform.machine}")
    try:
        enabled = handler.read_text().splitlines()[0] == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        raise RuntimeError(
            f"{platform} programs cannot run here: no enabled binfmt handler at {handler} "
            "(`make system-packages` installs qemu-user-static and registers it)"
        )


def ensure_base(
    buildah: Buildah, spec: BaseSpec, platform: Platform, *, cache: Path, log: Path
) -> BaseImage:
    """The base image for ``platform``, made (debootstrap, minutes) only when neither the
    image nor its archive is there."""
    started = time.monotonic()
    directory = cache / f"{spec.suite}-{platform.architecture}-{spec.key(platform.architecture)}"
    facts_file = directory / "base.json"
    reference = spec.reference(platform.architecture)
    if not facts_file.is_file():
        require_emulation(platform)
        _bootstrap(spec, platform, directory, log=log)
    facts = json.loads(facts_file.read_text())
    if not buildah.image_exists(reference):
        buildah.import_rootfs(
            directory / "rootfs.tar", reference=reference, platform=platform, env=ENV, cmd="bash"
        )
    return BaseImage(
        reference=reference,
        platform=platform,
        python=str(facts["python"]),
        glibc=str(facts["glibc"]),
        seconds=time.monotonic() - started,
    )


def _bootstrap(spec: BaseSpec, platform: Platform, directory: Path, *, log: Path) -> None:
    # Everything happens in a scratch directory beside the final one, which appears by a
    # rename: an interrupted run leaves nothing that looks finished.
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".making-", dir=directory.parent))
    try:
        root = scratch / "root"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as sink:
            subprocess.run(
                [
                    "debootstrap",
                    f"--variant={spec.variant}",
                    f"--arch={platform.architecture}",
                    f"--include={','.join(spec.packages)}",
                    spec.suite,
                    str(root),
                    spec.mirror,
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                check=True,
            )
        _trim(root)
        python, glibc = _versions(root)
        subprocess.run(
            [
                "tar",
                "--create",
                "--file",
                str(scratch / "rootfs.tar"),
                "--numeric-owner",
                "--xattrs",
                *(f"--exclude={pattern}" for pattern in _NOT_ARCHIVED),
                "--directory",
                str(root),
                ".",
            ],
            check=True,
        )
        shutil.rmtree(root)
        facts = {"python": python, "glibc": glibc, "suite": spec.suite, "mirror": spec.mirror}
        (scratch / "base.json").write_text(json.dumps(facts, indent=2) + "\n")
        scratch.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _empty(directory: Path) -> None:
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _trim(root: Path) -> None:
    """Removes what an image does not run with; license files stay."""
    for relative in (
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "tmp",
    ):
        _empty(root / relative)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for package in (root / "usr/share/doc").iterdir():
        if package.is_symlink() or not package.is_dir():
            continue  # a link to another package's directory, trimmed there
        for entry in package.iterdir():
            if entry.name == "copyright":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    # debootstrap copies these from the host; a container runtime mounts its own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (root / name).write_text("")


def _versions(root: Path) -> tuple[str, str]:
    """Python's version (major.minor) and glibc's in ``root``, asked of its own python3."""
    probe = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])"
    output = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": ENV["PATH"], "LANG": "C.UTF-8"},
    ).stdout.split()
    return output[0], output[1]
