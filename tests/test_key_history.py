"""The signing key history: windows folded in from accepted directories, and the rule that
says whether a key was valid for something signed at a given time (PROTOCOL.md §7.9)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from keys.directory import AgencyEntry, Directory, KeyEntry
from keys.errors import (
    MalformedError,
    RetiredKeyError,
    RevokedKeyError,
    UnknownKeyError,
    UntrustedInputError,
)
from keys.identity import encryption_kid, signing_kid
from keys.key_history import KeyWindow, merge, signing_key_at

SIGNERS = {name: SigningKey(bytes([i + 1]) * 32) for i, name in enumerate("ABC")}
KID = {name: signing_kid(k.verify_key) for name, k in SIGNERS.items()}
_ENC = PrivateKey(b"\x09" * 32).public_key
NATS = "U" + "A" * 55

#: A key as one directory lists it: (key name, valid_from, valid_until, revoked_at).
Spec = tuple[str, int, int | None, int | None]


def key(spec: Spec) -> KeyEntry:
    name, valid_from, valid_until, revoked_at = spec
    return KeyEntry(
        kid=KID[name],
        public=bytes(SIGNERS[name].verify_key),
        valid_from=valid_from,
        valid_until=valid_until,
        status="active" if revoked_at is None else "revoked",
        revoked_at=revoked_at,
        reason=None if revoked_at is None else "laptop lost",
    )


def directory(version: int, agencies: dict[str, list[Spec]]) -> Directory:
    return Directory(
        version=version,
        expires=10**9,
        agencies=tuple(
            AgencyEntry(
                agency=agency,
                name=agency,
                roles=("police",),
                signing_keys=tuple(key(s) for s in specs),
                encryption_keys=(KeyEntry(encryption_kid(_ENC), bytes(_ENC), 0, None, "active"),),
                nats_key=NATS,
            )
            for agency, specs in agencies.items()
        ),
    )


def fold(steps: list[tuple[Directory, int]]) -> list[KeyWindow]:
    """Merge each (directory, accepted at) in turn, as the agent's storage layer does."""
    history: dict[tuple[str, str, int], KeyWindow] = {}
    for d, seen_at in steps:
        for w in merge(history.values(), d, seen_at=seen_at):
            history[w.key] = w
    return list(history.values())


@dataclass(frozen=True)
class Case:
    """A police signature by `key` at `at`, checked against the history `steps` folds."""

    name: str
    steps: list[tuple[Directory, int]]
    at: int
    expect: type[UntrustedInputError] | None  # None: verifies under that key
    key: str = "A"


V1 = (directory(1, {"police": [("A", 100, None, None)]}), 100)
ROTATED = (directory(2, {"police": [("A", 100, 300, None), ("B", 200, None, None)]}), 200)
PRUNED = (directory(3, {"police": [("B", 200, None, None)]}), 1000)
REMOVED = (directory(2, {"shelter": [("B", 100, None, None)]}), 500)
READMITTED_NEW = (directory(3, {"police": [("C", 600, None, None)]}), 600)
READMITTED_SAME = (directory(3, {"police": [("A", 600, None, None)]}), 600)
REVOKED_300 = (directory(2, {"police": [("A", 100, None, 300)]}), 300)

