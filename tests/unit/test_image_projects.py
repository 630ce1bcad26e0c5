"""Each image's project file agrees with the repository's, and ships what its code imports.

The Dockerfiles install ``node-agent/pyproject.toml`` and ``operator/pyproject.toml``; the
development install is the repository's ``pyproject.toml``. These tests keep them from
drifting apart, and read every module an image ships to check that what it imports is in
that image: shipped itself, the standard library, or a declared dependency (or one of theirs).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from wasmfleet_harness.images.recipe import IMAGES, ImageProject, ImageSpec, parse_image_project

REPO = Path(__file__).resolve().parents[2]
ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
FIRST_PARTY = (
    "wasmfleet_api",
    "wasmfleet_common",
    "wasmfleet_oci",
    "wasmfleet_operator",
    "wasmfleet_agent",
    "wasmfleet_harness",
)
SHARED = {"wasmfleet_api", "wasmfleet_common", "wasmfleet_oci"}


def _project(spec: ImageSpec) -> ImageProject:
    return parse_image_project((REPO / spec.pyproject).read_text(), directory=spec.project)


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_an_image_project_has_the_repositorys_name_and_version(spec: ImageSpec) -> None:
    project = _project(spec)
    # The programs report metadata.version("wasmfleet"): the name must stay.
    assert (project.name, project.version) == (ROOT["name"], ROOT["version"])


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_an_image_dependency_is_one_of_the_repositorys_requirements_verbatim(
    spec: ImageSpec,
) -> None:
    assert set(_project(spec).dependencies) <= set(ROOT["dependencies"])


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_an_image_script_is_the_repositorys_script_of_that_name(spec: ImageSpec) -> None:
    for name, target in _project(spec).scripts.items():
        assert ROOT["scripts"].get(name) == target, name


def test_every_script_of_the_repository_is_in_an_image_except_the_harness_cli() -> None:
    in_images = {name for spec in IMAGES for name in _project(spec).scripts}
    assert in_images == set(ROOT["scripts"]) - {"wasmfleet-dev"}


def test_the_agent_and_the_operator_are_each_in_their_own_image_only() -> None:
    shipped = {spec.name: set(_project(spec).shipped()) for spec in IMAGES}
    assert shipped["agent"] == SHARED | {"wasmfleet_agent"}
    assert shipped["operator"] == SHARED | {"wasmfleet_operator"}


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_no_image_ships_the_test_harness(spec: ImageSpec) -> None:
    for destination, source in _project(spec).shipped().items():
        assert not destination.startswith("wasmfleet_harness"), destination
        assert not source.startswith("e2e/"), source


def _shipped_modules(project: ImageProject) -> dict[str, Path]:
    """Module name -> source file, for every module the image's wheel holds."""
    modules: dict[str, Path] = {}
    for destination, source in project.shipped().items():
        path = REPO / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            inside = (
                Path(destination) / file.relative_to(path) if path.is_dir() else Path(destination)
            )
            parts = list(inside.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = file
    return modules


def _runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs (those under ``if TYPE_CHECKING:`` do not)."""

    def visit(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        for inner in ast.iter_child_nodes(node):
            yield from visit(inner)

    yield from visit(tree)


@cache
def _requirement_closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions ``names`` need at run time, themselves included (no extras)."""
    environment = {"extra": ""}  # added to the running interpreter's environment
    seen: set[str] = set()
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(canonicalize_name(requirement.name))
    return frozenset(seen)


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_every_module_an_image_ships_imports_only_what_the_image_holds(spec: ImageSpec) -> None:
    project = _project(spec)
    modules = _shipped_modules(project)
    declared = frozenset(Requirement(d).name for d in project.dependencies)
    installed = _requirement_closure(declared)
    distributions = metadata.packages_distributions()
    missing: list[str] = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for statement in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
                candidates = [[target] for target in targets]
            else:
                base = statement.module or ""
                if statement.level:
                    anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from a import b` needs a, and b if b is a module rather than a name in a.
                candidates = [[f"{base}.{alias.name}", base] for alias in statement.names]
            for names in candidates:
                top = names[0].split(".")[0]
                if top in FIRST_PARTY:
                    if not any(name in modules for name in names):
                        missing.append(f"{module} imports {names[0]}, which is not shipped")
                elif top not in sys.stdlib_module_names:
                    owners = {canonicalize_name(d) for d in distributions.get(top, [])}
                    if not owners & installed:
                        missing.append(f"{module} imports {top}, from no declared dependency")
    assert not missing, "\n".join(missing)
