"""The wheels an image build installs, downloaded on the host before the build.

Local builds install from this directory only (a ``pip.conf`` with ``no-index`` is mounted
into the build's RUN steps; the Dockerfiles do not know). Three reasons: the download runs
natively and once (later builds reuse the files); a build never depends on the network,
where this machine kind's TLS interception would need the host's CA inside the build; and
what is installed is exactly what `.ci/constraints.txt` pins for that platform. One directory
holds the wheels of every platform: pip in the build picks the ones its ``--platform`` tags
allow, as ``operator/install-venv.sh`` asks.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from wasmfleet_harness.images.recipe import ImageProject, Platform, wheel_platforms

__all__ = ["ensure_wheels"]


def ensure_wheels(
    project: ImageProject,
    platform: Platform,
    *,
    python: str,
    glibc: str,
    constraints: Path,
    directory: Path,
) -> bool:
    """Downloads, for ``platform`` with that Python and glibc, the wheels of the project's
    dependencies (at the pinned versions) and of its build backend into ``directory``.

    Returns False when an earlier call with the same inputs already did (a marker file named
    by their digest records it), True when it downloaded.
    """
    requirements = [*project.dependencies, *project.build_requires]
    key = hashlib.sha256(
        json.dumps(
            [requirements, constraints.read_text(), platform.machine, python, glibc]
        ).encode()
    ).hexdigest()[:16]
    marker = directory / f".complete-{key}"
    if marker.is_file():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python.replace(".", "")
    platforms = [
        argument
        for tag in wheel_platforms(platform.machine, glibc=glibc)
        for argument in ("--platform", tag)
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            str(directory),
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            abi,
            "--abi",
            "abi3",
            "--abi",
            "none",
            *platforms,
            "--constraint",
            str(constraints),
            *requirements,
        ],
        check=True,
    )
    marker.write_text(json.dumps({"requirements": requirements, "platform": str(platform)}))
    return True
