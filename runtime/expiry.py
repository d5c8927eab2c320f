"""How close the trusted directory and root are to expiry, as health every part reports.

Agents, the bus authority and the ledger each hold a root and a directory verified from the
pinned root (keys.directory.TrustStore). `assess` turns their expiry times into one health
state: `ok`; `warning` (still trusted, but expiring within the warning window: renew or rotate
now); `degraded` (expired, or nothing trusted yet). docs/RUNBOOK.md says what to do for each
reason. Pure: the caller passes `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from keys.directory import TrustStore

from . import clock

Status = Literal["ok", "warning", "degraded"]

#: The reasons, in the order they are listed.
NO_DIRECTORY: Final = "no-directory"
DIRECTORY_EXPIRED: Final = "directory-expired"
ROOT_EXPIRED: Final = "root-expired"
DIRECTORY_EXPIRES_SOON: Final = "directory-expires-soon"
ROOT_EXPIRES_SOON: Final = "root-expires-soon"

_ORDER: Final[tuple[Status, ...]] = ("ok", "warning", "degraded")


def worst(*statuses: Status) -> Status:
    """The most serious of `statuses` (ok < warning < degraded)."""
    return max(statuses, key=_ORDER.index, default="ok")


@dataclass(frozen=True, slots=True)
class Expiry:
    """The expiry part of a health answer."""

    status: Status
    reasons: tuple[str, ...]
    root_expires: int
    directory_expires: int | None


def assess(
    *, root_expires: int, directory_expires: int | None, now: int, warning_seconds: int
) -> Expiry:
    """Degraded if the newest root or the directory has expired (or there is no directory);
    warning if either expires within `warning_seconds` of `now`; ok otherwise."""
    if warning_seconds < 0:
        raise ValueError("warning_seconds must not be negative")
    degraded: list[str] = []
    warning: list[str] = []
    if directory_expires is None:
        degraded.append(NO_DIRECTORY)
    elif now >= directory_expires:
        degraded.append(DIRECTORY_EXPIRED)
    elif directory_expires - now <= warning_seconds:
        warning.append(DIRECTORY_EXPIRES_SOON)
    if now >= root_expires:
        degraded.append(ROOT_EXPIRED)
    elif root_expires - now <= warning_seconds:
        warning.append(ROOT_EXPIRES_SOON)
    status: Status = "degraded" if degraded else "warning" if warning else "ok"
    return Expiry(status, (*degraded, *warning), root_expires, directory_expires)


def of_store(store: TrustStore, *, warning_seconds: int) -> Expiry:
    """`assess` the newest root and the directory a trust store holds, now."""
    d = store.directory
    return assess(
        root_expires=store.root.expires,
        directory_expires=None if d is None else d.expires,
        now=clock.now(),
        warning_seconds=warning_seconds,
    )
