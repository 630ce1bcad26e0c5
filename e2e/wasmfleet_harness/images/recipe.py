"""What goes into the project's container images, as values computed from the repository.

Pure: the functions take file contents and names and return values; building, pushing and
running images happen in the modules beside this one. The rules held here:

- which images there are (`IMAGES`): each has a Dockerfile and a project file
  (``node-agent/pyproject.toml``, ``operator/pyproject.toml``) naming what it ships;
- which files of the repository reach an image: its Dockerfile's ``COPY`` sources, less what
  ``.dockerignore`` keeps out of the build context; their digest names the image (`image_tag`);
- the local base image, a Debian root made by debootstrap, named by what made it (`BaseSpec`);
- the pip platform tags of the wheels a platform runs (`wheel_platforms`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "IMAGES",
    "IMAGE_NAMES",
    "PLATFORMS",
    "BaseSpec",
    "ContextFile",
    "IgnoreRule",
    "ImageProject",
    "ImageSpec",
    "Platform",
    "content_digest",
    "image_spec",
    "image_tag",
    "is_excluded",
    "parse_apt_mirror",
    "parse_copy_sources",
    "parse_dockerignore",
    "parse_image_project",
    "render_pip_conf",
    "wheel_platforms",
]


@dataclass(frozen=True, order=True)
class Platform:
    """An OCI platform (``linux/arm64``): what an image index lists, and what buildah builds."""

    os: str
    architecture: str

    @classmethod
    def parse(cls, text: str) -> Platform:
        os_name, slash, architecture = text.partition("/")
        if not slash or not os_name or architecture not in _MACHINES:
            known = ", ".join(f"linux/{a}" for a in _MACHINES)
            raise ValueError(f"unknown platform {text!r} (known: {known})")
        return cls(os_name, architecture)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}"

    @property
    def machine(self) -> str:
        """The kernel's and the wheels' name for the architecture (``uname -m``)."""
        return _MACHINES[self.architecture]

    @classmethod
    def of_machine(cls, machine: str) -> Platform:
        """The Linux platform of a machine name (``uname -m``)."""
        for architecture, name in _MACHINES.items():
            if name == machine:
                return cls("linux", architecture)
        raise ValueError(f"no platform known for machine {machine!r}")


# OCI architecture names and the machine names wheels are tagged with.
_MACHINES: Final = {"amd64": "x86_64", "arm64": "aarch64"}

PLATFORMS: Final = (Platform("linux", "amd64"), Platform("linux", "arm64"))


@dataclass(frozen=True)
class ImageSpec:
    """One of the project's images: where its recipe is and what it is called."""

    name: str
    repository: str
    dockerfile: str
    project: str

    @property
    def pyproject(self) -> str:
        return posixpath.join(self.project, "pyproject.toml")


IMAGES: Final = (
    ImageSpec("agent", "wasmfleet/agent", "node-agent/Dockerfile", "node-agent"),
    ImageSpec("operator", "wasmfleet/operator", "operator/Dockerfile", "operator"),
)


IMAGE_NAMES: Final = tuple(spec.name for spec in IMAGES)


def image_spec(name: str) -> ImageSpec:
    for spec in IMAGES:
        if spec.name == name:
            return spec
    raise ValueError(f"no image called {name!r} (known: {', '.join(s.name for s in IMAGES)})")


@dataclass(frozen=True)
class ImageProject:
    """An image's project file: the distribution its Dockerfile installs.

    ``packages`` and ``force_include`` are hatch's settings, relative to ``directory``;
    `shipped` turns them into repository paths.
    """

    directory: str
    name: str
    version: str
    dependencies: tuple[str, ...]
    build_requires: tuple[str, ...]
    scripts: Mapping[str, str]
    packages: tuple[str, ...]
    force_include: Mapping[str, str] = field(default_factory=dict)

    def shipped(self) -> dict[str, str]:
        """Path inside the wheel -> path in the repository, for each package or file it
        ships (hatch's ``packages`` keep their last component as their name)."""
        shipped = {
            posixpath.basename(package): posixpath.normpath(posixpath.join(self.directory, package))
            for package in self.packages
        }
        for source, destination in self.force_include.items():
            shipped[destination] = posixpath.normpath(posixpath.join(self.directory, source))
        return shipped


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where} must be a list of strings")
    return tuple(value)


