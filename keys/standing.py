"""An agency's standing in a verified directory: may it still sign and be sealed to?

Pure (PROTOCOL.md §7.10): given the directory, the agency id, the key ids its key file holds
and a time, say whether the agency can take part, and if not why. An agent uses it on every
directory it accepts to learn at once that it was removed or that its keys were revoked, and
`nrm keys revoke` uses it to warn before leaving an agency with no usable key.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Literal

from .directory import Directory, KeyEntry

StandingState = Literal["ok", "removed", "key-revoked", "key-unlisted", "key-retired"]
#: Every reason an agency cannot take part, in the order they are checked.
REASONS: Final = ("removed", "key-revoked", "key-unlisted", "key-retired")
#: Standings in which what is already queued may still be delivered: the copies were signed
#: with keys the directory still accepts (judged copy by copy), only new ones cannot be made.
KEEPS_QUEUE: Final = frozenset({"key-unlisted"})


@dataclass(frozen=True, slots=True)
class Standing:
    """`ok`, or why not: `removed` (not in the directory), `key-revoked` (no held signing or
    encryption key is usable and one of them was revoked), `key-unlisted` (the directory lists
    none of the held keys of a kind: typically a rotation not yet published), `key-retired`
    (none is usable because their windows ended). `signing_kid` is the held signing key to
    use when ok."""

    state: StandingState
    detail: str
    signing_kid: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def _usable(
    keys: tuple[KeyEntry, ...], held: Collection[str], at: int, *, sealing: bool, skew: int
) -> list[KeyEntry]:
    """Held keys usable at `at`. A signing key verifies until its revocation time; nobody
    seals to an encryption key marked revoked at all (§7.6). A key whose window starts
    later counts (it is usable in a moment: the administrators' clock may be ahead), and a
    window's end is given `skew` seconds of grace."""
    out = []
    for k in keys:
        revoked = k.status == "revoked" and (sealing or (k.revoked_at or 0) <= at)
        ended = k.valid_until is not None and at > k.valid_until + skew
        if k.kid in held and not revoked and not ended:
            out.append(k)
    return out


def standing_of(
    directory: Directory,
    agency: str,
    *,
    signing_kids: Collection[str],
    encryption_kids: Collection[str],
    at: int,
    skew: int,
) -> Standing:
    """The standing of `agency` at `at` if its key file holds `signing_kids` and
    `encryption_kids` (a signing key's revocation dated after `at` does not count yet);
    `skew` is the clock skew tolerated (Limits.clock_skew_seconds)."""
    if agency not in directory:
        return Standing("removed", f"{agency} is not in directory version {directory.version}")
    entry = directory.agency(agency)
    for what, keys, held, sealing in (
        ("signing", entry.signing_keys, signing_kids, False),
        ("encryption", entry.encryption_keys, encryption_kids, True),
    ):
        if _usable(keys, held, at, sealing=sealing, skew=skew):
            continue
        listed = [k for k in keys if k.kid in held]
        if any(k.status == "revoked" for k in listed):
            return Standing(
                "key-revoked",
                f"no {what} key held by {agency} is usable in directory version "
                f"{directory.version}: revoked",
            )
        if not listed:
            return Standing(
                "key-unlisted",
                f"directory version {directory.version} lists no {what} key that {agency} "
                "holds: publish the directory with its new identity.json",
            )
        return Standing(
            "key-retired",
            f"every {what} key held by {agency} is past its validity window in directory "
            f"version {directory.version}",
        )
    signing = _usable(entry.signing_keys, signing_kids, at, sealing=False, skew=skew)
    best = max(signing, key=lambda k: (k.status == "active", k.valid_from, k.kid))
    return Standing("ok", "", signing_kid=best.kid)


def revoked_since(directory: Directory, agency: str, kid: str) -> int | None:
    """When signing key `kid` of `agency` stopped being acceptable: its revocation time, or
    0 if the directory no longer lists the agency or the key; None if it is not revoked
    (a key past its window is judged by its window, not here)."""
    if agency not in directory:
        return 0
    key = next((k for k in directory.agency(agency).signing_keys if k.kid == kid), None)
    if key is None:
        return 0
    return key.revoked_at if key.status == "revoked" else None


def next_revocation(directory: Directory, agency: str, *, after: int) -> int | None:
    """The earliest revocation time of one of `agency`'s keys later than `after`, if any: the
    moment its standing must be looked at again."""
    if agency not in directory:
        return None
    entry = directory.agency(agency)
    times = [
        k.revoked_at
        for k in (*entry.signing_keys, *entry.encryption_keys)
        if k.revoked_at is not None and k.revoked_at > after
    ]
    return min(times, default=None)