CASES = [
    Case("listed once, signed inside its window: verifies", [V1], 150, None),
    Case("signed before the key's valid_from: retired-key", [V1], 50, RetiredKeyError),
    Case("rotated, signed during the overlap: verifies", [V1, ROTATED], 250, None),
    Case("rotated, signed after the overlap ended: retired-key", [V1, ROTATED], 301,
         RetiredKeyError),
    Case("rotated twice deep, the first key pruned, signed in its window: verifies",
         [V1, ROTATED, PRUNED], 250, None),
    Case("removed, then re-admitted with a new key: the old key still verifies its window",
         [V1, REMOVED, READMITTED_NEW], 150, None),
    Case("removed while open-ended, signed after the directory dropped it: retired-key",
         [V1, REMOVED, READMITTED_NEW], 501, RetiredKeyError),
    Case("re-admitted with the same key: its first window still counts",
         [V1, REMOVED, READMITTED_SAME], 150, None),
    Case("re-admitted with the same key: the gap between windows is refused",
         [V1, REMOVED, READMITTED_SAME], 550, RetiredKeyError),
    Case("re-admitted with the same key: its second window counts",
         [V1, REMOVED, READMITTED_SAME], 700, None),
    Case("revoked from t, signed before t: verifies", [V1, REVOKED_300], 299, None),
    Case("revoked from t, signed at t: revoked-key", [V1, REVOKED_300], 300, RevokedKeyError),
    Case("revoked later with --at before the signing time: revoked-key",
         [V1, (directory(2, {"police": [("A", 100, None, 120)]}), 900)], 150,
         RevokedKeyError),
    Case("revoked, then pruned from the directory: still revoked-key",
         [V1, REVOKED_300, (directory(3, {"police": [("B", 400, None, None)]}), 400)],
         350, RevokedKeyError),
    Case("revoked, removed and re-admitted with the same key unrevoked: still revoked-key",
         [V1, REVOKED_300, (directory(3, {}), 500),
          (directory(4, {"police": [("A", 600, None, None)]}), 600)],
         700, RevokedKeyError),
    Case("a later revocation with an earlier time wins",
         [V1, REVOKED_300, (directory(3, {"police": [("A", 100, None, 200)]}), 400)],
         250, RevokedKeyError),
    Case("a key no directory listed: unknown-key", [V1, ROTATED], 250, UnknownKeyError, key="C"),
    Case("another agency's key: unknown-key",
         [(directory(1, {"police": [("A", 100, None, None)],
                         "shelter": [("B", 100, None, None)]}), 100)],
         150, UnknownKeyError, key="B"),
    Case("an older directory offered after a newer one changes nothing",
         [V1, ROTATED, V1], 301, RetiredKeyError),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    """Each scenario verifies under the named key, or is refused with its own reason."""
    history = fold(case.steps)
    if case.expect is None:
        got = signing_key_at(history, agency="police", kid=KID[case.key], at=case.at)
        assert bytes(got) == bytes(SIGNERS[case.key].verify_key)
    else:
        with pytest.raises(case.expect):
            signing_key_at(history, agency="police", kid=KID[case.key], at=case.at)


def test_merging_the_same_directory_again_changes_nothing() -> None:
    """Re-accepting the directory already merged (an agent restart) writes no window."""
    history = fold([V1, ROTATED])
    assert merge(history, ROTATED[0], seen_at=5000) == []


def test_merge_returns_only_the_windows_that_change() -> None:
    """A rotation changes the old key's window and adds the new one; nothing else."""
    history = fold([(directory(1, {"police": [("A", 100, None, None)],
                                   "shelter": [("C", 100, None, None)]}), 100)])  # fmt: skip
    changed = merge(
        history,
        directory(
            2,
            {
                "police": [("A", 100, 300, None), ("B", 200, None, None)],
                "shelter": [("C", 100, None, None)],
            },
        ),
        seen_at=200,
    )
    assert [(w.kid, w.valid_until) for w in changed] == sorted(
        [(KID["A"], 300), (KID["B"], None)], key=lambda t: t[0]
    )


def test_delisting_closes_a_window_at_the_acceptance_time() -> None:
    """A key dropped while open-ended ends when the directory dropping it was accepted."""
    (window,) = [w for w in fold([V1, REMOVED]) if w.kid == KID["A"]]
    assert window.delisted_at == 500 and window.end == 500


def test_a_malformed_stored_key_is_a_named_refusal() -> None:
    """A history row whose public key was altered to the wrong length is malformed, not a
    crash."""
    (window,) = fold([V1])
    broken = dataclasses.replace(window, public=b"short")
    with pytest.raises(MalformedError):
        signing_key_at([broken], agency="police", kid=KID["A"], at=150)
