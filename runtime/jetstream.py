"""Erasing one message of a JetStream stream, as the agents and the operators both do it; the
inbox consumer both create (PROTOCOL.md §5)."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy
from nats.js.errors import APIError, NotFoundError

from keys import Limits
from keys.subjects import DIRECTORY_BUCKET, inbox_consumer, inbox_subject

#: What nats-server answers `STREAM.MSG.DELETE` of a sequence the stream does not hold (any
#: more): error code 10057 with this description.
MSG_DELETE_FAILED = 10057
NO_MESSAGE_FOUND = "no message found"


async def erase_message(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Erase message `seq` of `stream`: `STREAM.MSG.DELETE` with its default, erase, so that
    nats-server overwrites the stored bytes (a purge, an ack of a work-queue message or
    `no_erase` only unlink them, leaving them in the block file). True if erased, False if
    the stream held no such message (erased or removed before); raises anything else."""
    try:
        await js.delete_msg(stream, seq)
    except APIError as e:
        if e.err_code == MSG_DELETE_FAILED and e.description == NO_MESSAGE_FOUND:
            return False
        raise
    return True


#: Pull requests a consumer holds waiting (nats-server's default, stated so that a client
#: creating the consumer with PROTOCOL.md §5's parameters asks for exactly this config).
MAX_WAITING = 512


def inbox_consumer_config(agency: str, limits: Limits) -> ConsumerConfig:
    """The durable pull consumer `inbox-<agency>` exactly as PROTOCOL.md §5 lists it, every
    member nats-server keeps, so that whoever creates it with `"action": "create"` and these
    values meets an existing one as equal (not error 10148, "consumer already exists")."""
    return ConsumerConfig(
        name=inbox_consumer(agency),
        durable_name=inbox_consumer(agency),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=limits.ack_wait_seconds,
        max_deliver=-1,
        filter_subject=inbox_subject(agency),
        replay_policy=ReplayPolicy.INSTANT,
        max_waiting=MAX_WAITING,
        max_ack_pending=limits.batch_size * 4,
        num_replicas=0,
    )


async def read_directory_bucket(
    js: Any, seq: int, *, newest_only: bool
) -> tuple[list[tuple[str, bytes]], int]:
    """`read_bucket` of the directory bucket (PROTOCOL §7.8)."""
    return await read_bucket(js, DIRECTORY_BUCKET, seq, newest_only=newest_only)


async def read_bucket(
    js: Any, bucket: str, seq: int, *, newest_only: bool, most: int | None = None
) -> tuple[list[tuple[str, bytes]], int]:
    """Every (key, value) the stream of key-value `bucket` holds from sequence `seq` on, in
    order (with `newest_only`, only the newest value of each key, as a key-value watch
    starts), deletion markers left out; and the sequence to read from next. Message by
    message (`STREAM.MSG.GET`, next by subject), as every agency, the ledger and the bus
    authorities may read the directory and agencies the services bucket: no consumer
    (PROTOCOL §5.1). With `most`, at most that many messages (the rest is read from the
    sequence returned: a read that comes back with `most` messages may have more behind)."""
    prefix = f"$KV.{bucket}."
    cursor, found = seq, dict[int, tuple[str, bytes | None]]()
    while most is None or len(found) < most:
        try:
            msg = await js.get_msg(f"KV_{bucket}", seq=cursor, subject=f"{prefix}>", next=True)
        except NotFoundError:  # nothing newer (or no bucket yet)
            break
        if msg.seq is None or msg.subject is None:
            break  # not an answer nats-server gives
        found[msg.seq] = (msg.subject.removeprefix(prefix), msg.data)
        cursor = msg.seq + 1
    if newest_only:
        found = {n: found[n] for n in {key: n for n, (key, _) in found.items()}.values()}
    return [(key, value) for _, (key, value) in sorted(found.items()) if value], cursor
