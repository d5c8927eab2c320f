"""Attachments uploaded here, their queued uploads, and those received (agents/attachments.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from .db import Database


class AttachmentTables(Database):
    """`attachments`, `attachment_uploads`, `received_attachments`."""

    @staticmethod
    def insert_attachment(
        db: sqlite3.Connection,
        attachment_id: str,
        sha256: str,
        size: int,
        media_type: str,
        sealed: bytes,
        created: int,
    ) -> None:
        db.execute(
            "INSERT INTO attachments (attachment_id, sha256, size, media_type, sealed, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (attachment_id, sha256, size, media_type, sealed, created),
        )

    def attachment_digest(self, attachment_id: object) -> tuple[str, int] | None:
        """(sha256, size) of an uploaded attachment, if there is one with this id."""
        row = self._db.execute(
            "SELECT sha256, size FROM attachments WHERE attachment_id = ?", (attachment_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    @staticmethod
    def sealed_attachment(db: sqlite3.Connection, attachment_id: str) -> bytes:
        (sealed,) = db.execute(
            "SELECT sealed FROM attachments WHERE attachment_id = ?", (attachment_id,)
        ).fetchone()
        return bytes(sealed)

    @staticmethod
    def queue_attachment_upload(db: sqlite3.Connection, object_name: str, data: bytes) -> None:
        db.execute(
            "INSERT OR IGNORE INTO attachment_uploads (object_name, data, state)"
            " VALUES (?, ?, 'queued')",
            (object_name, data),
        )

    def queued_uploads(self, limit: int) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT object_name, data FROM attachment_uploads WHERE state = 'queued' LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(n), bytes(d)) for n, d in rows]

    def mark_uploaded(self, object_name: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE attachment_uploads SET state = 'sent', data = NULL WHERE object_name = ?",
                (object_name,),
            )

    @staticmethod
    def expect_attachment(
        db: sqlite3.Connection,
        owner: str,
        referral_id: str,
        attachment_id: str,
        sha256: str,
        size: int,
        media_type: str,
        sealed_key: bytes,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO received_attachments (owner, referral_id, attachment_id,"
            " sha256, size, media_type, sealed_key, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            (owner, referral_id, attachment_id, sha256, size, media_type, sealed_key),
        )

    def received_attachment(
        self, owner: str, referral_id: str, attachment_id: str
    ) -> tuple[Any, ...] | None:
        """(state, sealed key, data, media type) of a received attachment."""
        row: tuple[Any, ...] | None = self._db.execute(
            "SELECT state, sealed_key, data, media_type FROM received_attachments"
            " WHERE owner = ? AND referral_id = ? AND attachment_id = ?",
            (owner, referral_id, attachment_id),
        ).fetchone()
        return row

    def pending_fetches(self, limit: int) -> list[tuple[str, str, str, str, int, bytes]]:
        """(owner, referral id, attachment id, sha256, size, sealed key) still to fetch."""
        rows = self._db.execute(
            "SELECT owner, referral_id, attachment_id, sha256, size, sealed_key FROM"
            " received_attachments WHERE state = 'pending' LIMIT ?",
            (limit,),
        ).fetchall()
        return [(str(o), str(a), str(b), str(c), int(d), bytes(e)) for o, a, b, c, d, e in rows]

    def mark_fetched(
        self, owner: str, referral_id: str, attachment_id: str, state: str, data: bytes | None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE received_attachments SET state = ?, data = ? WHERE owner = ?"
                " AND referral_id = ? AND attachment_id = ? AND state = 'pending'",
                (state, data, owner, referral_id, attachment_id),
            )
