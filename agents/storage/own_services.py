"""The service ids of this agency's own catalogues (docs/PROTOCOL.md §8.2 step 5, §8.8).

`own_services`: one row per service id that a catalogue this agency published, or read back
from the services bucket and accepted, listed: `delisted_at` NULL while its newest such
catalogue lists it, else when one first left it out. A receiver judges a referral naming one
of its own services against it: a service delisted less than a message's life ago still
stands, since a referral in flight may have been checked by its sender against the catalogue
before. Kept across restarts (the bucket holds only the newest catalogue, which may have
expired or been signed by a key since rotated); rows delisted longer ago are dropped. Service
ids are codes, never personal data. A new table: `CREATE TABLE IF NOT EXISTS` adds it.
"""

from __future__ import annotations

from collections.abc import Collection

from .db import Database


class OwnServices(Database):
    """`own_services`."""

    def list_own_services(self, service_ids: Collection[str], *, now: int, forget: int) -> None:
        """This agency's newest catalogue lists `service_ids`: each stands again, every
        other is delisted from `now` on (if not already), and those delisted before
        `forget` are dropped."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO own_services (service_id, delisted_at) VALUES (?, NULL)"
                " ON CONFLICT (service_id) DO UPDATE SET delisted_at = NULL",
                [(s,) for s in service_ids],
            )
            listed = sorted(service_ids)
            db.execute(
                "UPDATE own_services SET delisted_at = ? WHERE delisted_at IS NULL"  # noqa: S608
                f" AND service_id NOT IN ({','.join('?' * len(listed))})",
                (now, *listed),
            )
            db.execute("DELETE FROM own_services WHERE delisted_at < ?", (forget,))

    def own_service_listed(self, service_id: str, *, since: int) -> bool:
        """Whether a catalogue of this agency's lists `service_id`, or did at `since` or
        after."""
        row = self._db.execute(
            "SELECT 1 FROM own_services WHERE service_id = ?"
            " AND (delisted_at IS NULL OR delisted_at >= ?)",
            (service_id, since),
        ).fetchone()
        return row is not None
