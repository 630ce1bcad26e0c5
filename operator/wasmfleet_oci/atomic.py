"""Files that appear whole or not at all.

The cache hands out paths that the runtime reads (and later memory-maps), so a crash, a full
disk or a digest mismatch must never leave a partial file under a final name. Every write goes
to a hidden temporary file in the destination's own directory, is flushed and fsynced, and is
then renamed over the final name; the directory is fsynced so the rename survives a power cut.
Temporary names start with ``.partial-`` so a scan can recognise and remove leftovers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PARTIAL_PREFIX",
    "commit_temporary",
    "discard_temporary",
    "fsync_directory",
    "open_temporary",
    "write_atomically",
]

PARTIAL_PREFIX = ".partial-"


def open_temporary(directory: Path) -> tuple[BinaryIO, Path]:
    """Creates an empty, exclusively owned temporary file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=directory)
    return os.fdopen(descriptor, "w+b"), Path(name)


def discard_temporary(handle: BinaryIO, path: Path) -> None:
    """Closes and deletes a temporary file that will not be committed."""
    with contextlib.suppress(OSError):
        handle.close()
    path.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Makes the entries of ``directory`` (a rename into it) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit_temporary(handle: BinaryIO, path: Path, destination: Path) -> None:
    """Flushes, fsyncs and closes ``handle``, then renames ``path`` to ``destination``.

    ``destination`` must be in the same directory (the same file system) as ``path``; on any
    failure the temporary file is deleted and the destination is left as it was.
    """
    try:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(path, destination)
    except BaseException:
        discard_temporary(handle, path)
        raise
    fsync_directory(destination.parent)


def write_atomically(destination: Path, data: bytes) -> None:
    """Writes ``data`` to ``destination`` through a temporary file and a rename."""
    handle, path = open_temporary(destination.parent)
    try:
        handle.write(data)
    except BaseException:
        discard_temporary(handle, path)
        raise
    commit_temporary(handle, path, destination)
