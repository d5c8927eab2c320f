"""Idempotency keys of API requests: the response of the first request under a key."""

from __future__ import annotations

import sqlite3

from runtime import clock

from .db import Database


class Idempotency(Database):
    """`idempotency`, keyed by (API client, Idempotency-Key)."""

    def idempotent_response(self, client: str, key: str) -> tuple[str, int, bytes] | None:
        """(request hash, status, response body) stored under the key, if any."""
        row = self._db.execute(
            "SELECT request_hash, status, response FROM idempotency WHERE client = ? AND key = ?",
            (client, key),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]))

    @staticmethod
    def remember_response(
        db: sqlite3.Connection, client: str, key: str, digest: str, status: int, response: bytes
    ) -> None:
        """Store a response under the key in the caller's transaction (with its effect)."""
        db.execute(
            "INSERT OR IGNORE INTO idempotency (client, key, request_hash, status, response,"
            " created) VALUES (?, ?, ?, ?, ?, ?)",
            (client, key, digest, status, response, clock.now()),
        )
