"""The operator's binding cache answers a pass only when the watch shows the operator's own
writes, and never brings back what a listing showed gone."""

from __future__ import annotations

from typing import Any

from wasmfleet_operator.binding_cache import BindingCache
from wasmfleet_operator.render import LABEL_SERVICE

KEY = "ns/web"


def _binding(name: str, version: int, service: str = "web") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(version),
            "labels": {LABEL_SERVICE: service},
        }
    }


def _names(cache: BindingCache, key: str = KEY) -> set[str] | None:
    found = cache.bindings(key)
    return None if found is None else {b["metadata"]["name"] for b in found}


def test_the_watch_fills_the_cache_and_a_pass_reads_it() -> None:
    cache = BindingCache()
    assert _names(cache) == set()
    cache.observe(_binding("a", 5), deleted=False)
    cache.observe(_binding("b", 6), deleted=False)
    cache.observe(_binding("x", 7, service="other"), deleted=False)
    assert _names(cache) == {"a", "b"}
    cache.observe(_binding("a", 8), deleted=True)
    assert _names(cache) == {"b"}


def test_a_write_not_yet_seen_makes_the_pass_list_until_the_watch_shows_it() -> None:
    cache = BindingCache()
    cache.wrote(KEY, _binding("a", 10))
    assert cache.bindings(KEY) is None
    cache.observe(_binding("a", 9), deleted=False)  # an older version: not yet
    assert cache.bindings(KEY) is None
    cache.observe(_binding("a", 10), deleted=False)
    assert _names(cache) == {"a"}


def test_a_write_the_watch_showed_first_leaves_no_expectation() -> None:
    cache = BindingCache()
    cache.observe(_binding("a", 10), deleted=False)
    cache.wrote(KEY, _binding("a", 10))
    assert _names(cache) == {"a"}
    cache.deleted(KEY, "gone-already")  # never seen: nothing to wait for
    assert _names(cache) == {"a"}


def test_a_deletion_is_awaited_until_the_watch_shows_it_gone() -> None:
    cache = BindingCache()
    cache.observe(_binding("a", 3), deleted=False)
    cache.deleted(KEY, "a")
    assert cache.bindings(KEY) is None
    cache.observe(_binding("a", 4), deleted=True)
    assert _names(cache) == set()


def test_a_listing_is_the_truth_and_older_events_do_not_undo_it() -> None:
    cache = BindingCache()
    cache.observe(_binding("a", 3), deleted=False)
    cache.wrote(KEY, _binding("b", 20))
    listing = {"metadata": {"resourceVersion": "25"}, "items": [_binding("b", 20)]}
    cache.listed(KEY, listing)
    assert _names(cache) == {"b"}, "the listing shows a gone and meets b's expectation"
    cache.observe(_binding("a", 4), deleted=False)  # a late event from before the listing
    assert _names(cache) == {"b"}
    cache.observe(_binding("c", 26), deleted=False)
    assert _names(cache) == {"b", "c"}


def test_distrusted_services_list_once_then_read_the_cache() -> None:
    cache = BindingCache()
    cache.observe(_binding("a", 3), deleted=False)
    cache.distrust([KEY])
    assert cache.bindings(KEY) is None
    cache.listed(KEY, {"metadata": {"resourceVersion": "4"}, "items": []})
    assert _names(cache) == set()


def test_a_binding_whose_label_changes_moves_to_its_new_service() -> None:
    cache = BindingCache()
    cache.observe(_binding("a", 3), deleted=False)
    cache.observe(_binding("a", 4, service="other"), deleted=False)
    assert _names(cache) == set()
    assert _names(cache, "ns/other") == {"a"}


def test_versions_that_are_not_numbers_turn_the_cache_off() -> None:
    cache = BindingCache()
    odd = _binding("a", 1)
    odd["metadata"]["resourceVersion"] = "not-a-number"
    cache.observe(odd, deleted=False)
    assert cache.bindings(KEY) is None
