"""Referral attachments (scanned documents, photos of papers), up to 25 MB each.

The agency system uploads an attachment to its own agent first (`POST /v1/attachments`),
then cites it in a referral body by id and SHA-256. On submission the agent encrypts each
cited attachment once under a fresh per-referral attachment key, puts the ciphertext in its
own JetStream object store bucket `nrm-att-<agency>` (from a durable upload queue; only it
may write there, docs/PROTOCOL.md §5.1), and seals the key only into the bodies of
recipients allowed the `attachments` category. A recipient fetches the object from the
bucket of the referral's sender (the envelope's signer, never a bucket the body names),
authenticates it with the key and checks its SHA-256 against the signed referral before
keeping it; anything else is marked corrupted and never served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nacl.exceptions
import nats.errors
import nats.js.errors
import structlog
from nacl.secret import SecretBox

from keys.errors import MalformedError
from keys.subjects import attachment_bucket, attachment_object, attachment_stream
from runtime import clock
from runtime.backoff import Retry

from .store import Store

log = structlog.get_logger("nrm.attachments")

TRANSIENT = (nats.errors.Error, TimeoutError, OSError, ConnectionError)


class AttachmentError(ValueError):
    """A cited attachment is unknown here or does not match its hash or size."""


class Attachments:
    """Owns the three tables and the upload and fetch loops."""

    def __init__(self, *, store: Store, storage: Callable[[], SecretBox], agency: str) -> None:
        self.store = store
        self.storage = storage
        self.agency = agency
        self.log = log.bind(agency=agency)
        self._wake = asyncio.Event()

    # --- the agency system's uploads -------------------------------------------------------

    def upload(self, content: bytes, *, media_type: str) -> dict[str, Any]:
        attachment_id = secrets.token_hex(16)
        digest = hashlib.sha256(content).hexdigest()
        sealed = bytes(self.storage().encrypt(content))
        with self.store.transaction() as db:
            self.store.insert_attachment(
                db, attachment_id, digest, len(content), media_type, sealed, clock.now()
            )
        return {
            "attachment_id": attachment_id,
            "sha256": digest,
            "size": len(content),
            "media_type": media_type,
        }

    # --- sending ---------------------------------------------------------------------------

    def check_cited(self, cited: Sequence[Mapping[str, Any]]) -> list[str]:
        """Problems with the attachments a referral body cites (unknown id, wrong hash)."""
        problems = []
        for i, item in enumerate(cited):
            row = self.store.attachment_digest(item.get("attachment_id"))
            if row is None:
                problems.append(f"/body/attachments/{i}: no uploaded attachment with this id")
            elif row[0] != item.get("sha256") or row[1] != item.get("size"):
                problems.append(f"/body/attachments/{i}: sha256 or size does not match the upload")
        return problems

    def queue_upload(
        self, db: sqlite3.Connection, referral_id: str, cited: Sequence[Mapping[str, Any]]
    ) -> bytes:
        """Encrypt each cited attachment under a fresh key and queue it; returns the key."""
        key = secrets.token_bytes(SecretBox.KEY_SIZE)
        box = SecretBox(key)
        for item in cited:
            sealed = self.store.sealed_attachment(db, item["attachment_id"])
            content = self.storage().decrypt(sealed)
            self.store.queue_attachment_upload(
                db,
                attachment_object(referral_id, item["attachment_id"]),
                bytes(box.encrypt(content)),
            )
        self._wake.set()
        return key

    # --- receiving -------------------------------------------------------------------------

    def expect(
        self,
        db: sqlite3.Connection,
        owner: str,
        referral_id: str,
        key: bytes,
        cited: Sequence[Mapping[str, Any]],
    ) -> None:
        """Queue the fetch of each attachment `cited` by the referral (owner, referral id):
        `owner` is the sender, whose bucket alone the objects are fetched from."""
        for item in cited:
            if not _well_formed(item):
                raise MalformedError("a cited attachment is not an id, media type, size and hash")
        sealed_key = bytes(self.storage().encrypt(key))
        for item in cited:
            self.store.expect_attachment(
                db,
                owner,
                referral_id,
                str(item["attachment_id"]),
                str(item["sha256"]),
                int(item["size"]),
                str(item["media_type"]),
                sealed_key,
            )
        self._wake.set()

    def read(self, owner: str, referral_id: str, attachment_id: str) -> tuple[str, str, bytes]:
        """(state, media type, content) of an attachment of the referral (owner, referral
        id); the content only when the state is ok."""
        row = self.store.received_attachment(owner, referral_id, attachment_id)
        if row is None:
            return "unknown", "", b""
        state, sealed_key, data, media_type = row
        if state != "ok":
            return state, media_type, b""
        key = self.storage().decrypt(bytes(sealed_key))
        return state, media_type, SecretBox(key).decrypt(bytes(data))

    # --- the loops (run by the transport with its JetStream context) ------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self, js: Any, running: Callable[[], bool]) -> None:
        retry = Retry.after(1.0)
        while running():
            buckets: dict[str, Any] = {}  # agency -> its object store, looked up once
            try:
                while running():
                    worked = await self._fetch_some(js, buckets)
                    worked += await self._upload_some(js, buckets)
                    worked += await self._delete_some(js, buckets)
                    retry.succeeded()
                    if not worked:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TRANSIENT as e:
                self.log.warning("attachment_store_unavailable", error=type(e).__name__)
                await asyncio.sleep(retry.next_delay())

    async def _bucket(self, js: Any, buckets: dict[str, Any], agency: str) -> Any:
        """The object store of `agency`'s attachments. Raises nats-py's BucketNotFoundError
        while the operator has not created it yet (an agency admitted a moment ago)."""
        if agency not in buckets:
            buckets[agency] = await js.object_store(attachment_bucket(agency))
        return buckets[agency]

    async def _upload_some(self, js: Any, buckets: dict[str, Any]) -> int:
        rows = self.store.queued_uploads(4)
        if not rows:
            return 0
        obs = await self._bucket(js, buckets, self.agency)
        for name, data in rows:
            try:
                await obs.get_info(name)
            except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
                await obs.put(name, data)
            # else a put before a crash completed (its meta is written last, and no one
            # else may write this bucket): putting again would need a purge we may not do
            self.store.mark_uploaded(name)
            self.log.info("attachment_uploaded", object_name=name)
        return len(rows)

    async def _fetch_some(self, js: Any, buckets: dict[str, Any]) -> int:
        rows = self.store.pending_fetches(4)
        fetched = 0
        for owner, referral_id, attachment_id, sha256, size, sealed_key in rows:
            try:
                # The sender's bucket, which only the sender can write (§5.1).
                obs = await self._bucket(js, buckets, owner)
                data = await read_object(
                    js, obs, owner, attachment_object(referral_id, attachment_id)
                )
            except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
                continue  # no bucket or not uploaded yet: try again later
            state = "corrupted"
            with contextlib.suppress(nacl.exceptions.CryptoError):
                content = SecretBox(self.storage().decrypt(sealed_key)).decrypt(data)
                if hashlib.sha256(content).hexdigest() == sha256 and len(content) == size:
                    state = "ok"
            self.store.mark_fetched(
                owner, referral_id, attachment_id, state, data if state == "ok" else None
            )
            fetched += 1
            if state == "ok":
                self.log.info(
                    "attachment_verified", referral_id=referral_id, attachment_id=attachment_id
                )
            else:
                self.log.warning(
                    "attachment_refused",
                    referral_id=referral_id,
                    attachment_id=attachment_id,
                    reason="bad-attachment",
                )
        return fetched

    # --- erasure at the sender (issue 11; docs/DESIGN.md "Erasure") ---------------------

    async def _delete_some(self, js: Any, buckets: dict[str, Any]) -> int:
        """Erase the objects of withdrawn referrals from our bucket: every chunk and the meta
        by message deletion with erasure (nats-server overwrites the stored bytes), not a
        purge (which leaves them in the stream's block files until the block is gone)."""
        names = self.store.queued_deletions(4)
        if not names:
            return 0
        obs = await self._bucket(js, buckets, self.agency)
        for name in names:
            await _erase_object(js, obs, self.agency, name)
            with self.store.transaction() as db:
                self.store.deletion_done(db, name)
            self.log.info("attachment_object_erased", object_name=name)
        return len(names)


async def read_object(js: Any, obs: Any, agency: str, name: str) -> bytes:
    """One object of `agency`'s attachment stream, read message by message: its meta (last
    by subject), then its chunks in order (`STREAM.MSG.GET`, next by subject). Not with
    nats-py's `get`, whose ordered push consumer PROTOCOL.md §5.1 does not allow (a push
    consumer delivers to whatever subject its creator names). Raises ObjectNotFoundError
    for an object not (fully) uploaded or deleted; what it returns is checked by the caller
    (authenticated decryption, then the SHA-256 and size of the signed citation)."""
    info = await obs.get_info(name)  # the meta is written after the last chunk
    if info.deleted:
        raise nats.js.errors.ObjectNotFoundError
    chunks, seq, data = f"$O.{attachment_bucket(agency)}.C.{info.nuid}", 1, bytearray()
    for _ in range(info.chunks or 0):
        msg = await js.get_msg(attachment_stream(agency), seq=seq, subject=chunks, next=True)
        data += msg.data or b""
        seq = msg.seq + 1
    return bytes(data)


async def _erase_object(js: Any, obs: Any, agency: str, name: str) -> None:
    """Erase one object's chunks and meta messages from `agency`'s attachment stream."""
    try:
        info = await obs.get_info(name, show_deleted=True)
    except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError):
        return  # never uploaded, or already erased
    bucket, stream = attachment_bucket(agency), attachment_stream(agency)
    chunks = f"$O.{bucket}.C.{info.nuid}"
    meta = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    for subject in (chunks, meta):
        seq = 1
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            await js.delete_msg(stream, msg.seq)  # {"seq": n}: erased, not just removed
            seq = msg.seq + 1


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


#: What an attachment may be (the referral schema's list): scans and photos of papers.
ATTACHMENT_TYPES = frozenset(
    {"application/pdf", "image/jpeg", "image/png", "image/tiff", "image/heic"}
)
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _well_formed(item: object) -> bool:
    """A cited attachment as the referral schema describes it (agents/inbound.py checks a
    received referral as a whole first; this is the part the attachment loop acts on)."""
    if not isinstance(item, dict):
        return False
    attachment_id, sha256, size = item.get("attachment_id"), item.get("sha256"), item.get("size")
    return (
        isinstance(attachment_id, str)
        and _HEX32.fullmatch(attachment_id) is not None
        and isinstance(sha256, str)
        and _HEX64.fullmatch(sha256) is not None
        and type(size) is int
        and size > 0
        and item.get("media_type") in ATTACHMENT_TYPES
    )


def decode_key(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return key if len(key) == SecretBox.KEY_SIZE else None
