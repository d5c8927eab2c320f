"""The agency agent: keys, store, transport and API, wired together and owned in one place."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from keys import (
    AgencyKeys,
    Opened,
    PeerBook,
    PublicIdentity,
    ReplayedError,
    UnexpectedMessageError,
    UntrustedInputError,
    open_envelope,
    seal,
)
from keys.keyfile import load_key_dir, read_passphrase

from .api import ApiSettings, make_app
from .config import AgentConfig
from .messages import DELIVERY_RECEIPT, REFERRAL, DeliveryReceipt, canonical_json
from .problems import ProblemError
from .store import OutgoingMessage, Received, Store
from .transport import Transport, Verdict

log = structlog.get_logger("nrm.agent")

#: Test-only crash points (docs/RUNBOOK.md): `NRM_FAILPOINT=inbox-after-commit` makes the
#: process exit right after committing a received message and before acking it.
FAILPOINT_ENV = "NRM_FAILPOINT"


class Agent:
    """One agency's agent. Use as `async with Agent(...)`, or `start()` / `stop()`."""

    def __init__(self, config: AgentConfig, *, keys: AgencyKeys, peers: PeerBook) -> None:
        if keys.agency != config.agency:
            raise ValueError(f"key file is for {keys.agency}, configuration for {config.agency}")
        self.config = config
        self.keys = keys
        self.peers = peers
        self.limits = config.limits
        self.store = Store(config.database)
        self._decryption_keys = {keys.public.encryption_kid: keys.encryption_key}
        self.transport = Transport(
            agency=config.agency,
            urls=config.nats_urls,
            store=self.store,
            handler=self.handle_message,
            limits=self.limits,
        )
        self.log = log.bind(agency=config.agency)
        self._runner: web.AppRunner | None = None
        self.api_port: int | None = None
        self._failpoint = os.environ.get(FAILPOINT_ENV, "")

    @classmethod
    def from_config_file(cls, path: Path) -> Agent:
        config = AgentConfig.load(path)
        keys = load_key_dir(config.key_dir, passphrase=read_passphrase(file=config.passphrase_file))
        peers = PeerBook.of(
            [keys.public]
            + [PublicIdentity.from_json(p.read_text()) for p in config.peer_identities]
        )
        return cls(config, keys=keys, peers=peers)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = make_app(
            self,
            ApiSettings(
                clients=self.config.clients,
                max_request_bytes=self.limits.max_request_bytes,
                default_page_size=self.limits.default_page_size,
                max_page_size=self.limits.max_page_size,
            ),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.api_host, self.config.api_port)
        await site.start()
        self.api_port = self._runner.addresses[0][1]
        await self.transport.start()
        self.log.info("agent_started", api_port=self.api_port)

    async def stop(self) -> None:
        await self.transport.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.store.close()
        self.log.info("agent_stopped")

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api_host}:{self.api_port}"

    # --- sending --------------------------------------------------------------------------

    def submit_referral(self, *, recipients: Sequence[str], referral: dict[str, Any]) -> str:
        """Seal a referral to `recipients` and commit it to the outbox (before the 202)."""
        if len(set(recipients)) != len(recipients):
            raise ProblemError(422, "Unprocessable Content", "recipients must be distinct")
        if len(recipients) > self.limits.max_recipients:
            raise ProblemError(
                422, "Unprocessable Content", f"at most {self.limits.max_recipients} recipients"
            )
        unknown = [r for r in recipients if r not in self.peers or r == self.config.agency]
        if unknown:
            raise ProblemError(
                422, "Unprocessable Content", f"unknown recipient agencies: {sorted(unknown)}"
            )
        body = canonical_json(referral)
        if len(body) > self.limits.max_body_bytes:
            raise ProblemError(
                413, "Content Too Large", f"the referral is over {self.limits.max_body_bytes} bytes"
            )
        message_id = self._send(REFERRAL, body, list(recipients))
        self.log.info("referral_accepted", message_id=message_id, recipients=list(recipients))
        return message_id

    def _send(self, kind: str, body: bytes, recipients: list[str], db: Any = None) -> str:
        now = int(time.time())
        sealed = seal(
            sender=self.keys,
            recipients=[self.peers.recipient(r) for r in recipients],
            kind=kind,
            body=body,
            created=now,
            expires=now + self.limits.message_ttl_seconds,
            limits=self.limits,
        )
        self.store.enqueue(
            OutgoingMessage(
                message_id=sealed.header.message_id,
                kind=kind,
                created=now,
                envelope_hash=sealed.hash,
                envelope=sealed.data,
                recipients=recipients,
            ),
            db,
        )
        self.transport.wake()
        return sealed.header.message_id

    # --- receiving ------------------------------------------------------------------------

    def handle_message(self, data: bytes, stream_seq: int) -> Verdict:
        """Verify, decrypt and commit one message from the bus; say whether to ack or term."""
        try:
            opened = open_envelope(
                data,
                me=self.config.agency,
                decryption_keys=self._decryption_keys,
                signers=self.peers,
                now=int(time.time()),
                limits=self.limits,
            )
            first_seq = self.store.received_stream_seq(opened.header.message_id)
            if first_seq == stream_seq:
                self.log.info("redelivery_ignored", message_id=opened.header.message_id)
                return Verdict.ACK  # committed before a crash; the ack was lost
            if first_seq is not None:
                raise ReplayedError(f"message {opened.header.message_id} was already received")
            self._commit(opened, stream_seq)
        except UntrustedInputError as e:
            self.log.warning(
                "message_rejected",
                agency=self.config.agency,
                stream_seq=stream_seq,
                reason=e.reason,
            )
            return Verdict.TERM
        if self._failpoint == "inbox-after-commit":
            self.log.warning("failpoint_exit", failpoint=self._failpoint)
            os._exit(70)
        return Verdict.ACK

    def _commit(self, opened: Opened, stream_seq: int) -> None:
        h = opened.header
        now = int(time.time())
        received = Received(
            seq=0,
            message_id=h.message_id,
            kind=h.kind,
            sender=h.sender,
            envelope_hash=opened.envelope_hash,
            created=h.created,
            received_at=now,
            body=opened.body,
        )
        if h.kind == REFERRAL:
            receipt = DeliveryReceipt(h.message_id, opened.envelope_hash, now)
            with self.store.transaction() as tx:
                self.store.insert_received(tx, received, stream_seq=stream_seq)
                receipt_id = self._send(DELIVERY_RECEIPT, receipt.encode(), [h.sender], tx)
            self.log.info(
                "referral_received",
                message_id=h.message_id,
                sender=h.sender,
                envelope_hash=opened.envelope_hash,
                sender_kid=h.sender_kid,
                receipt_id=receipt_id,
            )
            self.transport.wake()
        elif h.kind == DELIVERY_RECEIPT:
            receipt = DeliveryReceipt.decode(opened.body)
            with self.store.transaction() as tx:
                if not self.store.mark_delivered(
                    tx,
                    message_id=receipt.message_id,
                    recipient=h.sender,
                    envelope_hash=receipt.envelope_hash,
                ):
                    raise UnexpectedMessageError("receipt names no envelope sent to its sender")
                self.store.insert_received(tx, received, stream_seq=stream_seq)
            self.log.info("delivery_confirmed", message_id=receipt.message_id, recipient=h.sender)
        else:
            raise UnexpectedMessageError(f"unknown message kind {h.kind}")

    # --- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        connected = self.transport.connected
        return {
            "status": "ok" if connected else "degraded",
            "agency": self.config.agency,
            "bus": "connected" if connected else "disconnected",
            "outbox_pending": self.store.pending_count(),
        }
