"""The records of who the registry let pull a cached module: anonymous covers everyone, a
record goes stale after its ttl, and only the newest records are kept."""

from __future__ import annotations

from pathlib import Path

from wasmfleet_agent.store.access import ANONYMOUS, AccessRecords, Shown, caller
from wasmfleet_oci.auth import Credentials

REPO = "registry.example:5000/team-a/secret"
DIGEST = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_is_known_once_granted_and_anonymous_grants_cover_everyone(
    tmp_path: Path,
) -> None:
    records = AccessRecords(tmp_path / "access", clock=Clock())
    alice = caller(Credentials(username="alice", password="pw"))
    bob = caller(Credentials(username="bob", password="pw"))
    assert records.shown(REPO, DIGEST, alice) is Shown.UNKNOWN
    records.grant(REPO, DIGEST, alice)
    assert records.shown(REPO, DIGEST, alice) is Shown.FRESH
    assert records.shown(REPO, DIGEST, bob) is Shown.UNKNOWN
    assert records.shown(REPO, DIGEST, ANONYMOUS) is Shown.UNKNOWN
    assert records.shown("registry.example:5000/team-b/secret", DIGEST, alice) is Shown.UNKNOWN
    records.grant(REPO, DIGEST, ANONYMOUS)
    assert records.shown(REPO, DIGEST, bob) is Shown.FRESH
    records.forget(REPO, DIGEST, ANONYMOUS)
    assert records.shown(REPO, DIGEST, bob) is Shown.UNKNOWN
    # nothing of the credentials is written: the file names are one-way hashes
    names = " ".join(p.name for p in (tmp_path / "access").iterdir())
    assert "alice" not in names
    assert "pw" not in names


def test_a_record_goes_stale_after_its_ttl_and_a_new_grant_freshens_it(tmp_path: Path) -> None:
    clock = Clock()
    records = AccessRecords(tmp_path / "access", ttl=60.0, clock=clock)
    records.grant(REPO, DIGEST, ANONYMOUS)
    clock.now += 59
    assert records.shown(REPO, DIGEST, ANONYMOUS) is Shown.FRESH
    clock.now += 2
    assert records.shown(REPO, DIGEST, ANONYMOUS) is Shown.STALE
    records.grant(REPO, DIGEST, ANONYMOUS)
    assert records.shown(REPO, DIGEST, ANONYMOUS) is Shown.FRESH
    # and a restart reads the same records
    again = AccessRecords(tmp_path / "access", ttl=60.0, clock=clock)
    assert again.shown(REPO, DIGEST, ANONYMOUS) is Shown.FRESH


def test_only_the_newest_records_are_kept(tmp_path: Path) -> None:
    clock = Clock()
    records = AccessRecords(tmp_path / "access", max_records=3, clock=clock)
    digests = [f"sha256:{n:064x}" for n in range(5)]
    for digest in digests:
        clock.now += 1
        records.grant(REPO, digest, ANONYMOUS)
    assert len(list((tmp_path / "access").iterdir())) == 3
    assert [records.shown(REPO, d, ANONYMOUS) is Shown.FRESH for d in digests] == [
        False,
        False,
        True,
        True,
        True,
    ]
