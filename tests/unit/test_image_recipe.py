"""What goes into an image and what it is called: COPY sources, .dockerignore, tags, bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmfleet_harness.images.build import context_files
from wasmfleet_harness.images.recipe import (
    IMAGES,
    BaseSpec,
    ContextFile,
    Platform,
    content_digest,
    image_tag,
    is_excluded,
    parse_apt_mirror,
    parse_copy_sources,
    parse_dockerignore,
    render_pip_conf,
    wheel_platforms,
)
from wasmfleet_harness.images.rootfs import Bind, ImageRoot, render_launcher

REPO = Path(__file__).resolve().parents[2]


def test_the_agent_dockerfile_copies_the_agent_the_shared_packages_and_the_pins_only() -> None:
    sources = parse_copy_sources((REPO / "node-agent" / "Dockerfile").read_text())
    assert sources == (
        ".ci/constraints.txt",
        "operator/wasmfleet_api",
        "operator/wasmfleet_common",
        "operator/wasmfleet_oci",
        "node-agent/pyproject.toml",
        "node-agent/wasmfleet_agent",
        "operator/install-venv.sh",
    )


@pytest.mark.parametrize("spec", IMAGES, ids=lambda s: s.name)
def test_no_dockerfile_copies_the_harness_and_the_context_lets_every_copy_in(spec: object) -> None:
    dockerfile = REPO / spec.dockerfile  # type: ignore[attr-defined]
    rules = parse_dockerignore((REPO / ".dockerignore").read_text())
    for source in parse_copy_sources(dockerfile.read_text()):
        assert not source.startswith("e2e"), source
        assert not is_excluded(rules, source), f"{source} is copied but left out of the context"


def test_copy_sources_skip_other_stages_and_understand_flags_continuations_and_json() -> None:
    dockerfile = "\n".join(
        [
            "FROM base AS build",
            "# COPY commented/out .",
            "COPY --chown=1:1 a.txt \\",
            "    dir/ /dest/",
            'COPY ["with space.txt", "/dest/"]',
            "COPY --from=build /opt /opt",
            "ADD archive.tar /",
            "RUN echo COPY nothing",
        ]
    )
    assert parse_copy_sources(dockerfile) == ("a.txt", "dir", "with space.txt", "archive.tar")


def test_an_url_is_refused_as_an_image_input() -> None:
    with pytest.raises(ValueError, match="only repository files"):
        parse_copy_sources("ADD https://example.com/x.tar /\n")


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("e2e/wasmfleet_harness/cli.py", True),
        ("e2e/wasmfleet_harness", True),
        ("tests/unit/test_image_recipe.py", True),
        ("README.md", True),
        ("pyproject.toml", True),
        (".venv/bin/python", True),
        ("node-agent/wasmfleet_agent/cli.py", False),
        ("operator/wasmfleet_oci/client.py", False),
        ("operator/wasmfleet_common/kube.py", False),
        ("node-agent/wasmfleet_agent/__pycache__/cli.cpython-311.pyc", True),
        ("operator/wasmfleet_api/stray.pyc", True),
        ("operator/pyproject.toml", False),
        ("operator/Dockerfile", True),
        ("operator/install-venv.sh", False),
        (".ci/constraints.txt", False),
        (".ci/run", True),
    ],
)
def test_the_build_context_holds_only_what_the_images_copy(path: str, excluded: bool) -> None:
    rules = parse_dockerignore((REPO / ".dockerignore").read_text())
    assert is_excluded(rules, path) is excluded


def test_the_last_dockerignore_rule_that_matches_a_path_or_a_parent_decides() -> None:
    rules = parse_dockerignore("docs\n!docs/keep\ndocs/keep/secret*\n**/tmp\n")
    assert is_excluded(rules, "docs/a.md")
    assert not is_excluded(rules, "docs/keep/a.md")
    assert is_excluded(rules, "docs/keep/secret.txt")
    assert not is_excluded(rules, "docs-other/a.md")
    assert is_excluded(rules, "tmp/x")  # `**` also matches no directory at all
    assert is_excluded(rules, "a/b/tmp/x")


def test_character_classes_in_dockerignore_are_refused_rather_than_misread() -> None:
    with pytest.raises(ValueError, match="character classes"):
        parse_dockerignore("file[0-9]\n")


def _file(path: str, content: bytes = b"x", executable: bool = False) -> ContextFile:
    return ContextFile(path, executable, content)


def test_the_content_digest_depends_on_each_file_and_parameter_and_not_on_order() -> None:
    files = [_file("a"), _file("b/c", b"y")]
    digest = content_digest(files, {"base": "one"})
    assert content_digest(list(reversed(files)), {"base": "one"}) == digest
    assert content_digest([_file("a"), _file("b/c", b"z")], {"base": "one"}) != digest
    assert content_digest([_file("a", executable=True), files[1]], {"base": "one"}) != digest
    assert content_digest([_file("a2"), files[1]], {"base": "one"}) != digest
    assert content_digest(files, {"base": "two"}) != digest
    assert image_tag("0.1.0", digest) == f"0.1.0-{digest[:12]}"


def _tree(root: Path) -> None:
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "README.md").write_text("docs\n")
    (root / "Dockerfile").write_text("FROM base\nCOPY pkg /pkg\n")


def test_the_tag_follows_the_copied_files_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    ignore = "*\n!pkg\n**/__pycache__\n"

    def tag() -> str:
        sources = parse_copy_sources((tmp_path / "Dockerfile").read_text())
        return image_tag("1", content_digest(context_files(tmp_path, sources, ignore), {}))

    first = tag()
    assert [f.path for f in context_files(tmp_path, ["pkg"], ignore)] == ["pkg/mod.py"]
    (tmp_path / "README.md").write_text("other docs\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\1")
    assert tag() == first
    (tmp_path / "pkg" / "mod.py").write_text("x = 2\n")
    assert tag() != first


def test_a_copied_path_that_the_context_leaves_out_is_an_error(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(ValueError, match=r"\.dockerignore leaves it out"):
        context_files(tmp_path, ["README.md"], "*\n!pkg\n")


def test_a_base_is_named_by_its_suite_architecture_and_everything_that_made_it() -> None:
    spec = BaseSpec()
    assert spec.reference("arm64").startswith("localhost/wasmfleet/base:bookworm-arm64-")
    assert spec.key("amd64") != spec.key("arm64")
    assert BaseSpec(packages=(*spec.packages, "curl")).key("amd64") != spec.key("amd64")
    assert BaseSpec(mirror="http://mirror.example/debian").key("amd64") != spec.key("amd64")
    assert BaseSpec(recipe=spec.recipe + 1).key("amd64") != spec.key("amd64")
    assert BaseSpec().key("amd64") == spec.key("amd64")


def test_the_mirror_comes_from_deb822_sources_or_one_line_entries() -> None:
    deb822 = (
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert parse_apt_mirror(deb822, suite="bookworm") == "http://deb.debian.org/debian"
    one_line = "deb-src http://src.example/debian bookworm main\n"
    one_line += "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n"
    assert parse_apt_mirror(one_line, suite="bookworm") == "http://mirror.example/debian"
    assert parse_apt_mirror(one_line, suite="trixie") is None


def test_wheel_tags_name_every_manylinux_level_the_glibc_runs() -> None:
    tags = wheel_platforms("aarch64", glibc="2.36")
    assert tags[0] == "manylinux_2_36_aarch64"
    assert "manylinux_2_28_aarch64" in tags
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert "manylinux_2_16_aarch64" not in tags
    with pytest.raises(ValueError, match="glibc"):
        wheel_platforms("x86_64", glibc="musl")


def test_the_install_script_and_the_wheel_download_agree_on_the_oldest_level() -> None:
    script = (REPO / "operator" / "install-venv.sh").read_text()
    assert "-ge 17 ]" in script
    assert "manylinux2014_$machine" in script
    assert wheel_platforms("x86_64", glibc="2.17") == [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    ]


def test_platforms_parse_and_name_their_machines() -> None:
    assert Platform.parse("linux/arm64").machine == "aarch64"
    assert str(Platform.of_machine("x86_64")) == "linux/amd64"
    with pytest.raises(ValueError, match="unknown platform"):
        Platform.parse("linux/riscv64")


def test_the_build_pip_configuration_installs_from_the_wheel_directory_only() -> None:
    assert render_pip_conf(find_links="/wheelhouse").splitlines() == [
        "[global]",
        "no-index = true",
        "find-links = /wheelhouse",
    ]


def test_an_image_root_takes_its_user_environment_and_entrypoint_from_the_config(
    tmp_path: Path,
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("wasmfleet:x:65532:65532::/nonexistent:/bin/false\n")
    config = {"User": "65532:65532", "Env": ["PATH=/opt/bin:/usr/bin", "A=b=c"]}
    image = ImageRoot.from_config(tmp_path, {**config, "Entrypoint": ["prog"]})
    assert image.user == "65532:65532"
    assert image.env == {"PATH": "/opt/bin:/usr/bin", "A": "b=c"}
    assert image.entrypoint_with("--help") == ["prog", "--help"]
    command = image.command(["prog"], [Bind(tmp_path / "m", "/modules")])
    assert command[command.index("--") + 1 :] == ["prog"]
    assert [str(tmp_path / "m"), "/modules", "ro"] == command[-5:-2]


def test_the_launcher_makes_the_root_read_only_last_and_runs_the_program_as_the_user() -> None:
    command = render_launcher(Path("/r"), ["prog", "arg"], user="1:2", path="/opt/bin")
    script = command[command.index("-c") + 1]
    assert script.rstrip().splitlines()[-2] == 'mount -o remount,bind,ro "$root"'
    assert '--userspec="$user"' in script.splitlines()[-1]
    assert command[-4:] == ["/opt/bin", "--", "prog", "arg"]


def test_a_mount_point_that_crosses_a_symlink_of_the_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")  # absolute: it would lead to the host's
    image = ImageRoot(tmp_path, "1:1", {}, ("prog",))
    with pytest.raises(ValueError, match="crosses a symlink"):
        image.command(["prog"], [Bind(tmp_path, "/var/run/secrets/token")])
    with pytest.raises(ValueError, match=r"without '\.\.'"):
        image.command(["prog"], [Bind(tmp_path, "/run/../../etc")])
    assert image.command(["prog"], [Bind(tmp_path, "/run/secrets/token")])[-1] == "prog"
