"""The agent's durable state: the facade of agents/storage/ under its historical name."""

from __future__ import annotations

from .storage import (
    SCHEMA,
    STATUS_ORDER,
    DeliveryState,
    NewReferral,
    OutgoingMessage,
    OutgoingStatus,
    PendingConfirmation,
    PendingDelivery,
    Received,
    ResendCandidate,
    Step,
    Store,
    StoredConsent,
    Undelivered,
    read_consent,
)

__all__ = [
    "SCHEMA",
    "STATUS_ORDER",
    "DeliveryState",
    "NewReferral",
    "OutgoingMessage",
    "OutgoingStatus",
    "PendingConfirmation",
    "PendingDelivery",
    "Received",
    "ResendCandidate",
    "Step",
    "Store",
    "StoredConsent",
    "Undelivered",
    "read_consent",
]
