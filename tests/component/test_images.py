"""The operator and agent images: built without Docker, pushed as indexes, and run as the chart
runs them.

The session's registry gets both images for linux/amd64 and linux/arm64 (`build_images`:
built, or reused from the image store under ``~/.cache/wasmfleet/images``). Everything
after that reads them back from the registry as a node would: the index, each platform's
manifest and configuration, and each platform's root filesystem, pulled into an image store
of the test's own. Programs then run in those roots with the root read-only, a tmpfs on
/tmp and the image's user (`rootfs.ImageRoot`); the arm64 roots run under qemu-user.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from wasmfleet_harness.elf import EM_AARCH64, EM_X86_64, elf_machine
from wasmfleet_harness.images import distribution
from wasmfleet_harness.images.build import BuiltImage, build_images
from wasmfleet_harness.images.recipe import IMAGE_NAMES, PLATFORMS, Platform
from wasmfleet_harness.images.rootfs import Bind, ImageRoot
from wasmfleet_harness.processes import Workspace, free_port, wait_until
from wasmfleet_harness.registry import Registry

REPO = Path(__file__).resolve().parents[2]
USER = "65532:65532"
# A cold run makes the Debian bases (debootstrap, arm64 under emulation) before any test.
pytestmark = pytest.mark.timeout(3600)

IMAGE_PLATFORMS = [(name, platform) for name in IMAGE_NAMES for platform in PLATFORMS]


def _ids(value: object) -> str:
    return str(value).replace("linux/", "")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def _repository(image: BuiltImage) -> str:
    return image.repository.partition("/")[2]


def _config(registry: Registry, image: BuiltImage, platform: Platform) -> dict[str, Any]:
    return distribution.fetch_config(registry.host, _repository(image), image.tag, platform)


def test_each_image_is_one_index_of_linux_amd64_and_linux_arm64(
    registry: Registry, project_images: dict[str, BuiltImage]
) -> None:
    for image in project_images.values():
        assert re.fullmatch(r"0\.1\.0-[0-9a-f]{12}", image.tag)
        index = distribution.fetch_manifest(registry.host, _repository(image), image.tag)
        assert index is not None
        assert index.media_type == "application/vnd.oci.image.index.v1+json"
        assert index.digest == image.digest
        assert set(distribution.index_platforms(index)) == set(PLATFORMS)


@pytest.mark.parametrize(("name", "platform"), IMAGE_PLATFORMS, ids=_ids)
def test_each_platforms_image_names_its_architecture_its_program_and_a_non_root_user(
    registry: Registry, project_images: dict[str, BuiltImage], name: str, platform: Platform
) -> None:
    config = _config(registry, project_images[name], platform)
    assert (config["os"], config["architecture"]) == (platform.os, platform.architecture)
    assert config["config"]["User"] == USER
    assert config["config"]["Entrypoint"] == [f"wasmfleet-{name}"]


@pytest.mark.parametrize(("name", "platform"), IMAGE_PLATFORMS, ids=_ids)
def test_the_program_starts_in_its_image_as_its_named_user_on_a_read_only_root(
    image_root: Callable[[str, Platform], ImageRoot], name: str, platform: Platform
) -> None:
    root = image_root(name, platform)
    helped = root.run(root.entrypoint_with("--help"), timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: wasmfleet-{name}")
    versions = root.run(root.entrypoint_with("--version"), timeout=120)
    pins = _pins()
    engine = f"wasmtime {pins['wasmtime']}" if name == "agent" else f"kopf {pins['kopf']}"
    assert versions.stdout.strip() == f"wasmfleet-{name} 0.1.0 ({engine})", versions.stderr
    # kopf names the operator after the user (getpass): the uid must have a name.
    probe = (
        "import getpass, os, pathlib\n"
        "print(os.getuid(), os.getgid(), getpass.getuser())\n"
        "pathlib.Path('/tmp/written').write_text('the emptyDir is writable')\n"
        "try:\n"
        "    pathlib.Path('/opt/wasmfleet/written').write_text('')\n"
        "except OSError as error:\n"
        "    print(error.strerror)\n"
    )
    probed = root.run(["python3", "-c", probe], timeout=120)
    assert probed.stdout.splitlines() == ["65532 65532 wasmfleet", "Read-only file system"], (
        probed.stderr
    )


@pytest.mark.parametrize(("name", "platform"), IMAGE_PLATFORMS, ids=_ids)
def test_every_module_of_the_program_imports_in_its_image(
    image_root: Callable[[str, Platform], ImageRoot], name: str, platform: Platform
) -> None:
    shared = ["wasmfleet_api", "wasmfleet_common", "wasmfleet_oci"]
    packages = {"agent": ["wasmfleet_agent", *shared], "operator": ["wasmfleet_operator", *shared]}[
        name
    ]
    walk = (
        "import importlib, pkgutil, sys\n"
        "count = 0\n"
        "for top in sys.argv[1:]:\n"
        "    package = importlib.import_module(top)\n"
        "    for found in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        importlib.import_module(found.name)\n"
        "        count += 1\n"
        "print(count)\n"
    )
    root = image_root(name, platform)
    result = root.run(["python3", "-c", walk, *packages], timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10


def _site_packages(root: ImageRoot) -> Path:
    (site,) = (root.root / "opt" / "wasmfleet" / "lib").glob("python3.*/site-packages")
    return site


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_an_image_holds_its_own_program_and_never_the_harness(
    image_root: Callable[[str, Platform], ImageRoot], name: str
) -> None:
    root = image_root(name, PLATFORMS[0])
    venv = root.root / "opt" / "wasmfleet"
    site = _site_packages(root)
    assert not [p for p in venv.rglob("*") if "wasmfleet_harness" in p.name]
    scripts = {p.name for p in (venv / "bin").iterdir()} & {
        "wasmfleet",
        "wasmfleet-agent",
        "wasmfleet-operator",
        "wasmfleet-dev",
        "pip",
    }
    if name == "agent":
        assert scripts == {"wasmfleet", "wasmfleet-agent"}
        assert not (site / "wasmfleet_operator").exists()
        assert not (site / "kopf").exists()
    else:
        assert scripts == {"wasmfleet-operator"}
        assert not (site / "wasmtime").exists()
        assert not (site / "wasmfleet_agent").exists()
    for shared in ("wasmfleet_api", "wasmfleet_common", "wasmfleet_oci"):
        assert (site / shared / "__init__.py").is_file(), shared


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_distribution_in_an_image_is_the_version_ci_pins(
    image_root: Callable[[str, Platform], ImageRoot], name: str
) -> None:
    pins = _pins()
    unpinned = []
    for metadata in _site_packages(image_root(name, PLATFORMS[1])).glob("*.dist-info/METADATA"):
        fields = dict(
            line.split(": ", 1) for line in metadata.read_text().splitlines() if ": " in line
        )
        key, version = canonicalize_name(fields["Name"]), fields["Version"]
        if key == "wasmfleet":
            assert version == "0.1.0"
        elif pins.get(key) != version:
            unpinned.append(f"{key} {version} (pinned: {pins.get(key)})")
    assert not unpinned


@pytest.mark.parametrize("platform", PLATFORMS, ids=_ids)
def test_the_agent_image_runs_a_module_to_completion_as_wasmtime_run_does(
    image_root: Callable[[str, Platform], ImageRoot],
    wasm_modules: dict[str, Path],
    platform: Platform,
) -> None:
    root = image_root("agent", platform)
    module = Bind(wasm_modules["hello-c"], "/modules/hello-c.wasm")
    result = root.run(
        root.entrypoint_with("run", "/modules/hello-c.wasm"), binds=[module], timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello from a C Wasm microservice!\n"


# Jobs in Rust, Go and C with arguments, environment, a read-only input directory, a
# writable output directory and exit codes (the cases `test_agent_jobs.py` runs beside the
# native wasmtime CLI on this machine).
ARCH_JOBS = {
    "c-args-env-dirs-exit3": (
        "jobprobe",
        ("first", "second word", "exit=3"),
        ("A=1", "B=two words"),
        {"one.txt": "1\n", "two.txt": "2\n"},
        True,
    ),
    "rust-exit5": (
        "jobprobe-rust",
        ("--flag", "exit=5"),
        ("LANG_SEEN=rust",),
        {"data.txt": "hello from the input\n"},
        False,
    ),
    "go-wordcount": (
        "wordcount-job",
        ("/input",),
        (),
        {"a.txt": "one two three\n", "b.txt": "four five\n"},
        False,
    ),
}


@pytest.fixture(scope="module")
def run_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[Platform, Path]:
    """A compiled-code cache per platform, shared by the jobs (one compile per module)."""
    caches = {}
    for platform in PLATFORMS:
        cache = tmp_path_factory.mktemp(f"run-cache-{platform.architecture}")
        cache.chmod(0o777)
        caches[platform] = cache
    return caches


@pytest.mark.parametrize("name", list(ARCH_JOBS))
def test_the_run_path_gives_the_same_output_and_exit_code_on_arm64_as_on_amd64(
    image_root: Callable[[str, Platform], ImageRoot],
    wasm_modules: dict[str, Path],
    run_caches: dict[Platform, Path],
    tmp_path: Path,
    name: str,
) -> None:
    """``wasmfleet-agent run`` in the arm64 image (aarch64 code under qemu-user) and in the
    amd64 one, with the same paths inside each: the same stdout, stderr, exit code and
    written file."""
    module, args, env, inputs, writable = ARCH_JOBS[name]
    given = tmp_path / "input"
    given.mkdir()
    given.chmod(0o755)  # the image's user reads it
    for file_name, text in inputs.items():
        (given / file_name).write_text(text)
    results = {}
    for platform in PLATFORMS:
        output = tmp_path / f"output-{platform.architecture}"
        output.mkdir()
        output.chmod(0o777)
        root = image_root("agent", platform)
        binds = [
            Bind(wasm_modules[module], f"/job/{module}.wasm"),
            Bind(given, "/job/input"),
            Bind(output, "/job/output", writable=True),
            Bind(run_caches[platform], "/job/cache", writable=True),
        ]
        argv = ["run", "--cache-dir", "/job/cache", "--dir", "/job/input:/input:ro"]
        if writable:
            argv += ["--dir", "/job/output:/output:rw"]
        for pair in env:
            argv += ["--env", pair]
        done = root.run(
            root.entrypoint_with(*argv, f"/job/{module}.wasm", "--", *args),
            binds=binds,
            timeout=600,
        )
        written = {p.name: p.read_text() for p in output.iterdir()}
        results[platform.architecture] = (done.returncode, done.stdout, done.stderr, written)
    assert results["arm64"] == results["amd64"]
    code, stdout, _, written = results["amd64"]
    assert stdout, "the job printed something"
    assert code == {"c-args-env-dirs-exit3": 3, "rust-exit5": 5, "go-wordcount": 0}[name]
    assert bool(written) is writable
    compiled = {p.name for p in run_caches[PLATFORMS[0]].glob("*.cwasm")}
    assert compiled.isdisjoint(p.name for p in run_caches[PLATFORMS[1]].glob("*.cwasm"))


def test_compiled_code_of_another_cpu_in_the_cache_is_compiled_again_not_run(
    image_root: Callable[[str, Platform], ImageRoot],
    wasm_modules: dict[str, Path],
    tmp_path: Path,
) -> None:
    """x86-64 code put in the arm64 agent's cache under the arm64 entry's own name (a cache
    copied between machines and renamed): the agent refuses to load it, compiles again and
    runs the module; the entry holds aarch64 code afterwards."""
    caches = {}
    for platform in PLATFORMS:
        cache = tmp_path / platform.architecture
        cache.mkdir()
        cache.chmod(0o777)
        caches[platform.architecture] = cache

    def run_in(platform: Platform) -> tuple[int, str]:
        root = image_root("agent", platform)
        done = root.run(
            root.entrypoint_with("run", "--cache-dir", "/job/cache", "/job/hello-c.wasm"),
            binds=[
                Bind(wasm_modules["hello-c"], "/job/hello-c.wasm"),
                Bind(caches[platform.architecture], "/job/cache", writable=True),
            ],
            timeout=600,
        )
        return done.returncode, done.stdout

    amd64, arm64 = PLATFORMS
    expected = run_in(amd64)
    assert expected == (0, "Hello from a C Wasm microservice!\n")
    assert run_in(arm64) == expected
    (x86_file,) = caches["amd64"].rglob("*.cwasm")
    (arm_file,) = caches["arm64"].rglob("*.cwasm")
    assert (elf_machine(x86_file), elf_machine(arm_file)) == (EM_X86_64, EM_AARCH64)
    arm_file.write_bytes(x86_file.read_bytes())
    assert run_in(arm64) == expected
    (again,) = caches["arm64"].rglob("*.cwasm")
    assert elf_machine(again) == EM_AARCH64


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


@pytest.mark.parametrize("platform", PLATFORMS, ids=_ids)
def test_the_agent_image_serves_a_module_over_http_as_the_chart_runs_it(
    image_root: Callable[[str, Platform], ImageRoot],
    wasm_modules: dict[str, Path],
    workspace: Workspace,
    platform: Platform,
) -> None:
    root = image_root("agent", platform)
    port, admin = free_port(), free_port()
    state = workspace.subdir(f"image-agent-state-{platform.architecture}")
    cache = Bind(state, "/var/lib/wasmfleet", writable=True)
    # The chart's init container: `chown` from the agent image, as root, on the hostPath.
    init = dataclasses.replace(root, user="0:0")
    prepared = init.run(["chown", USER, "/var/lib/wasmfleet"], binds=[cache], timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    server = root.process(
        f"image-agent-{platform.architecture}",
        root.entrypoint_with(
            "serve",
            "--module=/modules/hello-c.wasm",
            f"--port={port}",
            f"--admin-port={admin}",
            "--cache-dir=/var/lib/wasmfleet",
        ),
        binds=[
            Bind(wasm_modules["hello-c"], "/modules/hello-c.wasm"),
            cache,  # the only writable place besides /tmp, as in the chart
        ],
        log_path=workspace.path / f"image-agent-{platform.architecture}.log",
    )
    server.start()
    try:

        def ready() -> bool:
            server.check_alive()
            return _get(f"http://127.0.0.1:{admin}/readyz")[0] == 200

        # arm64 compiles the module under emulation: about ten times slower.
        wait_until(ready, timeout=180, interval=0.2, message=server.log_tail)
        assert _get(f"http://127.0.0.1:{port}/") == (200, "Hello from a C Wasm microservice!\n")
        assert any(state.rglob("*.cwasm")), "compiled code goes to the mounted cache"
    finally:
        server.stop()


def test_a_second_build_of_unchanged_code_pushes_nothing_and_names_the_same_index(
    registry: Registry, project_images: dict[str, BuiltImage]
) -> None:
    again = {image.name: image for image in build_images(registry=registry.host)}
    for name, image in project_images.items():
        assert again[name].outcome == "in registry"
        assert (again[name].tag, again[name].digest) == (image.tag, image.digest)
