"""The history of agencies' signing keys, for verifying what they signed long ago (§7.9).

A directory lists at most 32 keys of each kind per agency, and removing an agency drops all
of its keys, so the current directory cannot say whether a years-old signature was made by a
key that was valid then. A verifier that keeps records to re-verify later therefore keeps a
key history: every signing key it ever saw in a directory it accepted, with its window and
revocation, folded in by `merge` as each directory is accepted. `signing_key_at` applies the
rule of §7.6 to that history instead of to one directory version.

Each row is one *window* of one key: (agency, kid, valid_from). Rotation and revocation keep
`valid_from`, so they update the row; an agency removed and re-admitted with the same key
gets a second window. A window ends at its latest listing's `valid_until`, or, for a key a
directory stopped listing while it was open-ended, at the time the verifier accepted that
directory (`delisted_at`). Revocation is never undone: the earliest `revoked_at` any
directory stated for a key applies to all its windows.

Pure: no clock (callers pass `seen_at` and `at`), no storage, no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from nacl.signing import VerifyKey

from .directory import Directory
from .errors import MalformedError, RetiredKeyError, RevokedKeyError, UnknownKeyError

__all__ = ["KeyWindow", "merge", "signing_key_at", "windows_of"]


@dataclass(frozen=True, slots=True)
class KeyWindow:
    """One window of one signing key of one agency, as accepted directories described it."""

    agency: str
    kid: str
    public: bytes
    valid_from: int
    #: The last second of the window (inclusive), or None while open-ended.
    valid_until: int | None
    #: The first second the key is no longer trusted, if a directory revoked it.
    revoked_at: int | None
    #: The directory version that last changed this window.
    listed_version: int
    #: When a directory that no longer listed this window was first accepted, if one was.
    delisted_at: int | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.agency, self.kid, self.valid_from)

    @property
    def end(self) -> int | None:
        """The last second the window covers: `valid_until`, bounded by `delisted_at`."""
        if self.delisted_at is None:
            return self.valid_until
        if self.valid_until is None:
            return self.delisted_at
        return min(self.valid_until, self.delisted_at)

    def covers(self, at: int) -> bool:
        end = self.end
        return self.valid_from <= at and (end is None or at <= end)


def merge(history: Iterable[KeyWindow], directory: Directory, *, seen_at: int) -> list[KeyWindow]:
    """The windows that change when `directory`, accepted at `seen_at`, joins `history`.

    Every signing key the directory lists is added or updated (its latest listing gives the
    window's end; an earlier `revoked_at` than known wins); every known open window the
    directory no longer lists is closed at `seen_at`. A directory older than the version
    that last changed a window changes nothing of it, and merging the same directory twice
    is a no-op: only windows that really change are returned.
    """
    known = {w.key: w for w in history}
    changed: dict[tuple[str, str, int], KeyWindow] = {}
    listed: set[tuple[str, str, int]] = set()
    for entry in directory.agencies:
        for k in entry.signing_keys:
            key = (entry.agency, k.kid, k.valid_from)
            listed.add(key)
            revoked_at = k.revoked_at if k.status == "revoked" else None
            old = known.get(key)
            if old is None:
                changed[key] = KeyWindow(
                    agency=entry.agency,
                    kid=k.kid,
                    public=k.public,
                    valid_from=k.valid_from,
                    valid_until=k.valid_until,
                    revoked_at=revoked_at,
                    listed_version=directory.version,
                )
                continue
            if directory.version < old.listed_version:
                continue
            new = replace(
                old,
                valid_until=k.valid_until,
                revoked_at=_earliest(old.revoked_at, revoked_at),
                delisted_at=None,
            )
            if new != old:
                changed[key] = replace(new, listed_version=directory.version)
    for key, old in known.items():
        if key in listed or old.delisted_at is not None:
            continue
        if directory.version <= old.listed_version:
            continue
        changed[key] = replace(old, delisted_at=seen_at, listed_version=directory.version)
    return sorted(changed.values(), key=lambda w: w.key)


def windows_of(history: Iterable[KeyWindow], agency: str, kid: str) -> list[KeyWindow]:
    """The windows of key `kid` of `agency`."""
    return [w for w in history if w.agency == agency and w.kid == kid]


def signing_key_at(windows: Sequence[KeyWindow], *, agency: str, kid: str, at: int) -> VerifyKey:
    """The signing key `kid` of `agency` if the history says it was valid at `at` (§7.9).

    `windows` may hold other keys' windows too; only those of (`agency`, `kid`) count.
    Raises UnknownKeyError if no accepted directory ever listed the key for that agency,
    RevokedKeyError if it was revoked at or before `at`, RetiredKeyError if no window of it
    covers `at`, MalformedError if the stored public key is not 32 bytes.
    """
    mine = windows_of(windows, agency, kid)
    if not mine:
        raise UnknownKeyError(f"key {kid} was never a signing key of {agency}")
    revoked = [w.revoked_at for w in mine if w.revoked_at is not None]
    if revoked and at >= min(revoked):
        raise RevokedKeyError(f"key {kid} of {agency} was revoked at {min(revoked)}")
    if not any(w.covers(at) for w in mine):
        raise RetiredKeyError(f"key {kid} of {agency} was not valid at {at}")
    public = mine[0].public
    if not isinstance(public, bytes) or len(public) != 32:  # a history altered where it is kept
        raise MalformedError(f"the key history holds no valid public key for {kid}")
    return VerifyKey(public)


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
