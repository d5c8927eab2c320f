"""The agent's link to the bus: runtime/bus_link.py's, logging `bus_state` bound with the
agency, its failed attempts counted by the transport (`nrm_bus_connect_failures_total`)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from runtime.backoff import Backoff
from runtime.bus_link import STATES, is_refusal, is_tls_failure
from runtime.bus_link import BusLink as _BusLink

__all__ = ["STATES", "BusLink", "is_refusal", "is_tls_failure"]

log = structlog.get_logger("nrm.transport")


class BusLink(_BusLink):
    """Owned by the Transport; fed by nats-py's callbacks."""

    def __init__(
        self, *, agency: str, backoff: Backoff, on_failure: Callable[[str], None] = lambda s: None
    ) -> None:
        super().__init__(backoff=backoff, log=log.bind(agency=agency), on_failure=on_failure)
        self.agency = agency
