"""The agency agent: keys, store, transport and API, wired together and owned in one place."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web
from nacl.public import PrivateKey
from nacl.secret import SecretBox

from keys import (
    AgencyKeys,
    KeyFileError,
    Opened,
    ReplayedError,
    SealedToUnknownKeyError,
    UnexpectedMessageError,
    UnknownKeyError,
    UntrustedInputError,
    envelope_hash,
    open_envelope,
    seal,
)
from keys.audit import labels_of
from keys.catalogue import PROVIDER_ROLES, Catalogue
from keys.codec import canonical_json
from keys.directory import Directory
from keys.errors import ChainGapError, UnprocessableError
from keys.subjects import DIRECTORY_KEY, SHARED_INBOX_STREAM
from runtime import clock, expiry
from runtime.http import app_runner
from runtime.keydir import load_key_dir, read_passphrase
from runtime.reload import LiveTls, refresh_tls, restart_needed, server_context
from runtime.supervisor import Supervisor
from runtime.tls import url_host
from runtime.version import VERSION

from . import inbound
from . import webhooks as W
from .access import AccessRecorder
from .api import CLIENTS, ApiSettings, ClientTable, make_app
from .attachments import Attachments
from .audit import AuditTrail
from .break_glass import BreakGlass
from .case_transfers import TransferDesk
from .config import AgentConfig
from .contributions import STATISTICS_CONTRIBUTION, Contribution
from .decisions import IDENTIFICATION_DECISION, DecisionMessage
from .desk import Desk
from .erasure import Eraser
from .errors import DomainError, StandingRefusal, TooLarge, Unavailable, Unprocessable
from .identification import CASE_REFERRAL_TYPE, Identification
from .ledger_check import LedgerWatch
from .messages import (
    CONSENT_WITHDRAWAL,
    DELIVERY_RECEIPT,
    ERASURE_CONFIRMATION,
    ESCALATION,
    NOTIFIED_REASONS,
    OVERDUE,
    REFERRAL,
    REFUSAL,
    TRANSITION,
    DeliveryReceipt,
    Refusal,
)
from .metrics import AgentMetrics
from .nats_key import NatsKeyFollower, wanted_seed
from .presence import DUPLICATE, HELD, Presence, instance_id
from .protections import PROTECTION_NOTICE, NoticeMessage
from .reconsideration import RECONSIDERATION_REQUEST, ReconsiderationRequest
from .referral import is_child
from .resend import RESEND_REQUEST, Resender
from .retention import Retention
from .services import Services
from .standing import StandingGuard
from .statistics import StatisticsDesk
from .store import OutgoingMessage, Received, Store
from .subject_access import SubjectAccess
from .transfer_requests import TransferRequestDesk
from .transfers import (
    CASE_OWNER_CHANGED,
    CASE_TRANSFER,
    TRANSFER,
    TRANSFER_REQUEST,
    TRANSFER_STEP,
    CaseOwnerChanged,
    TransferRequest,
    TransferStep,
)
from .transport import Position, Transport, Verdict
from .trust import TrustState
from .webhooks import WebhookSender

log = structlog.get_logger("nrm.agent")

#: Test-only crash points (docs/RUNBOOK.md): `NRM_FAILPOINT=inbox-after-commit` makes the
#: process exit right after committing a fetched batch of messages and before acking it;
#: `NRM_FAILPOINT=timers-raise` makes the timers loop die at its first step.
FAILPOINT_ENV = "NRM_FAILPOINT"

#: The audit event each outgoing message kind records (others are recorded by the desk).
SENT_EVENTS = {
    REFERRAL: "referral.sent",
    RESEND_REQUEST: "resend.requested",
    DELIVERY_RECEIPT: "receipt.sent",
    TRANSITION: "transition.sent",
    ESCALATION: "escalation.sent",
    OVERDUE: "clock.overdue",
    IDENTIFICATION_DECISION: "identification.sent",
    PROTECTION_NOTICE: "protection.notified",
    RECONSIDERATION_REQUEST: "reconsideration.requested",
    TRANSFER_REQUEST: "transfer-request.sent",
    TRANSFER_STEP: "transfer-step.sent",
    STATISTICS_CONTRIBUTION: "statistics.contributed",
    CASE_TRANSFER: "transfer.sent",
    CASE_OWNER_CHANGED: "case-owner-changed.sent",
}


#: Failures of this agent's own disk or database while handling a message: not the
#: message's fault, so it is retried (`Transport`, `MAX_HANDLER_ATTEMPTS`) before the refusal
#: `unprocessable` (`Agent.on_give_up`).
LOCAL_FAILURES = (sqlite3.OperationalError, OSError)

#: How the agent commits one kind of message: (transaction, opened envelope, checked body).
Handler = Callable[[sqlite3.Connection, Opened, "inbound.Checked"], None]


class Agent:
    """One agency's agent. Use as `async with Agent(...)`, or `start()` / `stop()`."""

    def __init__(self, config: AgentConfig, *, keys: AgencyKeys, trust: TrustState) -> None:
        if keys.agency != config.agency:
            raise ValueError(f"key file is for {keys.agency}, configuration for {config.agency}")
        self.config = config
        self.keys = keys
        self.trust = trust
        self.limits = config.limits
        #: Every background loop of this agent runs under it; a death degrades /healthz.
        self.supervisor = Supervisor(f"agent-{config.agency}")
        self.store = Store(config.database, agency=config.agency)
        self.audit = AuditTrail(agency=config.agency, keys=lambda: self.keys, store=self.store)
        self.access = AccessRecorder(
            audit=self.audit,
            store=self.store,
            window_seconds=config.limits.access_coalesce_seconds,
            may_sign=lambda: self.standing.standing.ok,
        )
        directory = trust.directory
        listed = (
            directory.agency(config.agency).nats_key
            if directory is not None and config.agency in directory
            else None
        )
        self.transport = Transport(
            agency=config.agency,
            endpoint=config.bus,
            store=self.store,
            handler=self.handle_message,
            on_directory=self.on_directory,
            # A key file rotated before the directory naming its new NATS key was published
            # still holds the seed the bus accepts (§3.4).
            nats_seed=wanted_seed(keys, listed=listed, in_use=keys.nats_seed, refused=False),
            limits=self.limits,
            after_commit=self._inbox_committed,
            supervisor=self.supervisor,
        )
        self.log = log.bind(agency=config.agency)
        self.metrics = AgentMetrics(agency=config.agency)
        self.transport.link.on_failure = lambda state: self.metrics.bus_connect_failures.labels(
            state
        ).inc()
        self.presence = Presence(
            agency=config.agency,
            instance=instance_id(config.database.with_name(config.database.name + ".instance")),
            on_change=lambda state: self.metrics.instance_lease(state),
        )
        self.transport.presence = self.presence
        self.transport.on_give_up = self.on_give_up
        # Never publish a copy signed by a key the trusted directory refuses (§7.10).
        self.transport.hold_reason = lambda item: self.standing.hold_reason(
            self.trust.directory, item.envelope, now=clock.now()
        )
        self.transport.on_erase_failed = lambda reason: self.metrics.inbox_erase_failed.labels(
            reason
        ).inc()
        self.nats_key = NatsKeyFollower(
            agency=config.agency,
            key_dir=config.key_dir,
            load=self._load_keys,
            keys=keys,
            directory=lambda: self.trust.directory,
            in_use=lambda: self.transport.nats_seed,
            switch=self.transport.use_seed,
        )
        self.transport.on_auth_refused = self.nats_key.refused
        self.attachments = Attachments(
            store=self.store, storage=self._storage_box, agency=config.agency
        )
        # Erasure (issue 11): the loop that truncates the WAL before confirmations go.
        self.eraser = Eraser(store=self.store, send=self._send, agency=config.agency)
        self.desk = Desk(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            send=self._send,
            keys=lambda: self.keys,
            directory=self._directory,
            escalation_limits={
                "urgent": config.limits.escalation_urgent_seconds,
                "emergency": config.limits.escalation_emergency_seconds,
            },
            attachments=self.attachments,
            erased=self.eraser.erased,
        )
        self.identification = Identification(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            send=self._send,
            keys=lambda: self.keys,
            directory=self._directory,
            coordinators=self.desk.coordinators,
            skew=self.limits.clock_skew_seconds,
            ttl=self.limits.message_ttl_seconds,
        )
        self.desk.accepted = self._open_case
        self.transfer_requests = TransferRequestDesk(
            agency=config.agency, store=self.store, audit=self.audit, send=self._send
        )
        self.statistics = StatisticsDesk(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            send=self._send,
            directory=self._directory,
            referral=self._held_referral,
            limits=self.limits,
            storage=self._storage_box,
            reopen=self._reopen,
        )
        self.transfers = TransferDesk(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            send=self._send,
            desk=self.desk,
            requests=self.transfer_requests,
            max_body_bytes=self.limits.max_body_bytes,
        )
        self.break_glass = BreakGlass(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            desk=self.desk,
            directory=self._directory,
            storage=self._storage_box,
            on_sent=lambda copies: self.metrics.sent.labels(REFERRAL).inc(copies),
            erased=self.eraser.erased,
        )
        self.transport.attachments = self.attachments
        self.services = Services(
            agency=config.agency,
            keys=lambda: self.keys,
            directory=lambda: self.trust.directory,
            limits=self.limits,
            on_published=self._catalogue_published,
            on_own=self._own_catalogue,
            durable=self.store.durable,
        )
        self.transport.services = self.services
        self.desk.offers = self.services.offers
        self.retention = Retention(
            store=self.store,
            audit=self.audit,
            schedule=config.retention,
            agency=config.agency,
            purged=self.eraser.erased,
        )
        self.resend = Resender(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            send=self._send,
            directory=lambda: self.trust.directory,
            limits=self.limits,
        )
        self.ledger_watch = (
            None
            if config.ledger is None
            else LedgerWatch(
                settings=config.ledger,
                store=self.store,
                agency=config.agency,
                on_alert=lambda reason: self.metrics.ledger_alerts.labels(reason).inc(),
                batch=self.limits.ledger_proof_batch,
                directory=lambda: self.trust.directory,
                directory_wanted=lambda: self.transport.link.state == "refused",
                offer_directory=self.on_directory,
            )
        )
        self.subject_access = SubjectAccess(
            agency=config.agency,
            store=self.store,
            watch=self.ledger_watch,
            page=self.limits.ledger_proof_batch,
            skew=self.limits.clock_skew_seconds,
        )
        self.webhooks = (
            WebhookSender(self.store, targets=config.webhooks, supervisor=self.supervisor)
            if config.webhooks
            else None
        )
        self.standing = StandingGuard(
            agency=config.agency,
            store=self.store,
            audit=self.audit,
            limits=self.limits,
            on_failed=lambda reason, n: self.metrics.outbox_failed.labels(reason).inc(n),
            on_copy_failed=lambda tx, copy: self._copy_failed(
                tx, copy.message_id, copy.kind, copy.recipient
            ),
        )
        #: message kind -> how it is committed (every kind `inbound.check` accepts).
        self.handlers = self._handler_table()
        self._watching = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._key_reload: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._clients: ClientTable | None = None
        self._tls: LiveTls | None = None
        self.api_port: int | None = None
        self._failpoint = os.environ.get(FAILPOINT_ENV, "")
        self._remember_keys()  # the directory cached on disk, accepted before this start

    @classmethod
    def from_config_file(cls, path: Path) -> Agent:
        config = AgentConfig.load(path)
        keys = load_key_dir(config.key_dir, passphrase=read_passphrase(file=config.passphrase_file))
        trust = TrustState(
            pinned_root=config.trust_root,
            cache_dir=config.trust_cache,
            agency=config.agency,
            warning_seconds=config.limits.expiry_warning_seconds,
        )
        return cls(config, keys=keys, trust=trust)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the API, the transport and the background loops. If any step fails,
        whatever was started is stopped again (tasks, connections, port, database) and the
        error is raised."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self._follow_own_keys()
        self._check_standing()
        await self.transport.start()
        agency = self.config.agency
        self._loops.append(self.supervisor.spawn(f"nats-key-{agency}", self.nats_key.run))
        self._watching.set()
        self._loops.append(self.supervisor.spawn(f"timers-{agency}", self._timers))
        self._loops.append(
            self.supervisor.spawn(
                f"erasure-{agency}",
                lambda: self.eraser.run(self._watching.is_set, self.transport.wake),
            )
        )
        self._loops.append(
            self.supervisor.spawn(
                f"retention-{agency}", lambda: self.retention.run(self._watching.is_set)
            )
        )
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.ledger_watch is not None:
            watch = self.ledger_watch
            self._loops.append(
                self.supervisor.spawn(f"ledger-watch-{agency}", lambda: watch.run(self._watching))
            )
        # The API opens last: what it answers needs everything above running.
        app = make_app(
            self,
            ApiSettings(
                clients=self.config.clients,
                max_request_bytes=self.limits.max_request_bytes,
                default_page_size=self.limits.default_page_size,
                max_page_size=self.limits.max_page_size,
            ),
            observe=self.metrics.http,
        )
        self._clients = app[CLIENTS]
        self._runner = app_runner(app, self.limits)
        await self._runner.setup()
        tls = self.config.api_tls
        self._tls = None if tls is None else LiveTls(tls)
        site = web.TCPSite(
            self._runner,
            self.config.api_host,
            self.config.api_port,
            ssl_context=server_context(self._tls),
        )
        await site.start()
        self.api_port = self._runner.addresses[0][1]
        self.log.info("agent_started", api_url=self.api_url)

    async def stop(self) -> None:
        """Stop everything `start` started, in reverse order; safe after a failed start."""
        self._watching.clear()
        self.presence.releasing = True  # a successor may take the inbox over at once
        # The agent's own loops first: the NATS key follower could restart the transport.
        await self.supervisor.stop(self._loops)
        self._loops = []
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.transport.stop()
        await self.supervisor.stop()  # whatever else is left
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

    def reload(self, path: Path) -> list[str]:
        """Read `path` again (SIGHUP): `[[api.clients]]` and `[api] tls_cert`/`tls_key` take
        effect for new requests and connections; the names of what changed. ConfigError
        (ReloadRefused: a setting only a restart applies) leaves everything as it was."""
        new = AgentConfig.load(path)
        restart_needed(
            self.config,
            new,
            reloadable=("clients", "api_tls"),
            keys={"api_host": "api.bind", "api_port": "api.bind", "bus": "nats_urls/nats_tls"},
        )
        changed = (
            ["api.tls_cert"] if refresh_tls(self._tls, self.config.api_tls, new.api_tls) else []
        )
        if new.clients != self.config.clients:
            changed.append("api.clients")
            if self._clients is not None:
                self._clients.replace(new.clients)
        self.config = new
        return changed

    @property
    def api_url(self) -> str:
        """The API's URL: https:// when it serves TLS (`[api] tls_cert`)."""
        scheme = "http" if self.config.api_tls is None else "https"
        return f"{scheme}://{url_host(self.config.api_host)}:{self.api_port}"

    # --- sending --------------------------------------------------------------------------

    def submit_referral(
        self,
        *,
        recipients: Sequence[str],
        referral: dict[str, Any],
        client_reference: str | None = None,
        client: str | None = None,
    ) -> dict[str, Any]:
        """Validate, minimise, seal and commit a referral to the outbox (before the 202); a
        break-glass referral is held for a second client instead (agents/break_glass.py),
        `client` naming the API client that submitted it."""
        if len(set(recipients)) != len(recipients):
            raise Unprocessable("recipients must be distinct")
        if len(recipients) > self.limits.max_recipients:
            raise Unprocessable(f"at most {self.limits.max_recipients} recipients")
        directory = self._directory()
        unknown = [r for r in recipients if r not in directory or r == self.config.agency]
        if unknown:
            raise Unprocessable(f"unknown recipient agencies: {sorted(unknown)}")
        body = canonical_json(referral)
        if len(body) > self.limits.max_body_bytes:
            raise TooLarge(f"the referral is over {self.limits.max_body_bytes} bytes")
        if "break_glass" in referral:
            if client is None:
                raise Unprocessable("a break-glass referral is submitted by an API client")
            return self.break_glass.request(
                recipients=recipients,
                document=referral,
                client=client,
                client_reference=client_reference,
            )
        result = self.desk.submit(
            recipients=recipients, document=referral, client_reference=client_reference
        )
        self.metrics.sent.labels(REFERRAL).inc(len(result["recipients"]))
        self.log.info("referral_accepted", referral_id=result["id"], recipients=list(recipients))
        return result

    def _send(
        self,
        kind: str,
        body: bytes,
        recipients: list[str],
        db: sqlite3.Connection | None = None,
        *,
        referral_id: str | None = None,
        labels: tuple[tuple[str, str], ...] = (),
        reason: str | None = None,
    ) -> str:
        """Seal `body` and commit it to the outbox with its audit events (with `labels` and
        `reason`), in `db`'s transaction if given, else in a new one."""
        if db is None:
            with self.store.transaction() as tx:
                return self._send(
                    kind,
                    body,
                    recipients,
                    tx,
                    referral_id=referral_id,
                    labels=labels,
                    reason=reason,
                )
        now = clock.now()
        directory = self._directory()
        sealed_to = [directory.recipient(r, at=now) for r in recipients]
        sealed = seal(
            sender=self.keys,
            recipients=sealed_to,
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
                referral_id=referral_id,
            ),
            db,
        )
        event_kind = SENT_EVENTS.get(kind, "")
        for r in sealed_to if event_kind else []:
            self.audit.record(
                db,
                event_kind,
                referral_id=referral_id,
                counterpart=r.agency,
                envelope_hash=sealed.hash,
                key_ids=(sealed.header.sender_kid, r.kid),
                reason=reason,
                labels=labels,
            )
        self.transport.wake()
        return sealed.header.message_id

    # --- receiving ------------------------------------------------------------------------

    def handle_message(self, data: bytes, position: Position, stored_at: int) -> Verdict:
        """Verify, decrypt, check and commit one message from the bus; say what to do with it.

        `stored_at` is when the bus first stored the message: a sender cannot backdate it,
        so a key revoked before then is refused even if the envelope claims an earlier time.
        A message id received before is a redelivery (acked, nothing done) if it comes again
        from where it was committed (stream and sequence: sequences are per stream), or was
        moved by the bus from there (`Position.moved_from`); anything else is `replayed`.

        Every outcome is one of: committed (ACK), held back (RETRY: no directory yet, a key
        not known yet, or a local storage failure the transport retries a bounded number of
        times, `on_give_up`), or refused for good with an audited reason (TERM). A failure
        of anything else — a bug, RecursionError, a value the store cannot hold — is the
        refusal `unprocessable`, never a silent drop (docs/PROTOCOL.md §6.4).
        """
        stream_seq = position.seq
        now = clock.now()
        directory = self.trust.directory
        if directory is None:
            return Verdict.RETRY  # nothing can be verified without a trusted directory
        opened: Opened | None = None
        body_stage = False
        try:
            opened = self._open(data, directory, now)
            h = opened.header
            first = self.store.received_position(h.message_id)
            # A move vouches only for mail of the shared stream of an earlier release: the
            # header is the bus operator's, unsigned, so a sender could set it on any replay.
            moved = position.moved_from
            if moved is not None and moved[0] != SHARED_INBOX_STREAM:
                moved = None
            if first is not None and first in ((position.stream, stream_seq), moved):
                # Committed before a crash (or a move); the ack was lost. Checked before step
                # 10a: a move gives the copy a new stored time, past a revocation perhaps.
                self.log.info("redelivery_ignored", message_id=h.message_id)
                return Verdict.ACK
            directory.signing_key(h.sender, h.sender_kid, at=max(h.created, stored_at))
            if first is not None:
                raise ReplayedError(f"message {opened.header.message_id} was already received")
            body_stage = True  # from here on a refusal is of the body: the sender is told
            checked = inbound.check(
                h.kind,
                opened.body,
                roles=self._own_roles(directory),
                limits=self.limits,
                policy=directory.policy,
                sender_roles=directory.agency(h.sender).roles,
                services=inbound.ServiceView(
                    me=self.config.agency,
                    own=lambda service_id: self.store.own_service_listed(
                        service_id, since=now - self.limits.message_ttl_seconds
                    ),
                    is_provider=lambda a: (
                        a in directory and bool(PROVIDER_ROLES & set(directory.agency(a).roles))
                    ),
                ),
            )
            self._commit(opened, checked, position)
        except UnknownKeyError as e:
            # Perhaps signed with a key from a directory this agent has not seen yet:
            # hold it back for a while rather than lose it.
            if now - stored_at < self.limits.unknown_key_grace_seconds:
                self.log.info("message_deferred", stream_seq=stream_seq, reason=e.reason)
                return Verdict.RETRY
            return self._reject(data, stream_seq, e, opened)
        except SealedToUnknownKeyError as e:
            # Perhaps sealed to this agency's new key: the sender saw the directory listing
            # it first, and this agent has not yet read that directory or is still loading
            # its rotated key file (_follow_own_keys). Held back within the same grace as a
            # sender key not yet known (PROTOCOL.md §4.7), then refused.
            if now - stored_at < self.limits.unknown_key_grace_seconds:
                self.log.info("message_deferred", stream_seq=stream_seq, reason=e.reason)
                return Verdict.RETRY
            return self._reject(data, stream_seq, e, opened, notify=body_stage)
        except ChainGapError as e:
            # A notice whose predecessor has not come yet (a restore, a key still loading):
            # held back within the same grace, then refused as any broken chain.
            if now - stored_at < self.limits.unknown_key_grace_seconds:
                self.log.info("message_deferred", stream_seq=stream_seq, reason="chain-gap")
                return Verdict.RETRY
            return self._reject(data, stream_seq, e, opened, notify=body_stage)
        except UntrustedInputError as e:
            return self._reject(data, stream_seq, e, opened, notify=body_stage)
        except LOCAL_FAILURES:
            raise  # this agent's disk or database, not the message: the transport retries
        except Exception as e:  # whatever else fails, the message is refused, on the record
            refusal = UnprocessableError(type(e).__name__)
            return self._reject(data, stream_seq, refusal, opened, notify=body_stage)
        return Verdict.ACK

    def on_give_up(self, data: bytes, stream_seq: int, error: BaseException) -> Verdict:
        """The transport's last word on a message whose handling failed every attempt (a
        local failure that did not pass): refused for good as `unprocessable`, audited."""
        return self._reject(data, stream_seq, UnprocessableError(type(error).__name__), None)

    def _catalogue_published(self, catalogue: Catalogue) -> None:
        """A catalogue of this agency's is about to be put: its event and its service ids,
        in one transaction (a failure puts nothing)."""
        with self.store.transaction() as tx:
            self.audit.record(tx, "catalogue.published")
            self._list_own_services(catalogue)

    def _own_catalogue(self, catalogue: Catalogue) -> None:
        """A catalogue of this agency's was taken as accepted (put, or read back from the
        bucket: another instance's, or this one's before a restore). If its ids cannot be
        recorded now, those of a catalogue this agent published are recorded already."""
        try:
            self._list_own_services(catalogue)
        except LOCAL_FAILURES as e:
            self.log.error("own_services_unrecorded", error=type(e).__name__)

    def _list_own_services(self, catalogue: Catalogue) -> None:
        """What a referral naming this agency's service is judged by (PROTOCOL §8.2 step 5):
        every service a catalogue of its listed within a message's life."""
        now = clock.now()
        self.store.list_own_services(
            [s.service_id for s in catalogue.services],
            now=now,
            forget=now - self.limits.message_ttl_seconds,
        )

    def _own_roles(self, directory: Directory) -> frozenset[str]:
        if self.config.agency not in directory:
            return frozenset()
        return frozenset(directory.agency(self.config.agency).roles)

    def _inbox_committed(self) -> None:
        if self._failpoint == "inbox-after-commit":
            self.log.warning("failpoint_exit", failpoint=self._failpoint)
            os._exit(70)

    def _reject(
        self,
        data: bytes,
        stream_seq: int,
        e: UntrustedInputError,
        opened: Opened | None,
        *,
        notify: bool = False,
    ) -> Verdict:
        """Refuse a message for good: log and audit its reason, store nothing of it. Once the
        envelope opened (§4.7 passed), its sender is authenticated: the event names it as
        counterpart, with the key it signed with, so the sender can find the refusal of its
        message in the ledger by the envelope hash (docs/PROTOCOL.md §6.4). With `notify`, a
        refusal of the body is also sent to the sender (§6.5), in the same transaction;
        never for a refusal notice itself."""
        digest = envelope_hash(data)
        sender = None if opened is None else opened.header
        ids: dict[str, str] = {}  # ids only, never a value of the body
        if sender is not None:
            ids.update(sender=sender.sender, kind=sender.kind, message_id=sender.message_id)
        if isinstance(e, UnprocessableError):
            ids["error"] = str(e)  # the failure's class name, not its message
        self.metrics.rejected.labels(e.reason).inc()
        self.log.warning(
            "message_rejected", stream_seq=stream_seq, reason=e.reason, envelope_hash=digest, **ids
        )
        with self.store.transaction() as tx:
            self.audit.record(
                tx,
                "message.rejected",
                envelope_hash=digest,
                reason=e.reason,
                counterpart=None if sender is None else sender.sender,
                key_ids=() if sender is None else (sender.sender_kid,),
            )
            if notify and sender is not None and sender.kind != REFUSAL:
                self._notify_refusal(tx, sender.sender, sender.message_id, digest, e.reason)
        return Verdict.TERM

    def _notify_refusal(
        self, tx: sqlite3.Connection, sender: str, message_id: str, digest: str, reason: str
    ) -> None:
        if reason not in NOTIFIED_REASONS:
            return
        notice = Refusal(message_id, digest, reason, clock.now())
        try:
            self._send(REFUSAL, notice.encode(), [sender], tx)
        except (UntrustedInputError, DomainError) as e:  # e.g. no key left to seal to
            self.log.warning(
                "refusal_unsendable", sender=sender, message_id=message_id, why=type(e).__name__
            )

    def _on_refusal(self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked) -> None:
        """A recipient refused what this agency sent it (§6.5): that copy is failed for good,
        with the recipient's reason, audited as delivery.failed and told to the agency system
        like any failed delivery."""
        if not isinstance(checked, Refusal):
            raise TypeError("a refusal handler takes a checked refusal")
        recipient = opened.header.sender
        copy = self.store.undelivered_copy(checked.message_id, recipient, checked.envelope_hash)
        if copy is None or not self.store.fail_deliveries(
            tx, [(checked.message_id, recipient, checked.reason)]
        ):
            raise UnexpectedMessageError("a refusal of no undelivered envelope sent to its sender")
        kind, referral_id = copy
        self._copy_failed(tx, checked.message_id, kind, recipient)
        self.audit.record(
            tx,
            "delivery.failed",
            referral_id=referral_id,
            counterpart=recipient,
            envelope_hash=checked.envelope_hash,
            reason=checked.reason,
        )
        W.enqueue(
            tx,
            W.WebhookEvent(
                id=W.new_event_id(),
                type="delivery.failed",
                created=clock.now(),
                data={
                    "message_id": checked.message_id,
                    "kind": kind,
                    "referral_id": referral_id,
                    "recipients": [recipient],
                    "reason": checked.reason,
                },
            ),
        )
        self.metrics.outbox_failed.labels(checked.reason).inc()
        self.log.error(
            "delivery_refused",
            message_id=checked.message_id,
            recipient=recipient,
            reason=checked.reason,
        )

    def _copy_failed(
        self, tx: sqlite3.Connection, message_id: str, kind: str, recipient: str
    ) -> None:
        """A copy sent to `recipient` failed for good, in `tx`: what it carried may end
        (a `case-transfer`: PROTOCOL §8.10, the owner's transfer)."""
        if kind == CASE_TRANSFER:
            self.transfers.on_failed(tx, message_id, recipient)

    def _commit(self, opened: Opened, checked: inbound.Checked, position: Position) -> None:
        """Store one verified, checked message and everything it causes, in one transaction:
        the inbox row, then the handler of its kind (`self.handlers`)."""
        h = opened.header
        now = clock.now()
        # Referral bodies are stored encrypted by the desk, R of a case transfer too (in
        # `case_transfers`); a decision's or a notice's is kept only in its own table (the
        # signed document as received), so that erasing the pair it names, or R, leaves no
        # copy behind in the inbox (docs/DESIGN.md "Erasure").
        keep_body = h.kind not in (
            REFERRAL,
            IDENTIFICATION_DECISION,
            PROTECTION_NOTICE,
            STATISTICS_CONTRIBUTION,  # kept in its own table only (agents/statistics.py)
            CASE_TRANSFER,  # R is kept sealed in its transfer row (agents/case_transfers.py)
        )
        received = Received(
            seq=0,
            message_id=h.message_id,
            kind=h.kind,
            sender=h.sender,
            envelope_hash=opened.envelope_hash,
            created=h.created,
            received_at=now,
            body=opened.body if keep_body else None,
        )
        with self.store.transaction() as tx:
            self.store.insert_received(
                tx, received, stream=position.stream, stream_seq=position.seq
            )
            self.handlers[h.kind](tx, opened, checked)
        self.metrics.received.labels(h.kind).inc()
        self.log.info(
            "referral_received" if h.kind == REFERRAL else "message_received",
            kind=h.kind,
            message_id=h.message_id,
            sender=h.sender,
            envelope_hash=opened.envelope_hash,
            sender_kid=h.sender_kid,
        )
        if isinstance(checked, DeliveryReceipt):
            self.log.info("delivery_confirmed", message_id=checked.message_id, recipient=h.sender)
        self.transport.wake()
        if self.webhooks is not None:
            self.webhooks.wake()

    def _handler_table(self) -> dict[str, Handler]:
        """One handler per message kind this agent receives (`inbound.KINDS`), each called in
        the message's transaction with the opened envelope and its checked body."""
        table: dict[str, Handler] = {
            REFERRAL: self._on_referral,
            DELIVERY_RECEIPT: self._on_receipt,
            # The desk and resender parse the body again from `opened` (it passed the same
            # strict checks); they take the checked value once the storage layer lands.
            TRANSITION: self._on_transition,
            CONSENT_WITHDRAWAL: lambda tx, opened, checked: self.desk.on_withdrawal(tx, opened),
            ERASURE_CONFIRMATION: lambda tx, opened, checked: self.desk.on_erasure_confirmation(
                tx, opened
            ),
            ESCALATION: lambda tx, opened, checked: self.desk.on_escalation(tx, opened),
            OVERDUE: self._on_overdue,
            RESEND_REQUEST: lambda tx, opened, checked: self.resend.on_request(tx, opened),
            REFUSAL: self._on_refusal,
            IDENTIFICATION_DECISION: self._on_decision,
            PROTECTION_NOTICE: self._on_notice,
            RECONSIDERATION_REQUEST: self._on_reconsideration,
            TRANSFER_REQUEST: self._on_transfer_request,
            TRANSFER_STEP: self._on_transfer_step,
            STATISTICS_CONTRIBUTION: self._on_contribution,
            CASE_TRANSFER: self._on_case_transfer,
            CASE_OWNER_CHANGED: self._on_owner_changed,
        }
        if set(table) != inbound.KINDS:
            raise RuntimeError("every kind inbound checks needs a handler, and no other")
        return table

    def _on_transition(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        step = self.desk.on_transition(tx, opened)
        if step.party == "recipient" and step.to_state == "accepted":
            # a provider accepting a referral linked to a case gets the case so far (§8.7)
            self.identification.provider_accepted(tx, step.referral_id, opened.header.sender)

    def _on_decision(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, DecisionMessage):
            raise TypeError("a decision handler takes a checked decision message")
        self.identification.on_decision(tx, opened, checked)

    def _on_notice(self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked) -> None:
        if not isinstance(checked, NoticeMessage):
            raise TypeError("a notice handler takes a checked protection notice message")
        self.identification.on_notice(tx, opened, checked)

    def _on_reconsideration(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, ReconsiderationRequest):
            raise TypeError("a reconsideration handler takes a checked request")
        self.identification.on_reconsideration(tx, opened, checked)

    def _on_transfer_request(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, TransferRequest):
            raise TypeError("a transfer request handler takes a checked request")
        self.transfer_requests.on_request(tx, opened, checked)
        self._receipt_of(tx, opened, checked.referral_id)

    def _on_owner_changed(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, CaseOwnerChanged):
            raise TypeError("a case-owner-changed handler takes a checked message")
        self.transfers.on_owner_changed(tx, opened, checked)
        self._receipt_of(tx, opened, None)

    def _on_case_transfer(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, inbound.CheckedTransfer):
            raise TypeError("a case transfer handler takes a checked transfer")
        self.transfers.on_transfer(tx, opened, checked)
        self._receipt_of(tx, opened, checked.referral.referral_id)

    def _receipt_of(self, tx: sqlite3.Connection, opened: Opened, referral_id: str | None) -> None:
        """The delivery receipt of `opened` to its sender (§6.2), in its transaction."""
        h = opened.header
        receipt = DeliveryReceipt(h.message_id, opened.envelope_hash, clock.now())
        self._send(DELIVERY_RECEIPT, receipt.encode(), [h.sender], tx, referral_id=referral_id)

    def _on_transfer_step(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, TransferStep):
            raise TypeError("a transfer step handler takes a checked step")
        if checked.kind == TRANSFER:
            self.transfers.on_step(tx, opened, checked)
        else:
            self.transfer_requests.on_step(tx, opened, checked)

    def _on_contribution(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, Contribution):
            raise TypeError("a contribution handler takes a checked contribution")
        self.statistics.on_contribution(tx, opened, checked)

    def _reopen(self, envelope: bytes, at: int) -> bytes:
        """The body of an envelope this agency received at `at`, verified and decrypted again
        with the keys and directory of now as they stood then (statistics.verify_held)."""
        directory = self.trust.directory
        if directory is None:
            raise RuntimeError("no trusted directory to verify the envelope against")
        return self._open(envelope, directory, at).body

    def _open(self, data: bytes, directory: Directory, now: int) -> Opened:
        """§4.7 for an envelope to this agency, with its keys usable at `now`."""
        return open_envelope(
            data,
            me=self.config.agency,
            decryption_keys=self._decryption_keys(directory, now),
            signers=directory,
            now=now,
            limits=self.limits,
        )

    def _held_referral(self, owner: str, referral_id: str) -> dict[str, Any] | None:
        """The referral document (owner, referral_id) received here, None once erased."""
        doc = self.desk.open_body(owner, referral_id, self.store.received_body(owner, referral_id))
        referral = (doc or {}).get("referral")
        return referral if isinstance(referral, dict) else None

    def _open_case(self, tx: sqlite3.Connection, owner: str, referral_id: str) -> None:
        """A competent authority accepting a referral of type nrm_full opens its case, on the
        adult or child route as the referral says (PROTOCOL §8.7)."""
        rows = self.store.referral_rows(owner, referral_id)
        if not rows or rows[0][3] != CASE_REFERRAL_TYPE or not self.identification.is_authority():
            return
        doc = self.desk.open_body(owner, referral_id, self.store.received_body(owner, referral_id))
        body = (doc or {}).get("referral", {}).get("body", {})
        child = not isinstance(body, dict) or is_child(body)
        self.identification.open_case(tx, owner, referral_id, child=child)

    def _on_overdue(self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked) -> None:
        if not isinstance(checked, inbound.Overdue):
            raise TypeError("an overdue handler takes a checked overdue notice")
        self.desk.on_overdue(tx, opened, dataclasses.asdict(checked))

    def _on_referral(
        self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked
    ) -> None:
        if not isinstance(checked, inbound.CheckedReferral):
            raise TypeError("a referral handler takes a checked referral")
        h = opened.header
        routing = self.desk.on_referral(tx, opened)
        referral_id = self.store.received_referral(tx, h.message_id)
        my_kid = h.recipient_kids[h.recipients.index(self.config.agency)]
        self.audit.record(
            tx,
            "referral.received",
            referral_id=referral_id,
            counterpart=h.sender,
            envelope_hash=opened.envelope_hash,
            key_ids=(h.sender_kid, my_kid),
            labels=labels_of(routing),
        )
        self._receipt_of(tx, opened, referral_id)

    def _on_receipt(self, tx: sqlite3.Connection, opened: Opened, checked: inbound.Checked) -> None:
        if not isinstance(checked, DeliveryReceipt):
            raise TypeError("a receipt handler takes a checked delivery receipt")
        h = opened.header
        if not self.store.mark_delivered(
            tx,
            message_id=checked.message_id,
            recipient=h.sender,
            envelope_hash=checked.envelope_hash,
        ):
            raise UnexpectedMessageError("receipt names no envelope sent to its sender")
        self.desk.on_delivered(tx, checked.message_id, h.sender)
        self.transfer_requests.on_delivered(tx, checked.message_id, h.sender)
        self.transfers.on_delivered(tx, checked.message_id, h.sender)
        self.audit.record(
            tx,
            "receipt.received",
            referral_id=self.store.sent_referral(tx, checked.message_id),
            counterpart=h.sender,
            envelope_hash=opened.envelope_hash,
            key_ids=(h.sender_kid,),
        )

    # --- trust ----------------------------------------------------------------------------

    async def on_directory(self, key: str, value: bytes) -> None:
        """A root or directory arrived from the bus: verify it, then act on the change."""
        refused_before = self.trust.refused
        changed = self.trust.offer(key, value)
        if changed:
            # Take up keys this directory admits first: the event recording it must be signed
            # with a key it accepts (one that revokes the old key would refuse that signature).
            self._remember_keys()
            await self._follow_own_keys()
            self._check_standing()
        if changed and key == DIRECTORY_KEY:
            self.audit.record_alone("directory.accepted")
        elif self.trust.refused is not None and self.trust.refused is not refused_before:
            self.audit.record_alone("directory.refused", reason=self.trust.refused.reason)
        if changed:
            self.services.directory_changed()  # a provider's role or key may be gone
            self.nats_key.poke()  # the directory may name a new NATS key (§7.7)
            self.transport.wake()  # queued mail may now be sealable or deliverable

    def _remember_keys(self) -> None:
        """Fold the trusted directory into the signing key history (keys.key_history), so
        what agencies signed stays verifiable once their keys leave the directory."""
        directory = self.trust.directory
        if directory is not None:
            self.store.remember_keys(directory, seen_at=clock.now())

    def _directory(self) -> Directory:
        directory = self.trust.directory
        if directory is None:
            raise Unavailable("the agent has no valid trust directory yet")
        return directory

    def _load_keys(self) -> AgencyKeys:
        """Read and open the key file: Argon2id, so only ever in a worker thread."""
        return load_key_dir(
            self.config.key_dir, passphrase=read_passphrase(file=self.config.passphrase_file)
        )

    def _rotated_signing_kids(self) -> list[str] | None:
        """The active signing key ids the directory lists for this agency when the agent
        does not use one of them (it must reload its key file), else None. Also lets the
        inbox wait for a trusted directory."""
        directory = self.trust.directory
        if directory is None:
            self.transport.ready.clear()
            return None
        self.transport.ready.set()
        if self.config.agency not in directory:
            return None
        entry = directory.agency(self.config.agency)
        now = clock.now()
        active = [k.kid for k in entry.signing_keys if k.status == "active" and k.valid_from <= now]
        if not active or self.keys.public.signing_kid in active:
            return None
        return active

    async def _follow_own_keys(self) -> None:
        """Follow a rotation: once the directory lists a signing key this agent does not use,
        reload the key file (rotated by `nrm keys rotate`) in a worker thread and use its new
        keys. One reload at a time; a caller cancelled meanwhile does not stop it."""
        for _ in range(2):  # a reload running already may have read an older directory
            if self._rotated_signing_kids() is None:
                return
            task = self._key_reload
            if task is None or task.done():
                task = self._key_reload = self.supervisor.spawn(
                    f"key-reload-{self.config.agency}", self._reload_keys
                )
            await asyncio.wait([task])

    async def _reload_keys(self) -> None:
        if self._rotated_signing_kids() is None:
            return
        try:
            keys = await asyncio.to_thread(self._load_keys)
        except KeyFileError as e:
            self.log.error("key_reload_failed", error=str(e))
            return
        active = self._rotated_signing_kids()
        if active is not None and keys.public.signing_kid in active:
            self.keys = keys
            # In the same step: no request sees the new keys with the old keys' standing.
            self._check_standing()
            self.audit.record_alone(
                "key.rotated", key_ids=(keys.public.signing_kid, keys.public.encryption_kid)
            )
            self.log.info(
                "keys_rotated",
                signing_kid=keys.public.signing_kid,
                encryption_kid=keys.public.encryption_kid,
            )

    def _check_standing(self) -> None:
        """Learn at once from the directory that this agency was removed or its keys revoked
        (agents/standing.py); the inbox is consumed only while it can take part."""
        if self.standing.evaluate(self.trust.directory, self.keys) and self.webhooks is not None:
            self.webhooks.wake()
        if self.trust.directory is not None and self.standing.standing.ok:
            self.transport.ready.set()
        else:
            self.transport.ready.clear()

    def check_can_submit(self) -> None:
        """Raise a 503 problem while this agency cannot send anything that would be accepted:
        removed from the directory or no usable key. A bus that refuses the agency's NKey is
        no reason by itself (it happens for a moment during a NATS key rotation): the outbox
        keeps what is submitted, as when the bus is down, and the standing fails it visibly
        if the directory says the agency was removed. Another process holding this agency's
        inbox lease is: the receipts for what this one sent would reach the other."""
        refusal = self.standing.refusal()
        if refusal is None and self.presence.health()["lease"] == DUPLICATE:
            refusal = (DUPLICATE, "another agent process holds this agency's inbox lease")
        if refusal is not None:
            reason, detail = refusal
            raise StandingRefusal(
                f"this agency cannot send now ({reason}): {detail}",
                reason=reason,
            )

    def _decryption_keys(self, directory: Directory, now: int) -> dict[str, PrivateKey]:
        """The private keys mail may be sealed to: those the directory lists for this agency
        and not past the end of their overlap window. A revoked key still opens mail sealed to
        it before senders learned of the revocation (nobody seals to it after): whoever stole
        it can read that mail anyway, and refusing it would only lose it (the senders'
        signatures are checked as always)."""
        if self.config.agency not in directory:
            return {}
        usable = {
            k.kid
            for k in directory.agency(self.config.agency).encryption_keys
            if k.valid_until is None or now <= k.valid_until + self.limits.clock_skew_seconds
        }
        return {kid: key for kid, key in self.keys.decryption_keys.items() if kid in usable}

    async def _timers(self) -> None:
        """Every few seconds: look at the agency's standing (a revocation may be dated in the
        future), lapse the break-glass holds whose time has come (always), then, while it
        may sign, escalate unacknowledged referrals and report unanswered ones
        (agents/clocks.py), expire stale ones, send pending resend requests, sign the access
        windows that ended, and run an authority's reflection-end clock (one case failing
        does not stop the others). A step that fails is logged and tried again
        next time: the loop never ends before the agent stops."""
        while self._watching.is_set():
            await asyncio.sleep(self.limits.timer_interval_seconds)
            if self._failpoint == "timers-raise":
                raise RuntimeError("failpoint timers-raise")  # a loop that dies (tests only)
            try:
                # Whatever the standing or directory: a held break-glass document never
                # outlives its confirm_by (its audit event waits in the outbox as any other).
                self.break_glass.tick()
            except (UntrustedInputError, sqlite3.Error, OSError, ValueError) as e:
                self.log.error("break_glass_lapse_failed", error=type(e).__name__)
            try:
                self._check_standing()
                if self.trust.directory is not None and self.standing.standing.ok:
                    self.desk.tick()
                    self.resend.tick()
                    self.access.flush()
                    self.identification.tick()
                    self.transfers.tick(self.trust.directory.policy)
                    self.transport.wake()
            except (UntrustedInputError, sqlite3.Error, OSError, ValueError) as e:
                self.log.error("timer_step_failed", error=type(e).__name__)
            try:  # on its own: a month that fails to send holds back no other timer
                if self.trust.directory is not None and self.standing.standing.ok:
                    self.statistics.tick()
            except (UntrustedInputError, sqlite3.Error, OSError, ValueError) as e:
                self.log.error("statistics_step_failed", error=type(e).__name__)

    def _storage_box(self) -> SecretBox:
        if self.keys.storage_key is None:
            raise RuntimeError("the key file has no storage key; re-create it with nrm keys init")
        return SecretBox(self.keys.storage_key)

    def metrics_text(self) -> bytes:
        return self.metrics.render(
            outbox_pending=self.store.pending_count,
            root_expires=self.trust.root.expires,
            directory=self.trust.store.directory,
            standing=self.standing.standing.state,
            webhook_backlog=self.store.webhook_backlog,
            inbox=self.transport.inbox_backlog,
            held=self.transport.held,
            health=self.health(),
        )

    # --- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`ok`; `warning` (HTTP 200: the directory or root expires soon, `reasons` say
        which); or `degraded` (HTTP 503; `reasons` name a loop that died)."""
        connected = self.transport.connected
        trust = self.trust.health()
        standing = self.standing.health()
        ok = (
            connected
            and trust["directory_trusted"]
            and "refused" not in trust
            and standing["state"] == "ok"
        )
        link = self.transport.link.health()
        health: dict[str, Any] = {
            "agency": self.config.agency,
            "bus": "connected"
            if connected
            else (link["state"] if link["state"] in ("refused", "tls-failed") else "disconnected"),
            "bus_link": link,
            "standing": standing,
            "outbox_pending": self.store.pending_count(),
            "outbox_failed": self.store.failed_count(),
            "trust": trust,
            "instance": self.presence.health(),
        }
        # Another process holds this agency's inbox lease, or this one cannot renew it.
        ok = ok and health["instance"]["lease"] == HELD
        if self.ledger_watch is not None:
            health["ledger"] = self.ledger_watch.health()
            ok = ok and health["ledger"]["status"] == "ok"
        # A background loop that died (runtime/supervisor.py): `task-died:<name>`.
        tasks = self.supervisor.health()
        health["tasks"] = tasks["tasks"]
        ok = ok and tasks["status"] == "ok"
        # The inbox is judged only once the services bucket was read since the start
        # (transport.py): until then nothing received is taken in.
        unread = not self.services.bucket_read.is_set()
        ok = ok and not unread
        status = expiry.worst("ok" if ok else "degraded", trust["expiry"]["status"])
        reasons = [*tasks["reasons"], *trust["expiry"]["reasons"]]
        if unread:
            reasons.append("services-unread")
        return {"status": status, "reasons": reasons, "version": VERSION, **health}
