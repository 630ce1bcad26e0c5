"""Credentials from dockerconfigjson, WWW-Authenticate challenges and token answers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from wasmfleet_oci import auth, errors
from wasmfleet_oci.auth import (
    Credentials,
    find_credentials,
    normalize_registry_key,
    parse_docker_config,
    parse_token_response,
    parse_www_authenticate,
)

SECRET = "pa:ss-w0rd"


def _auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def test_an_auth_field_decodes_to_username_and_password() -> None:
    found = parse_docker_config(
        json.dumps({"auths": {"registry.example.com": {"auth": _auth("alice", SECRET)}}})
    )
    assert found == {"registry.example.com": Credentials("alice", SECRET)}


def test_username_and_password_fields_are_read_and_win_over_auth() -> None:
    document = {
        "auths": {
            "registry.example.com": {
                "username": "bob",
                "password": "right",
                "auth": _auth("bob", "wrong"),
            }
        }
    }
    assert parse_docker_config(document)["registry.example.com"] == Credentials("bob", "right")


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Registry.Example.com:443", "registry.example.com:443"),
        ("localhost:5000", "localhost:5000"),
    ],
)
def test_registry_keys_are_normalised_to_reference_registries(key: str, registry: str) -> None:
    assert normalize_registry_key(key) == registry


def test_credentials_are_found_by_the_registry_of_a_reference() -> None:
    configs = parse_docker_config(
        {"auths": {"https://index.docker.io/v1/": {"auth": _auth("hub", SECRET)}}}
    )
    assert find_credentials(configs, registry="docker.io") == Credentials("hub", SECRET)
    assert find_credentials(configs, registry="ghcr.io") is None


def test_an_entry_with_only_an_identity_token_is_skipped() -> None:
    assert parse_docker_config({"auths": {"example.com": {"identitytoken": "xyz"}}}) == {}


@pytest.mark.parametrize(
    "document",
    [
        {"auths": {"example.com": {"auth": "%%%" + SECRET}}},
        {"auths": {"example.com": {"auth": base64.b64encode(SECRET.encode() + b"\xff").decode()}}},
        {"auths": {"example.com": {"auth": base64.b64encode(b"no-colon-" + b"x").decode()}}},
    ],
)
def test_a_broken_auth_field_is_refused_without_echoing_it(document: object) -> None:
    with pytest.raises(ValueError, match=r"example\.com") as refused:
        parse_docker_config(json.dumps(document))
    assert SECRET not in str(refused.value)
    assert "%%%" not in str(refused.value)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("not json " + SECRET, "not JSON"),
        ("[]", "not a JSON object"),
        ("{}", "no 'auths'"),
        ('{"auths": {"example.com": "' + SECRET + '"}}', "not an object"),
        ('{"auths": {"not a host!": {"auth": "x"}}}', "not a registry address"),
    ],
)
def test_a_malformed_document_is_refused_with_a_reason(document: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        parse_docker_config(document)
    assert SECRET not in str(refused.value)


def test_credentials_never_show_their_password() -> None:
    credentials = Credentials("alice", SECRET)
    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert credentials.basic_header() == "Basic " + _auth("alice", SECRET)


def test_credentials_of_different_passwords_have_different_fingerprints() -> None:
    assert Credentials("a", "1").fingerprint() != Credentials("a", "2").fingerprint()
    assert SECRET not in Credentials("a", SECRET).fingerprint()


def test_a_bearer_challenge_yields_realm_service_and_a_scope_with_commas() -> None:
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:acme/hello:pull,push"'
    )
    [challenge] = parse_www_authenticate(header)
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example.com/token"
    assert challenge.service == "registry.example.com"
    assert challenge.scope == "repository:acme/hello:pull,push"


def test_a_basic_challenge_yields_its_realm() -> None:
    [challenge] = parse_www_authenticate('Basic realm="wasmfleet"')
    assert (challenge.scheme, challenge.realm) == ("basic", "wasmfleet")


def test_several_challenges_in_one_header_are_kept_in_order() -> None:
    challenges = parse_www_authenticate('Basic realm="a", Bearer realm="https://b/t",service=s')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[1].params == {"realm": "https://b/t", "service": "s"}


def test_scheme_and_parameter_names_are_case_insensitive() -> None:
    [challenge] = parse_www_authenticate('BEARER Realm="r", SERVICE="s"')
    assert (challenge.scheme, challenge.realm, challenge.service) == ("bearer", "r", "s")


def test_escaped_quotes_inside_a_quoted_value_are_unescaped() -> None:
    [challenge] = parse_www_authenticate(r'Basic realm="say \"hi\", please"')
    assert challenge.realm == 'say "hi", please'


def test_a_scheme_without_parameters_is_a_challenge() -> None:
    assert [c.scheme for c in parse_www_authenticate("Negotiate, Basic")] == ["negotiate", "basic"]


def test_an_empty_header_has_no_challenges() -> None:
    assert parse_www_authenticate("") == []


@pytest.mark.parametrize("header", ['Bearer realm="open', 'realm="x"', "Bearer =x"])
def test_a_malformed_challenge_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match="WWW-Authenticate"):
        parse_www_authenticate(header)


def test_a_token_answer_may_use_token_or_access_token() -> None:
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}', now=10).token == "t1"
    answer = parse_token_response(b'{"access_token": "t2"}', now=10)
    assert answer.token == "t2"
    assert answer.expires_at == 70  # the specification's default lifetime of 60 s
    assert parse_token_response(b'{"token": "t", "expires_in": 300}', now=10).expires_at == 310


def test_a_token_stops_being_valid_shortly_before_it_expires() -> None:
    token = parse_token_response(b'{"token": "t", "expires_in": 60}', now=0)
    assert token.valid(now=50)
    assert not token.valid(now=56)


@pytest.mark.parametrize("body", [b"<html>", b"[]", b"{}", b'{"token": ""}', b'{"token": 5}'])
def test_a_token_answer_without_a_token_is_unauthorized(body: bytes) -> None:
    with pytest.raises(errors.Unauthorized, match="token service"):
        parse_token_response(body, now=0)


def test_a_token_never_shows_in_a_repr() -> None:
    assert "s3cr3t" not in repr(parse_token_response(b'{"token": "s3cr3t"}', now=0))


def _pull_secret(config: object, type_: str = "kubernetes.io/dockerconfigjson") -> dict[str, Any]:
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    return {"type": type_, "data": {".dockerconfigjson": encoded}}


def test_pull_secrets_give_credentials_the_first_listed_winning_and_missing_ones_skipped() -> None:
    first = _pull_secret({"auths": {"r.example.com": {"username": "a", "password": "1"}}})
    second = _pull_secret(
        {
            "auths": {
                "r.example.com": {"username": "b", "password": "2"},
                "other.example.com:5000": {"username": "c", "password": "3"},
            }
        }
    )
    found = auth.pull_secret_credentials([("gone", None), ("first", first), ("second", second)])
    assert found["r.example.com"].username == "a"
    assert found["other.example.com:5000"].username == "c"
    assert auth.pull_secret_credentials([]) == {}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (_pull_secret({"auths": {}}, type_="Opaque"), "not of type kubernetes.io/dockerconfigjson"),
        (
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "%%"}},
            "not a valid",
        ),
        (_pull_secret(["not", "an", "object"]), "not a valid docker config"),
    ],
)
def test_a_pull_secret_that_cannot_give_credentials_is_refused_by_name(
    secret: dict[str, Any], message: str
) -> None:
    with pytest.raises(auth.PullSecretError, match=message) as refused:
        auth.pull_secret_credentials([("regcred", secret)])
    assert "pull secret regcred" in str(refused.value)
