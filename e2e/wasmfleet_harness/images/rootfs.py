"""Running a program in an image's root filesystem the way the chart runs the container.

The tests pull an image from the registry, mount its root with buildah, and run programs in
it here: in new mount and PID namespaces, with the root read-only (the chart's
``readOnlyRootFilesystem``), a fresh tmpfs on ``/tmp`` (the chart's emptyDir), ``/proc``, a
tmpfs ``/dev`` with the usual device nodes, the chart's other volumes as bind mounts, as the
image's user, with the image's environment. The host's network is shared (the agent's
``hostNetwork``), so a server inside answers on loopback. arm64 roots run through qemu-user's
binfmt handler. No capabilities are dropped beyond what a non-root user lacks anyway.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wasmfleet_harness.processes import ManagedProcess

__all__ = ["Bind", "ImageRoot", "render_launcher"]

_HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# Runs as root in the new namespaces, then hands over to the program. "$@" holds the mount
# triples (HOST GUEST ro|rw) up to "--", then the program's argv.
_LAUNCHER = r"""
set -eu
root=$1 user=$2 image_path=$3
shift 3
mount --bind "$root" "$root"
while [ "$1" != -- ]; do
  host=$1 guest=$2 mode=$3
  shift 3
  if [ -d "$host" ]; then mkdir -p "$root$guest"; else
    mkdir -p "$(dirname "$root$guest")"; touch "$root$guest"; fi
  mount --bind "$host" "$root$guest"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$root$guest"; fi
done
shift
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for device in DEVICES; do
  touch "$root/dev/$device"
  mount --bind "/dev/$device" "$root/dev/$device"
done
mount -o remount,bind,ro "$root"
PATH=$image_path exec /usr/sbin/chroot --userspec="$user" "$root" "$@"
""".replace("DEVICES", " ".join(_DEVICES))


@dataclass(frozen=True)
class Bind:
    """A host path the program sees at ``guest`` (read-only unless ``writable``)."""

    host: Path
    guest: str
    writable: bool = False


def render_launcher(
    root: Path, argv: Sequence[str], *, user: str, path: str, binds: Sequence[Bind] = ()
) -> list[str]:
    """The host command that runs ``argv`` inside ``root`` as described above."""
    mounts = [
        word
        for bind in binds
        for word in (str(bind.host), bind.guest, "rw" if bind.writable else "ro")
    ]
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "sh",
        "-c",
        _LAUNCHER,
        "launcher",
        str(root),
        user,
        path,
        *mounts,
        "--",
        *argv,
    ]


@dataclass(frozen=True)
class ImageRoot:
    """A mounted image root and the process settings of its image configuration."""

    root: Path
    user: str
    """``uid:gid`` (names are not resolved: the chart's securityContext uses numbers)."""
    env: Mapping[str, str]
    entrypoint: tuple[str, ...]

    @classmethod
    def from_config(cls, root: Path, config: Mapping[str, object]) -> ImageRoot:
        """From an OCI image configuration's ``config`` object."""
        user = str(config.get("User") or "0:0")
        if ":" not in user:
            user = f"{user}:{user}"
        env_list = config.get("Env") or []
        entrypoint = config.get("Entrypoint") or []
        if not isinstance(env_list, list) or not isinstance(entrypoint, list):
            raise ValueError("an image configuration's Env and Entrypoint are lists")
        env = dict(str(item).partition("=")[::2] for item in env_list)
        return cls(root, user, env, tuple(str(word) for word in entrypoint))

    def _environment(self) -> dict[str, str]:
        # As a container runtime does: HOME from the user's passwd entry when the image
        # does not set it.
        env = dict(self.env)
        if "HOME" not in env:
            env["HOME"] = self._home()
        return env

    def _check_mount_point(self, guest: str) -> None:
        # The launcher creates mount points with the host's view of the root: a symlink on
        # the way (Debian's /var/run -> /run) would lead it out of the root, onto the host.
        # A runtime resolves such paths inside the root; here they are refused.
        if not guest.startswith("/") or ".." in guest.split("/"):
            raise ValueError(f"mount point {guest!r} must be an absolute path without '..'")
        path = self.root
        for element in guest.strip("/").split("/"):
            path = path / element
            if path.is_symlink():
                raise ValueError(f"mount point {guest!r} crosses a symlink in the image: {path}")

    def _launcher_environment(self) -> dict[str, str]:
        # The launcher runs host tools first; it sets the image's PATH before the program.
        return {**self._environment(), "PATH": _HOST_PATH}

    def _home(self) -> str:
        uid = self.user.partition(":")[0]
        try:
            passwd = (self.root / "etc" / "passwd").read_text()
        except OSError:
            return "/"
        for line in passwd.splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and fields[2] == uid:
                return fields[5]
        return "/"

    def entrypoint_with(self, *args: str) -> list[str]:
        """The image's entrypoint followed by ``args``, as a runtime starts it."""
        return [*self.entrypoint, *args]

    def command(self, argv: Sequence[str], binds: Sequence[Bind] = ()) -> list[str]:
        for guest in ("/tmp", "/proc", "/dev", *(bind.guest for bind in binds)):
            self._check_mount_point(guest)
        return render_launcher(
            self.root,
            argv,
            user=self.user,
            path=self.env.get("PATH", _HOST_PATH),
            binds=binds,
        )

    def run(
        self, argv: Sequence[str], *, binds: Sequence[Bind] = (), timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` to completion (stdout and stderr captured); ``timeout`` bounds it."""
        return subprocess.run(
            self.command(argv, binds),
            capture_output=True,
            text=True,
            env=self._launcher_environment(),
            timeout=timeout,
            check=False,
        )

    def process(
        self, name: str, argv: Sequence[str], *, binds: Sequence[Bind] = (), log_path: Path
    ) -> ManagedProcess:
        """A long-running program (a server) inside the root, not started yet."""
        return ManagedProcess(
            name,
            self.command(argv, binds),
            log_path=log_path,
            env=self._launcher_environment(),
        )
