"""The agent's storage layer: every SQL statement of the agent lives in this package.

One SQLite database in WAL mode (db.py) with its schema, invariants and migrations in one
place (schema.py), and one module per aggregate: messages.py (outbox, deliveries, inbox,
resends), referrals.py (referrals, history, data keys), consents.py (consents, their uses,
the signing key history), audit.py (audit outbox, ledger restores and alerts), webhooks.py,
attachments.py, idempotency.py, erasure.py, retention.py, accesses.py, cases.py,
break_glass.py, own_services.py, protections.py, reconsiderations.py, transfers.py and
contributions.py.
`Store` composes them; the rest of agents/ calls its named methods and never writes SQL
(docs/DESIGN.md "Storage").
"""

from __future__ import annotations

from .accesses import AccessWindow, AccessWindows
from .attachments import AttachmentTables
from .audit import AuditLog
from .break_glass import BreakGlassHolds, Hold
from .cases import Case, Cases, StoredDecision
from .consents import Consents, StoredConsent, read_consent
from .contributions import ContributionCopy, Contributions, StoredContribution
from .db import Database
from .erasure import DROPPED, WITHDRAWN_REASON, Erasure, PendingConfirmation
from .idempotency import Idempotency
from .messages import (
    STATUS_ORDER,
    DeliveryState,
    Messages,
    OutgoingMessage,
    OutgoingStatus,
    PendingDelivery,
    Received,
    ResendCandidate,
    Undelivered,
)
from .own_services import OwnServices
from .protections import ProtectionNotices, StoredNotice
from .reconsiderations import Reconsiderations, StoredRequest
from .referrals import NewReferral, Referrals, SentCopy, Step
from .retention import CLOSED_REQUEST_STATES, CLOSED_STATES, CLOSED_TRANSFER_STATES, Retention
from .schema import SCHEMA
from .transfers import CaseTransfers, StoredTransfer, StoredTransferRequest, TransferRequests
from .webhooks import WebhookOutbox


class Store(
    Messages,
    Referrals,
    Consents,
    AuditLog,
    WebhookOutbox,
    AttachmentTables,
    Idempotency,
    Erasure,
    Retention,
    AccessWindows,
    Cases,
    BreakGlassHolds,
    OwnServices,
    ProtectionNotices,
    Reconsiderations,
    TransferRequests,
    Contributions,
    CaseTransfers,
):
    """The agent database with every aggregate's operations."""


__all__ = [
    "CLOSED_REQUEST_STATES",
    "CLOSED_STATES",
    "CLOSED_TRANSFER_STATES",
    "DROPPED",
    "SCHEMA",
    "STATUS_ORDER",
    "WITHDRAWN_REASON",
    "AccessWindow",
    "Case",
    "ContributionCopy",
    "Database",
    "DeliveryState",
    "Hold",
    "NewReferral",
    "OutgoingMessage",
    "OutgoingStatus",
    "PendingConfirmation",
    "PendingDelivery",
    "Received",
    "ResendCandidate",
    "SentCopy",
    "Step",
    "Store",
    "StoredConsent",
    "StoredContribution",
    "StoredDecision",
    "StoredNotice",
    "StoredRequest",
    "StoredTransfer",
    "StoredTransferRequest",
    "Undelivered",
    "read_consent",
]
