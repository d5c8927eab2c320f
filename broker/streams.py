"""Provisioning of the JetStream streams the agencies share (docs/PROTOCOL.md section 5)."""

from __future__ import annotations

import nats
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from keys.limits import DEFAULT_LIMITS, Limits
from keys.subjects import (
    ATTACHMENT_BUCKET,
    ATTACHMENT_STREAM,
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DIRECTORY_BUCKET,
    MESSAGE_STREAM,
    MESSAGE_SUBJECTS,
)

#: How long connecting and draining may take while provisioning.
CONNECT_TIMEOUT_SECONDS = 5
#: Room for message headers on top of the largest envelope.
HEADER_ROOM_BYTES = 4096
#: How many revisions of each key the directory bucket keeps.
DIRECTORY_HISTORY = 16
#: The stream behind the directory bucket (nats-py's KV naming).
DIRECTORY_STREAM = f"KV_{DIRECTORY_BUCKET}"


def message_stream_config(*, limits: Limits, replicas: int) -> StreamConfig:
    """The configuration of the stream holding every agency inbox."""
    return StreamConfig(
        name=MESSAGE_STREAM,
        subjects=[MESSAGE_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=limits.duplicate_window_seconds,
        max_age=limits.stream_max_age_seconds,
        # max_msg_size counts headers too (Nats-Msg-Id): leave them room.
        max_msg_size=limits.max_envelope_bytes + HEADER_ROOM_BYTES,
    )


def audit_stream_config(*, limits: Limits, replicas: int) -> StreamConfig:
    """The stream of signed audit events: kept for the ledger (and any auditor) to read,
    de-duplicated on the event id; the ledger's database is the permanent record."""
    return StreamConfig(
        name=AUDIT_STREAM,
        subjects=[AUDIT_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=limits.duplicate_window_seconds,
        max_age=limits.stream_max_age_seconds,
        max_msg_size=4096,
    )


async def provision_streams(
    js: JetStreamContext, *, limits: Limits = DEFAULT_LIMITS, replicas: int = 1
) -> None:
    """Create the streams, or bring existing ones to the wanted configuration (idempotent)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    for config in (
        message_stream_config(limits=limits, replicas=replicas),
        audit_stream_config(limits=limits, replicas=replicas),
    ):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    await provision_directory_bucket(js, replicas=replicas)
    await provision_attachment_store(js, limits=limits, replicas=replicas)


async def provision_directory_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the trust directory bucket, or bring it to the wanted configuration (idempotent).

    File storage, `DIRECTORY_HISTORY` revisions per key, direct gets on (agents read it).
    """
    try:
        info = await js.stream_info(DIRECTORY_STREAM)
    except NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=DIRECTORY_BUCKET,
                history=DIRECTORY_HISTORY,
                storage=StorageType.FILE,
                replicas=replicas,
                direct=True,
            )
        )
    else:
        config = info.config
        if (config.max_msgs_per_subject, config.num_replicas) != (DIRECTORY_HISTORY, replicas):
            await js.update_stream(
                config.evolve(max_msgs_per_subject=DIRECTORY_HISTORY, num_replicas=replicas)
            )


async def provision_attachment_store(
    js: JetStreamContext, *, limits: Limits = DEFAULT_LIMITS, replicas: int = 1
) -> None:
    """Create the object store of encrypted attachments if it does not exist (idempotent)."""
    try:
        await js.stream_info(ATTACHMENT_STREAM)
    except NotFoundError:
        await js.create_object_store(
            ATTACHMENT_BUCKET,  # nats-py 2.16 takes the name from here, not from the config
            config=ObjectStoreConfig(
                bucket=ATTACHMENT_BUCKET,
                storage=StorageType.FILE,
                replicas=replicas,
                ttl=limits.stream_max_age_seconds,
                description="NRM Exchange: end-to-end encrypted referral attachments",
            )
        )


async def provision(
    url: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    nkeys_seed: bytes | None = None,
) -> None:
    """Connect to the bus at `url`, provision the streams and the directory bucket, drain.

    With authorization on, `nkeys_seed` is an operator's NKey seed (broker/authz.py).
    """
    nc = await nats.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        allow_reconnect=False,
        drain_timeout=CONNECT_TIMEOUT_SECONDS,
        nkeys_seed_str=None if nkeys_seed is None else nkeys_seed.decode("ascii"),
    )
    try:
        await provision_streams(nc.jetstream(), limits=limits, replicas=replicas)
    finally:
        await nc.drain()
