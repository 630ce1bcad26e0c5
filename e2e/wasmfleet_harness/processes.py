"""Child processes and scratch directories that never outlive the run that made them.

Every server the harness starts (etcd, kube-apiserver, the registry, later the operator and
agents) goes through `ManagedProcess`, so shutdown is one code path: SIGTERM to the child's
process group, then SIGKILL after a grace period. Children started with ``tie_to_parent``
also get ``PR_SET_PDEATHSIG``: if the Python process dies without running its finalizers
(SIGKILL, a crash), the kernel kills them too. Scratch directories come from `Workspace`,
which records its owner's pid so that a later run can remove what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

__all__ = [
    "ManagedProcess",
    "ProcessFailedError",
    "Workspace",
    "free_port",
    "install_termination_handler",
    "wait_until",
]

_PR_SET_PDEATHSIG = 1
_OWNER_FILE = "owner.pid"


class ProcessFailedError(RuntimeError):
    """A managed process exited or never became ready; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> None:
    """Polls ``condition`` until it returns true; raises TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:.1f}s)")
        time.sleep(interval)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when the
    # thread that forked it exits, so a killed test run cannot leave servers behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ManagedProcess:
    """One long-running child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        tie_to_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.tie_to_parent = tie_to_parent
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Starts the process; its stdout and stderr are appended to ``log_path``.

        With ``tie_to_parent`` this must be called from a thread that outlives the child
        (the main thread): the kernel's parent-death signal follows the forking thread.
        """
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.tie_to_parent else None,
            )

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def check_alive(self) -> None:
        """Raises `ProcessFailedError` with the log tail if the process has exited."""
        if not self.alive():
            raise ProcessFailedError(
                f"{self.name} exited with code {self.returncode()}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        """Sends ``signum`` to the whole process group of the child."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signum)

    def kill(self) -> None:
        """SIGKILLs the process group at once and reaps it (what a crash looks like)."""
        if self._popen is None:
            return
        self.signal(signal.SIGKILL)
        self._popen.wait()

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the child is reaped."""
        if self._popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        # A child that forked helpers into its group may leave them after it exits.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workspace:
    """A scratch directory under ``root`` that is removed on `close`, or by a later run.

    ``root`` holds one ``wasmfleet-*`` directory per live run; `sweep_stale` removes those
    whose recorded owner process is gone (a run killed before its finalizers ran).
    """

    def __init__(self, *, root: Path | None = None, prefix: str = "wasmfleet-") -> None:
        self.root = root if root is not None else Path(tempfile.gettempdir())
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_stale(self.root, prefix=prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        (self.path / _OWNER_FILE).write_text(str(os.getpid()))
        self._closed = False

    @staticmethod
    def sweep_stale(root: Path, *, prefix: str = "wasmfleet-") -> list[Path]:
        """Removes ``prefix*`` directories in ``root`` whose owner process has exited."""
        removed = []
        for candidate in root.glob(f"{prefix}*"):
            owner = candidate / _OWNER_FILE
            try:
                pid = int(owner.read_text())
            except (OSError, ValueError):
                continue
            if not _pid_alive(pid):
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
        return removed

    def subdir(self, name: str) -> Path:
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        if not self._closed:
            shutil.rmtree(self.path, ignore_errors=True)
            self._closed = True

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_termination_handler() -> None:
    """Turns SIGTERM into `KeyboardInterrupt`, so a terminated run unwinds like Ctrl-C.

    pytest then stops the session and still runs every fixture's finalizer, and ``finally``
    blocks elsewhere stop their servers.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


@contextlib.contextmanager
def started(process: ManagedProcess, *, grace: float = 10.0) -> Iterator[ManagedProcess]:
    """Starts ``process`` for the duration of the ``with`` block."""
    process.start()
    try:
        yield process
    finally:
        process.stop(grace=grace)
