"""How an agent judges a rolled-back checkpoint against restore declarations
(agents/ledger_restore.py, PROTOCOL.md §9.4): over real HTTP from a ledger stand-in that
serves real Merkle proofs and really signed declarations; a real SQLite store."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from agents.ledger_restore import LedgerRestores, RestoreVerdict
from agents.store import Store
from keys.checkpoint import Checkpoint
from keys.merkle import MemoryNodeStore, MerkleTree, leaf_hash
from keys.restore import RestoreDeclaration, sign_restore

ORIGIN = "national/nrm-ledger"
KEY = SigningKey(b"\x07" * 32)


def tree_of(leaves: list[bytes]) -> MerkleTree:
    tree = MerkleTree(MemoryNodeStore())
    for leaf in leaves:
        tree.append(leaf_hash(leaf))
    return tree


def leaves(tag: str, n: int) -> list[bytes]:
    return [hashlib.sha256(f"{tag} {i}".encode()).digest() for i in range(n)]


@dataclass
class Stand:
    """What the ledger serves: the current tree, the replaced one, the declarations."""

    current: MerkleTree
    replaced: MerkleTree | None
    declarations: list[bytes] = field(default_factory=list)
    restored_size: int = 0

    def app(self) -> web.Application:
        async def restores(_: web.Request) -> web.Response:
            items = [
                {"seq": n + 1, "declaration": base64.b64encode(d).decode()}
                for n, d in enumerate(self.declarations)
            ]
            return web.json_response({"items": items})

        async def consistency(r: web.Request) -> web.Response:
            first, second = int(r.query["first"]), int(r.query["second"])
            proof = self.current.consistency_proof(first, second)
            return web.json_response({"proof": [h.hex() for h in proof]})

        async def old_proof(r: web.Request) -> web.Response:
            size = int(r.query["size"])
            if self.replaced is None or not self.restored_size <= size <= self.replaced.size:
                return web.json_response({"title": "Not Found"}, status=404)
            proof = self.replaced.consistency_proof(self.restored_size, size)
            return web.json_response({"proof": [h.hex() for h in proof]})

        app = web.Application()
        app.router.add_get("/v1/restores", restores)
        app.router.add_get("/v1/proof/consistency", consistency)
        app.router.add_get("/v1/restores/{seq}/proof", old_proof)
        return app


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cp(tree: MerkleTree, size: int | None = None) -> Checkpoint:
    n = tree.size if size is None else size
    return Checkpoint(origin=ORIGIN, size=n, root=tree.root(n), timestamp=0)


def declare(
    restored: MerkleTree, size: int, replaced: MerkleTree | None, *, key: SigningKey = KEY
) -> bytes:
    return sign_restore(
        RestoreDeclaration(
            origin=ORIGIN,
            seq=1,
            restored_size=size,
            restored_root=restored.root(size),
            previous_size=None if replaced is None else replaced.size,
            previous_root=None if replaced is None else replaced.root(),
            declared_at=0,
        ),
        key,
    )


OLD = leaves("old", 10)
HONEST_NEW = OLD[:6] + leaves("new", 3)  # the backup's 6 entries, then 3 appended again
REWRITTEN = OLD[:2] + leaves("forged", 1) + OLD[3:6] + leaves("new", 3)  # entry 2 changed

#: name, the ledger's new leaves, what the agent last verified (size of OLD), the declared
#: restored size, whether the replaced tree is kept, the signing key, the verdict.
CASES = [
    ("honest restore, agent held the last tree: proven", HONEST_NEW, 10, 6, True, KEY, "proven"),
    ("honest restore, agent held an earlier size: proven", HONEST_NEW, 8, 6, True, KEY, "proven"),
    ("agent held exactly the restored size: proven", HONEST_NEW, 6, 6, True, KEY, "proven"),
    ("entry 2 rewritten under a declaration: refused", REWRITTEN, 10, 6, True, KEY, "no"),
    ("declared size above what the agent held: refused", HONEST_NEW, 5, 6, True, KEY, "no"),
    (
        "declaration by another key: ignored",
        HONEST_NEW,
        10,
        6,
        True,
        SigningKey(b"\x08" * 32),
        "no",
    ),
    ("replaced tree lost: accepted unproven", HONEST_NEW, 10, 6, False, KEY, "unproven"),
    # Without the replaced tree nothing tells these two apart: hence the alert it raises.
    (
        "replaced tree lost, prefix rewritten: unproven too",
        REWRITTEN,
        10,
        6,
        False,
        KEY,
        "unproven",
    ),
    ("replaced tree lost, declared above held: refused", HONEST_NEW, 5, 6, False, KEY, "no"),
]
VERDICTS = {
    "proven": RestoreVerdict.PROVEN,
    "unproven": RestoreVerdict.UNPROVEN,
    "no": RestoreVerdict.NOT_COVERED,
}


@pytest.mark.parametrize(
    ("new", "held", "restored", "kept", "key", "verdict"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_a_rollback_is_accepted_only_as_declared(
    http: aiohttp.ClientSession,
    tmp_path: Path,
    new: list[bytes],
    held: int,
    restored: int,
    kept: bool,
    key: SigningKey,
    verdict: str,
) -> None:
    """Each scenario gets its verdict; only an accepted one queues events again, once."""
    old, current = tree_of(OLD), tree_of(new)
    replaced = tree_of(OLD) if kept else None
    stand = Stand(current=current, replaced=replaced, restored_size=restored)
    stand.declarations.append(declare(current, restored, replaced, key=key))
    store = Store(tmp_path / "agent.db")
    try:
        with store.transaction() as tx:
            for n in range(3):
                store.record_audit(tx, f"{n:032x}", b"event", 0)
        store.mark_audit_sent_many([(f"{n:032x}", n) for n in range(3)])
        store.mark_audit_included([("0" * 32, 1), (f"{1:032x}", 7), (f"{2:032x}", 9)])
        server = web.AppRunner(stand.app())
        await server.setup()
        site = web.TCPSite(server, "127.0.0.1", 0)
        await site.start()
        try:
            port = server.addresses[0][1]
            restores = LedgerRestores(
                url=f"http://127.0.0.1:{port}",
                origin=ORIGIN,
                key=KEY.verify_key,
                store=store,
                agency="police",
            )
            got = await restores.judge(http, previous=cp(old, held), current=cp(current))
        finally:
            await server.cleanup()
        assert got is VERDICTS[verdict]
        queued = [event_id for event_id, _ in store.pending_audit(10)]
        if got is RestoreVerdict.NOT_COVERED:
            assert queued == [] and store.ledger_restores_applied() == {}
        else:  # the events at index 7 and 9, past the restored 6, go out again
            assert queued == [f"{1:032x}", f"{2:032x}"]
            assert store.reoffered(queued) == dict.fromkeys(queued, 1)
            assert store.reoffer_audit_after_restore(seq=1, restored_size=restored) is None
    finally:
        store.close()
