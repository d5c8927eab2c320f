"""The agent's view of the signed trust directory.

Starts from the pinned root (the trust anchor an administrator hands over with the agent's
configuration), applies newer roots and directories offered from the bus only after full
verification (keys.directory.TrustFeed, the chain every party builds the same way),
persists what it accepted so a restart never goes backwards, and remembers the last refusal
for the health endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from keys import DEFAULT_LIMITS
from keys.directory import Directory, Root, TrustFeed
from keys.subjects import DIRECTORY_KEY, root_key
from runtime import clock, expiry
from runtime.files import fsync_dir, replace_file

log = structlog.get_logger("nrm.trust")


@dataclass(frozen=True, slots=True)
class Refusal:
    key: str
    reason: str
    detail: str
    at: int


class TrustState:
    """Owns the agent's TrustFeed (keys.directory) and its on-disk cache in `cache_dir`."""

    def __init__(
        self,
        *,
        pinned_root: Path,
        cache_dir: Path,
        agency: str,
        warning_seconds: int = DEFAULT_LIMITS.expiry_warning_seconds,
    ) -> None:
        self.agency = agency
        self.warning_seconds = warning_seconds
        self.cache_dir = cache_dir
        self.log = log.bind(agency=agency)
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The pinned root may have expired: later roots (cached, or from the bus) lead on to
        # the current one; nothing is trusted until the newest root is current (§7.5).
        self.feed = TrustFeed(pinned_root.read_bytes())
        self.store = self.feed.store
        self.refused: Refusal | None = None
        for path in sorted(cache_dir.glob("root.*.json"), key=_root_version):
            if _root_version(path) > self.store.root.version:
                self._apply(root_key(_root_version(path)), path.read_bytes())
        cached = cache_dir / "directory.json"
        if cached.exists():
            self._apply(DIRECTORY_KEY, cached.read_bytes())

    @property
    def root(self) -> Root:
        return self.store.root

    @property
    def directory(self) -> Directory | None:
        """The verified directory, or None if there is none yet, or it or the newest root has
        expired: a frozen copy stops being trusted."""
        return self.store.directory_at(clock.now())

    def offer(self, key: str, value: bytes) -> bool:
        """Verify and apply a root or directory published on the bus; True if it changed
        what is trusted."""
        return self._apply(key, value, persist=True)

    def _apply(self, key: str, value: bytes, *, persist: bool = False) -> bool:
        now = clock.now()
        offered = self.feed.offer(key, value, now=now)
        for root, data in offered.roots:
            if persist:
                replace_file(self.cache_dir / f"root.{root.version}.json", data)
            self.log.info("root_accepted", root_version=root.version)
        if offered.directory is not None:
            directory, data = offered.directory
            if persist:
                replace_file(self.cache_dir / "directory.json", data)
            self.log.info("directory_accepted", directory_version=directory.version)
        if persist and (offered.roots or offered.directory is not None):
            fsync_dir(self.cache_dir)  # the replaced entries too: a restart never goes back
        if offered.refused is not None:
            r = offered.refused
            self.log.warning("directory_refused", key=r.key, reason=r.reason, detail=r.detail)
        if self.feed.refused is None:
            self.refused = None
        elif offered.refused is not None:
            self.refused = Refusal(r.key, r.reason, r.detail, now)
        return offered.changed

    def expiry(self) -> expiry.Expiry:
        """How close the directory and the newest root are to expiry (runtime.expiry)."""
        return expiry.of_store(self.store, warning_seconds=self.warning_seconds)

    def health(self) -> dict[str, Any]:
        d = self.store.directory
        state = self.expiry()
        out: dict[str, Any] = {
            "root_version": self.store.root.version,
            "root_expires": self.store.root.expires,
            "directory_version": None if d is None else d.version,
            "directory_expires": None if d is None else d.expires,
            "directory_trusted": self.directory is not None,
            "expiry": {"status": state.status, "reasons": list(state.reasons)},
        }
        if self.refused is not None:
            out["refused"] = {
                "key": self.refused.key,
                "reason": self.refused.reason,
                "detail": self.refused.detail,
                "at": self.refused.at,
            }
        return out


def _root_version(path: Path) -> int:
    try:
        return int(path.name.split(".")[1])
    except (IndexError, ValueError):
        return -1
