"""The subject access report (GDPR Art 15; docs/proposals/nrm-process.md §11.3).

The agency's case system names the referrals this agency sent about one person (the agent
never links ids to people itself). Per referral and recipient the report gives what this
agency holds, the data categories sent, when the copy was sent and delivered, its state,
the consent's withdrawal and the recipient's erasure confirmation, and every read of the
copy the ledger recorded (`record.accessed`, PROTOCOL.md §9.0), each verified inside the
checkpoint the agent last checked (agents/ledger_check.py) and signed by the reader's key
as the key history describes it at the time (the report trusts neither the ledger's paging
nor its word that an event is authentic). The ledger is asked for every access record of
this agency's referrals since the start of the month (UTC) the oldest named one was created
in (`GET /v1/accesses`), so it never learns which referral, nor which person, the report is
about: not even, from the exact `since`, when the referral was made.

R of a case transfer this agency sent (PROTOCOL §8.10) is reported as a referral by R's id,
its transferee the one recipient: the categories R carried, when the `case-transfer` was
sent and delivered, the transfer's state, the consent R cited and the transferee's
erasure, and its reads of R (the transferee records them as a received referral's).

An id this agency holds no sent referral by is reported `known: false`: it never sent one,
or retention purged it (the recipients' copies and the ledger's records may outlive it); the
answer is the same whether or not it holds a referral of another agency by that id. Without
a ledger answer that verifies there is no report at all (`LedgerUnavailable`, a 503), never
one that only looks complete. What a recipient passed on under referrals of its own is not
here: the report names each recipient, which answers for its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from nacl.signing import VerifyKey

from keys import UntrustedInputError
from keys.audit import verify_event
from keys.checkpoint import Checkpoint
from keys.key_history import signing_key_at

from .access import KIND
from .errors import LedgerUnavailable
from .ledger_check import LedgerWatch, proved_entry
from .store import SentCopy, Store

log = structlog.get_logger("nrm.subject_access")

#: Said of every recipient: what it passed on is outside this report.
ONWARD = "what this recipient passed on under referrals of its own is its own to report: ask it"

#: An access as the report gives it: from a verified `record.accessed` event.
Access = dict[str, Any]


@dataclass
class SubjectAccess:
    agency: str
    store: Store
    #: The agent's ledger check (None: no `[ledger]` configured, so no report).
    watch: LedgerWatch | None
    #: Entries per ledger page (Limits.ledger_proof_batch, the most the ledger proves).
    page: int
    #: How far a reader's clock may lag this agency's (Limits.clock_skew_seconds).
    skew: int

    @property
    def history(self) -> _History:
        return _History(self.store)

    async def report(self, referral_ids: Sequence[str]) -> dict[str, Any]:
        """The report on `referral_ids` (distinct, validated by the caller), in their order;
        LedgerUnavailable if the ledger's accesses cannot be had verified."""
        copies = {
            rid: self.store.sent_copies(self.agency, rid)
            or self.store.transferred_copies(self.agency, rid)
            for rid in referral_ids
        }
        sent = {rid: c for rid, c in copies.items() if c}
        checkpoint, reads = await self._accesses(sent)
        referrals = []
        for rid in referral_ids:
            if rid not in sent:
                referrals.append({"id": rid, "known": False})
                continue
            by_reader = reads.get(rid, {})
            first = sent[rid][0]
            referrals.append(
                {
                    "id": rid,
                    "known": True,
                    "created": first.created,
                    "referral_type": first.referral_type,
                    "urgency": first.urgency,
                    "legal_basis": first.legal_basis,
                    "recipients": [
                        _recipient(c, by_reader.pop(c.recipient, [])) for c in sent[rid]
                    ],
                    # Reads recorded by an agency this one never sent the referral to.
                    "other_accesses": [
                        {"agency": reader, **a}
                        for reader in sorted(by_reader)
                        for a in by_reader[reader]
                    ],
                }
            )
        log.info(
            "subject_access_reported",
            referrals=len(referral_ids),
            known=len(sent),
            checkpoint_size=checkpoint.size if checkpoint else None,
        )
        return {
            "agency": self.agency,
            "checkpoint": None
            if checkpoint is None
            else {"size": checkpoint.size, "timestamp": checkpoint.timestamp},
            "referrals": referrals,
        }

    async def _accesses(
        self, sent: dict[str, list[SentCopy]]
    ) -> tuple[Checkpoint | None, dict[str, dict[str, list[Access]]]]:
        """The checkpoint read against, and referral id -> reader -> its accesses (by ledger
        index) of the referrals in `sent`: every one inside that checkpoint. None and nothing
        if `sent` is empty (the ledger is not asked)."""
        if not sent:
            return None, {}
        watch = self.watch
        if watch is None:
            raise LedgerUnavailable(
                "this agent has no [ledger] to read access records from", reason="no-ledger"
            )
        checkpoint = watch.checkpoint
        if checkpoint is None:
            raise LedgerUnavailable(
                "the agent has not checked a ledger checkpoint yet; try again shortly",
                reason="no-checkpoint",
            )
        since = max(0, month_start(min(c[0].created for c in sent.values())) - self.skew)
        try:
            reads = await self._fetch(watch, checkpoint, since=since, wanted=frozenset(sent))
        except aiohttp.ClientResponseError as e:
            log.warning("subject_access_ledger_refused", status=e.status)
            raise LedgerUnavailable(
                f"the ledger refused to list access records (HTTP {e.status}): no report",
                reason="ledger-refused",
            ) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("subject_access_ledger_unreachable", error=type(e).__name__)
            raise LedgerUnavailable(
                "the ledger cannot be reached: no report", reason="ledger-unreachable"
            ) from e
        except (UntrustedInputError, KeyError, TypeError, ValueError) as e:
            # As the watch's own checks would: a proof that fails, or an answer of the wrong
            # shape, is the ledger not doing its job (docs/RUNBOOK.md, ledger alerts).
            proof = isinstance(e, UntrustedInputError)
            watch.alert("bad-inclusion-proof" if proof else "bad-ledger-answer", where="accesses")
            raise LedgerUnavailable(
                "the ledger's access records do not verify against its checkpoint: no report",
                reason="ledger-unverified",
            ) from e
        return checkpoint, reads

    async def _fetch(
        self, watch: LedgerWatch, cp: Checkpoint, *, since: int, wanted: frozenset[str]
    ) -> dict[str, dict[str, list[Access]]]:
        """Page through GET /v1/accesses from `since`, proved in `cp`'s tree, keeping the
        accesses of `wanted` referrals; entries past the checkpoint are not yet provable
        and end the walk (pages come by index)."""
        s = watch.settings
        found: dict[str, dict[str, list[Access]]] = {}
        if cp.size == 0:
            return found  # an empty tree proves nothing in it
        cursor: str | None = None
        last = -1  # the index of the last entry taken: each page must go on from it
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {s.token}"},
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(ssl=s.ssl_context()),
        ) as http:
            while True:
                query = {"since": since, "size": cp.size, "limit": self.page}
                if cursor is not None:
                    query["cursor"] = int(cursor)
                async with http.get(f"{s.url}/v1/accesses", params=query) as r:
                    r.raise_for_status()
                    page = await r.json()
                for item in page["items"]:
                    if type(item["index"]) is not int or item["index"] <= last:
                        raise ValueError("GET /v1/accesses repeated or reordered entries")
                    if item["index"] >= cp.size:
                        return found
                    last = item["index"]
                    event = verify_event(
                        proved_entry(item, cp).signed_event, signers=self.history
                    ).event
                    if event.kind != KIND or event.counterpart != self.agency:
                        raise ValueError("GET /v1/accesses answered another kind of entry")
                    rid = event.referral_id
                    if rid is not None and rid in wanted:
                        labels = dict(event.labels)
                        found.setdefault(rid, {}).setdefault(event.agency, []).append(
                            {
                                "time": event.time,
                                "client": labels["client"],
                                "record": labels["record"],
                                "categories": labels["categories"].split(","),
                                "reads": int(labels["reads"]),
                                "event_id": event.event_id,
                                "index": item["index"],
                            }
                        )
                cursor = page["next_cursor"]
                if cursor is None:
                    return found
                if cursor != str(last):
                    raise ValueError("GET /v1/accesses gave a cursor that does not go on")


@dataclass(frozen=True, slots=True)
class _History:
    """The signing keys as this agent's key history holds them (keys.key_history): what an
    agency signed stays verifiable after its keys leave the directory. `SignerKeys`."""

    store: Store

    def signing_key(self, agency: str, kid: str, *, at: int) -> VerifyKey:
        return signing_key_at(self.store.key_history(agency), agency=agency, kid=kid, at=at)


def month_start(t: int) -> int:
    """The first second of the UTC month of `t`."""
    d = datetime.fromtimestamp(t, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def _recipient(copy: SentCopy, accesses: list[Access]) -> dict[str, Any]:
    return {
        "agency": copy.recipient,
        "categories": None if copy.categories is None else sorted(copy.categories),
        "state": copy.state,
        "sent_at": copy.sent_at,
        "delivered_at": copy.delivered_at,
        "consent_withdrawn_at": copy.consent_withdrawn_at,
        "erasure_confirmed_at": copy.erasure_confirmed_at,
        "accesses": accesses,
        "onward": ONWARD,
    }