def _table(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{where} must be a table of strings")
    return dict(value)


def parse_image_project(text: str, *, directory: str) -> ImageProject:
    """Reads a ``pyproject.toml`` that lives in ``directory`` (relative to the repository)."""
    data = tomllib.loads(text)
    project = data.get("project", {})
    wheel = data.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    wheel = wheel.get("wheel", {})
    name, version = project.get("name"), project.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise ValueError(f"{directory}/pyproject.toml: project.name and .version are required")
    return ImageProject(
        directory=directory,
        name=name,
        version=version,
        dependencies=_strings(project.get("dependencies", []), "project.dependencies"),
        build_requires=_strings(data.get("build-system", {}).get("requires", []), "requires"),
        scripts=_table(project.get("scripts", {}), "project.scripts"),
        packages=_strings(wheel.get("packages", []), "wheel.packages"),
        force_include=_table(wheel.get("force-include", {}), "wheel.force-include"),
    )


def _instructions(dockerfile: str) -> Iterable[tuple[str, str]]:
    """(keyword, arguments) of each instruction, continuation lines joined, comments out."""
    lines: list[str] = []
    for raw in dockerfile.splitlines():
        stripped = raw.strip()
        if not lines and (not stripped or stripped.startswith("#")):
            continue
        if lines and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if stripped.endswith("\\"):
            lines.append(stripped[:-1])
            continue
        lines.append(stripped)
        keyword, _, arguments = " ".join(lines).strip().partition(" ")
        lines = []
        yield keyword.upper(), arguments.strip()


def parse_copy_sources(dockerfile: str) -> tuple[str, ...]:
    """The build-context paths a Dockerfile's ``COPY`` and ``ADD`` instructions read.

    Copies from another stage (``--from=``) read no context and are left out. Both the
    shell form and the JSON form are understood; URLs in ``ADD`` are refused (an image's
    inputs must be files of the repository, or its tag would not say what is in it).
    """
    sources: list[str] = []
    for keyword, arguments in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(arguments)
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        operands = [w for w in words if not w.startswith("--")]
        if operands and operands[0].startswith("["):
            operands = list(json.loads(arguments[arguments.index("[") :]))
        if len(operands) < 2:
            raise ValueError(f"{keyword} {arguments!r}: expected sources and a destination")
        for source in operands[:-1]:
            if "://" in source:
                raise ValueError(f"{keyword} {source!r}: only repository files may go in")
            sources.append(posixpath.normpath(source.lstrip("/")))
    return tuple(sources)


@dataclass(frozen=True)
class IgnoreRule:
    """One line of ``.dockerignore``: a pattern, or an exception to the ones before it."""

    pattern: re.Pattern[str]
    exclude: bool


def _pattern(text: str) -> re.Pattern[str]:
    # Docker's rules (Go's filepath.Match plus `**`): `*` and `?` stay within one path
    # element, `**` spans any number of them. Character classes are not used here.
    if any(char in text for char in "[]\\"):
        raise ValueError(f".dockerignore pattern {text!r}: character classes are not supported")
    elements = posixpath.normpath(text.lstrip("/")).split("/")
    regex: list[str] = []
    for index, element in enumerate(elements):
        last = index == len(elements) - 1
        if element == "**":
            regex.append(".*" if last else "(?:[^/]*/)*")
            continue
        for char in element:
            regex.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
        if not last:
            regex.append("/")
    return re.compile("".join(regex))


def parse_dockerignore(text: str) -> tuple[IgnoreRule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        rules.append(IgnoreRule(_pattern(line.lstrip("!").strip()), exclude))
    return tuple(rules)


def is_excluded(rules: Sequence[IgnoreRule], path: str) -> bool:
    """Whether the build context leaves ``path`` (relative, with ``/``) out.

    As in Docker, a rule applies when it matches the path or one of its parent directories,
    and the last rule that applies decides.
    """
    elements = path.split("/")
    prefixes = ["/".join(elements[: n + 1]) for n in range(len(elements))]
    excluded = False
    for rule in rules:
        if any(rule.pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = rule.exclude
    return excluded


@dataclass(frozen=True)
class ContextFile:
    """A file of the build context as the digest sees it."""

    path: str
    executable: bool
    content: bytes


def content_digest(files: Iterable[ContextFile], parameters: Mapping[str, str]) -> str:
    """A sha256 over the files (path, executable bit, content; in path order) and then the
    parameters (name and value, in name order): the same inputs give the same digest."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        content = hashlib.sha256(file.content).hexdigest()
        digest.update(f"file {file.path} {int(file.executable)} {content}\n".encode())
    for name in sorted(parameters):
        digest.update(f"parameter {name}={parameters[name]}\n".encode())
    return digest.hexdigest()


def image_tag(version: str, digest: str) -> str:
    """The tag of an image built from inputs with ``digest``: ``0.1.0-3f2a9c1b4d5e``."""
    return f"{version}-{digest[:12]}"


@dataclass(frozen=True)
class BaseSpec:
    """How the local base image is made: a Debian root from ``debootstrap``.

    The base is named (and cached) by everything here and the architecture, so a change to
    any of them makes a new one; ``recipe`` counts changes to how a root becomes an image.
    """

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    recipe: int = 1

    def key(self, architecture: str) -> str:
        fields = [self.suite, self.mirror, self.variant, sorted(self.packages), self.recipe]
        text = json.dumps([*fields, architecture])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def reference(self, architecture: str) -> str:
        """The base's name in local image storage (``localhost/`` never reaches a registry)."""
        return f"localhost/wasmfleet/base:{self.suite}-{architecture}-{self.key(architecture)}"


def parse_apt_mirror(sources: str, *, suite: str) -> str | None:
    """The first Debian mirror that apt sources (deb822 stanzas or one-line entries) name
    for ``suite``; None when none does."""
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            for uri in fields.get("uris", "").split():
                if uri.startswith(("http://", "https://")):
                    return uri.rstrip("/")
    for line in sources.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line).split()
        if (
            len(words) >= 3
            and words[0] == "deb"
            and words[2] == suite
            and words[1].startswith(("http://", "https://"))
        ):
            return words[1].rstrip("/")
    return None


def wheel_platforms(machine: str, *, glibc: str) -> list[str]:
    """pip ``--platform`` tags of the manylinux wheels a glibc of that version runs.

    pip matches these tags literally, so every level from the glibc's down to
    ``manylinux_2_17`` (``manylinux2014``, the oldest the pinned wheels use) is named: the same
    rule as ``operator/install-venv.sh``, which the image builds follow.
    """
    major, _, minor = glibc.partition(".")
    if major != "2" or not minor.isdigit():
        raise ValueError(f"unexpected glibc version {glibc!r}")
    levels = [f"manylinux_2_{m}_{machine}" for m in range(int(minor), 16, -1)]
    return [*levels, f"manylinux2014_{machine}"]


def render_pip_conf(*, find_links: str) -> str:
    """pip's configuration for a build that installs only from a directory of wheels."""
    return f"[global]\nno-index = true\nfind-links = {find_links}\n"
