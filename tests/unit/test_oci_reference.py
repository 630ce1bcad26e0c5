"""Image references parse into registry, repository, tag and digest, or fail with a reason."""

from __future__ import annotations

import pytest

from wasmfleet_oci.reference import Reference, parse_digest, parse_reference

DIGEST = "sha256:" + "ab" * 32


def test_a_bare_name_means_the_docker_hub_library_and_the_latest_tag() -> None:
    ref = parse_reference("hello")
    assert ref == Reference(registry="docker.io", repository="library/hello", tag="latest")
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/hello:latest"


def test_a_docker_hub_name_with_a_namespace_keeps_it() -> None:
    ref = parse_reference("acme/hello:1.0")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "acme/hello", "1.0")


def test_docker_hub_aliases_all_become_docker_io() -> None:
    for text in ("index.docker.io/library/hello", "registry.hub.docker.com/library/hello"):
        assert parse_reference(text).registry == "docker.io"


def test_a_reference_with_a_port_keeps_it_in_the_registry() -> None:
    ref = parse_reference("127.0.0.1:5000/acme/hello:1.0")
    assert ref.registry == "127.0.0.1:5000"
    assert ref.api_host == "127.0.0.1:5000"
    assert ref.repository == "acme/hello"
    assert ref.tag == "1.0"


def test_localhost_without_a_port_is_a_registry() -> None:
    ref = parse_reference("localhost/hello")
    assert (ref.registry, ref.repository) == ("localhost", "hello")


def test_localhost_with_a_port_is_a_registry() -> None:
    assert parse_reference("localhost:5000/hello:v1").registry == "localhost:5000"


def test_a_bracketed_ipv6_registry_with_a_port_is_accepted() -> None:
    assert parse_reference("[::1]:5000/hello").registry == "[::1]:5000"


def test_a_registry_host_is_lower_cased() -> None:
    assert parse_reference("Registry.Example.com/acme/hello").registry == "registry.example.com"


def test_a_deep_repository_path_is_kept_whole() -> None:
    ref = parse_reference("ghcr.io/acme/team/svc/hello:2")
    assert (ref.registry, ref.repository, ref.tag) == ("ghcr.io", "acme/team/svc/hello", "2")


def test_a_colon_without_a_slash_separates_the_tag_not_a_port() -> None:
    ref = parse_reference("hello:5000")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "library/hello", "5000")


def test_a_digest_reference_has_no_tag_and_names_the_digest() -> None:
    ref = parse_reference(f"127.0.0.1:5000/acme/hello@{DIGEST}")
    assert ref.tag is None
    assert ref.digest == DIGEST
    assert ref.identifier == DIGEST
    assert str(ref) == f"127.0.0.1:5000/acme/hello@{DIGEST}"


def test_a_tag_and_a_digest_are_both_kept_and_the_digest_wins() -> None:
    ref = parse_reference(f"example.com/hello:1.0@{DIGEST}")
    assert ref.tag == "1.0"
    assert ref.identifier == DIGEST
    assert str(ref) == f"example.com/hello:1.0@{DIGEST}"


def test_with_digest_pins_a_tag_reference() -> None:
    pinned = parse_reference("example.com/hello:1.0").with_digest(DIGEST)
    assert (pinned.tag, pinned.digest) == ("1.0", DIGEST)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" hello", "spaces"),
        ("example.com/Hello", "lower-case"),
        ("example.com/hello:-bad", "tag"),
        ("example.com/hello:" + "x" * 129, "tag"),
        ("example.com/", "no repository"),
        ("example.com/a//b", "repository component"),
        ("example.com:99999/hello", "port"),
        ("example.com/hello@sha256:abc", "digest"),
        ("example.com/hello@sha512:" + "ab" * 64, "only sha256"),
        ("example.com/hello@" + DIGEST.upper(), "digest"),
        ("example.com/" + "a" * 250, "longer than"),
    ],
)
def test_a_malformed_reference_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_reference(text)


def test_a_digest_must_be_sha256_with_64_lower_case_hex_digits() -> None:
    assert parse_digest(DIGEST) == DIGEST
    with pytest.raises(ValueError, match="only sha256"):
        parse_digest("sha512:" + "ab" * 64)
    with pytest.raises(ValueError, match="not a digest"):
        parse_digest("sha256:../../etc/passwd")
