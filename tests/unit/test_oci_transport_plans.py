"""The transport's pure decisions: which scheme a registry gets, how long to back off."""

from __future__ import annotations

import pytest

from wasmfleet_common.backoff import Backoff
from wasmfleet_oci.transport import (
    ClientSettings,
    plan_retry_delay,
    plan_scheme,
)

DEFAULTS = ClientSettings()


@pytest.mark.parametrize(
    "registry", ["127.0.0.1:5000", "127.1.2.3", "localhost", "localhost:5000", "[::1]:5000"]
)
def test_a_loopback_registry_defaults_to_plain_http(registry: str) -> None:
    assert plan_scheme(registry, settings=DEFAULTS) == "http"


@pytest.mark.parametrize("registry", ["registry.example.com", "10.0.0.5:5000", "ghcr.io"])
def test_any_other_registry_gets_https(registry: str) -> None:
    assert plan_scheme(registry, settings=DEFAULTS) == "https"


def test_loopback_gets_https_when_the_default_is_turned_off() -> None:
    settings = ClientSettings(plain_http_for_loopback=False)
    assert plan_scheme("127.0.0.1:5000", settings=settings) == "https"


def test_an_insecure_registry_listed_with_its_port_gets_http_on_that_port_only() -> None:
    settings = ClientSettings(insecure_registries=frozenset({"10.0.0.5:5000"}))
    assert plan_scheme("10.0.0.5:5000", settings=settings) == "http"
    assert plan_scheme("10.0.0.5:6000", settings=settings) == "https"


def test_an_insecure_registry_listed_without_a_port_gets_http_on_every_port() -> None:
    settings = ClientSettings(insecure_registries=frozenset({"Registry.Lan"}))
    assert plan_scheme("registry.lan:5000", settings=settings) == "http"
    assert plan_scheme("registry.lan", settings=settings) == "http"
    assert plan_scheme("other.lan", settings=settings) == "https"


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [Backoff(base=0.5, cap=3.0).delay(n) for n in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert Backoff(base=1.0, cap=300.0).delay(10_000) == 300.0


def test_a_numeric_retry_after_is_honoured_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=5)
    assert plan_retry_delay(1, retry_after="2", backoff=backoff) == 2.0
    assert plan_retry_delay(1, retry_after="120", backoff=backoff) == 5.0


def test_a_retry_after_date_falls_back_to_backoff() -> None:
    backoff = Backoff(base=0.1, cap=5)
    delay = plan_retry_delay(2, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", backoff=backoff)
    assert delay == 0.2


def test_settings_refuse_zero_attempts() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ClientSettings(max_attempts=0)
