"""Declared ledger restores, as an agent sees them (docs/PROTOCOL.md §9.4).

When the ledger serves a checkpoint smaller than, or inconsistent with, the last one this
agent verified, the agent accepts it only if a restore declaration signed by the ledger's key
covers exactly that rollback:

1. the restored tree is no larger than the agent's last checkpoint;
2. the new checkpoint extends the restored tree (consistency proof in the new tree);
3. the agent's last checkpoint extends the restored tree too (consistency proof in the tree
   the restore replaced, which the ledger keeps) — so nothing before the restored size was
   changed; only a tail was lost.

Accepting a restore queues again every event of this agency not proven to be in the restored
tree; the ledger appends them again (it also reads the audit stream again from its start).
Anything else stays the tamper alarm of the caller (`checkpoint-rolled-back`,
`inconsistent-checkpoints`). When the replaced tree was lost with its disk, step 3 cannot be
done: the agent accepts the restore but reports `restore-unproven`.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from nacl.signing import VerifyKey

from keys import UntrustedInputError
from keys.checkpoint import Checkpoint
from keys.merkle import verify_consistency
from keys.restore import RestoreDeclaration, verify_restore

from .store import Store

log = structlog.get_logger("nrm.ledger_check")


class RestoreVerdict(enum.Enum):
    """What a restore declaration says about a rollback."""

    NOT_COVERED = "not-covered"  # the caller's tamper alarm stands
    PROVEN = "proven"  # covered, and the agent's last checkpoint checked against it
    UNPROVEN = "restore-unproven"  # covered, but the replaced tree was lost


@dataclass
class LedgerRestores:
    """Checks restore declarations for one agency's ledger watch and re-offers its events."""

    url: str
    origin: str
    key: VerifyKey
    store: Store
    agency: str

    def __post_init__(self) -> None:
        self.log = log.bind(agency=self.agency)

    def reoffered_since(self) -> int:
        """When this agent last accepted a restore (0: never): events re-offered then get
        `missing_after_seconds` from that moment before they count as missing."""
        return max(self.store.ledger_restores_applied().values(), default=0)

    async def declarations(self, http: aiohttp.ClientSession) -> list[RestoreDeclaration]:
        """Every declaration the ledger serves that verifies, newest first (others are
        ignored: a declaration that does not verify covers nothing)."""
        async with http.get(f"{self.url}/v1/restores") as r:
            if r.status == 404:
                return []  # a ledger older than restores
            r.raise_for_status()
            items = (await r.json())["items"]
        found: list[RestoreDeclaration] = []
        for item in items:
            try:
                data = base64.b64decode(item["declaration"], validate=True)
                found.append(verify_restore(data, key=self.key, origin=self.origin))
            except (UntrustedInputError, KeyError, TypeError, ValueError) as e:
                self.log.warning("ledger_restore_refused", reason=getattr(e, "reason", "malformed"))
        return sorted(found, key=lambda d: d.seq, reverse=True)

    async def judge(
        self, http: aiohttp.ClientSession, *, previous: Checkpoint, current: Checkpoint
    ) -> RestoreVerdict:
        """Whether a declaration covers the rollback from `previous` to `current`; if one
        does, this agency's lost events are queued again before this returns."""
        for d in await self.declarations(http):
            verdict = await self._covers(http, d, previous=previous, current=current)
            if verdict is not RestoreVerdict.NOT_COVERED:
                self._accept(d)
                return verdict
        return RestoreVerdict.NOT_COVERED

    async def catch_up(self, http: aiohttp.ClientSession) -> None:
        """On the first checkpoint after the agent starts (it holds no earlier one to check
        a declaration against): accept every declaration it has not accepted yet."""
        applied = self.store.ledger_restores_applied()
        for d in await self.declarations(http):
            if d.seq not in applied:
                self._accept(d)

    def _accept(self, d: RestoreDeclaration) -> None:
        count = self.store.reoffer_audit_after_restore(seq=d.seq, restored_size=d.restored_size)
        if count is not None:
            self.log.warning(
                "ledger_restore_accepted",
                seq=d.seq,
                restored_size=d.restored_size,
                reoffered=count,
            )

    async def _covers(
        self,
        http: aiohttp.ClientSession,
        d: RestoreDeclaration,
        *,
        previous: Checkpoint,
        current: Checkpoint,
    ) -> RestoreVerdict:
        s = d.restored_size
        if s > previous.size or s > current.size:
            return RestoreVerdict.NOT_COVERED
        if d.previous_size is not None and previous.size > d.previous_size:
            return RestoreVerdict.NOT_COVERED  # the agent saw more than the restore says was there
        # 2. the new checkpoint extends the restored tree.
        path = f"/v1/proof/consistency?first={s}&second={current.size}"
        new_proof = await self._proof(http, path)
        if new_proof is None or not _consistent(s, d.restored_root, current, new_proof[0]):
            return RestoreVerdict.NOT_COVERED
        # 3. the agent's last checkpoint extends the restored tree.
        if previous.size == s:
            same = previous.root == d.restored_root
            return RestoreVerdict.PROVEN if same else RestoreVerdict.NOT_COVERED
        if d.previous_size is None:
            return RestoreVerdict.UNPROVEN
        old_proof = await self._proof(http, f"/v1/restores/{d.seq}/proof?size={previous.size}")
        if old_proof is None:
            return RestoreVerdict.NOT_COVERED  # it says it kept the tree but serves no proof
        if _consistent(s, d.restored_root, previous, old_proof[0]):
            return RestoreVerdict.PROVEN
        return RestoreVerdict.NOT_COVERED

    async def _proof(self, http: aiohttp.ClientSession, path: str) -> tuple[list[bytes]] | None:
        async with http.get(self.url + path) as r:
            if r.status in (400, 404):
                return None
            r.raise_for_status()
            body: dict[str, Any] = await r.json()
        return ([bytes.fromhex(h) for h in body["proof"]],)


def _consistent(size: int, root: bytes, later: Checkpoint, proof: list[bytes]) -> bool:
    """Whether `later` extends the tree of `size` leaves with `root`."""
    try:
        verify_consistency(
            first=size, second=later.size, first_root=root, second_root=later.root, proof=proof
        )
    except UntrustedInputError:
        return False
    return True
