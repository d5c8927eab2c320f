"""Provisioning of the JetStream streams the agencies share (docs/PROTOCOL.md section 5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import nats
from nats.aio.client import Client
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
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DIRECTORY_BUCKET,
    MESSAGE_STREAM,
    MESSAGE_SUBJECTS,
    PRESENCE_BUCKET,
    PRESENCE_STREAM,
    attachment_bucket,
    attachment_stream,
)

#: How long connecting and draining may take while provisioning.
CONNECT_TIMEOUT_SECONDS = 5
#: Room for message headers on top of the largest envelope.
HEADER_ROOM_BYTES = 4096
#: How many revisions of each key the directory bucket keeps.
DIRECTORY_HISTORY = 16
#: The stream behind the directory bucket (nats-py's KV naming).
DIRECTORY_STREAM = f"KV_{DIRECTORY_BUCKET}"


def _shared_stream_config(
    name: str,
    subject: str,
    retention: RetentionPolicy,
    max_msg_size: int,
    *,
    limits: Limits,
    replicas: int,
) -> StreamConfig:
    """A file-backed stream of the agencies: de-duplicated and aged out as `limits` says."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=limits.duplicate_window_seconds,
        max_age=limits.stream_max_age_seconds,
        max_msg_size=max_msg_size,
    )


def message_stream_config(*, limits: Limits, replicas: int) -> StreamConfig:
    """The configuration of the stream holding every agency inbox."""
    return _shared_stream_config(
        MESSAGE_STREAM,
        MESSAGE_SUBJECTS,
        RetentionPolicy.WORK_QUEUE,
        # max_msg_size counts headers too (Nats-Msg-Id): leave them room.
        limits.max_envelope_bytes + HEADER_ROOM_BYTES,
        limits=limits,
        replicas=replicas,
    )


def audit_stream_config(*, limits: Limits, replicas: int) -> StreamConfig:
    """The stream of signed audit events: kept for the ledger (and any auditor) to read,
    de-duplicated on the event id; the ledger's database is the permanent record."""
    return _shared_stream_config(
        AUDIT_STREAM,
        AUDIT_SUBJECTS,
        RetentionPolicy.LIMITS,
        4096,
        limits=limits,
        replicas=replicas,
    )


async def provision_streams(
    js: JetStreamContext,
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    agencies: Sequence[str] = (),
) -> None:
    """Create the streams, or bring existing ones to the wanted configuration, and the
    attachment bucket of each of `agencies` (idempotent)."""
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
    await provision_presence_bucket(js, limits=limits, replicas=replicas)
    await provision_attachment_stores(js, agencies, limits=limits, replicas=replicas)


async def _provision_key_value(
    js: JetStreamContext,
    stream: str,
    update: Callable[[StreamConfig], StreamConfig | None],
    *,
    bucket: str,
    history: int,
    replicas: int,
    ttl: float | None = None,
) -> None:
    """Create the key-value `bucket` behind `stream` if it has none yet (file storage,
    direct gets on); else apply `update` to the stream's configuration and write it back
    where that changed it."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=history,
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=replicas,
                direct=True,
            )
        )
    else:
        wanted = update(info.config)
        if wanted is not None:
            await js.update_stream(wanted)


async def provision_directory_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the trust directory bucket, or bring it to the wanted configuration (idempotent).

    File storage, `DIRECTORY_HISTORY` revisions per key, direct gets on (agents read it).
    """

    def update(config: StreamConfig) -> StreamConfig | None:
        if (config.max_msgs_per_subject, config.num_replicas) == (DIRECTORY_HISTORY, replicas):
            return None
        return config.evolve(max_msgs_per_subject=DIRECTORY_HISTORY, num_replicas=replicas)

    await _provision_key_value(
        js,
        DIRECTORY_STREAM,
        update,
        bucket=DIRECTORY_BUCKET,
        history=DIRECTORY_HISTORY,
        replicas=replicas,
    )


async def provision_presence_bucket(
    js: JetStreamContext, *, limits: Limits = DEFAULT_LIMITS, replicas: int = 1
) -> None:
    """Create the instance-lease bucket, or bring it to the wanted configuration (idempotent).

    One revision per key, values expire `limits.instance_lease_seconds` after they were
    written (the lease TTL, §5.2), direct gets on (agents read their own key).
    """
    ttl = float(limits.instance_lease_seconds)

    def update(config: StreamConfig) -> StreamConfig | None:
        if (config.max_age, config.num_replicas) == (ttl, replicas):
            return None
        # The de-duplication window may not be longer than the TTL (nats-py's rule).
        window = min(float(config.duplicate_window or ttl), ttl)
        return config.evolve(max_age=ttl, duplicate_window=window, num_replicas=replicas)

    await _provision_key_value(
        js,
        PRESENCE_STREAM,
        update,
        bucket=PRESENCE_BUCKET,
        history=1,
        ttl=ttl,
        replicas=replicas,
    )


async def provision_attachment_stores(
    js: JetStreamContext,
    agencies: Sequence[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
) -> None:
    """Create the object store bucket `nrm-att-<agency>` of each agency that has none yet
    (idempotent; PROTOCOL.md §5.1). Only operators create buckets: an agency's agent
    waits for its own. A bucket is never deleted here: recipients may still be fetching
    from the bucket of an agency that has left; its objects expire with the stream's age."""
    for agency in agencies:
        try:
            await js.stream_info(attachment_stream(agency))
        except NotFoundError:
            bucket = attachment_bucket(agency)
            await js.create_object_store(
                bucket,  # nats-py 2.16 takes the name from here, not from the config
                config=ObjectStoreConfig(
                    bucket=bucket,
                    storage=StorageType.FILE,
                    replicas=replicas,
                    ttl=limits.stream_max_age_seconds,
                    description="NRM Exchange: one agency's end-to-end encrypted attachments",
                ),
            )


async def _connect(url: str, nkeys_seed: bytes | None) -> Client:
    """A provisioning connection to the bus at `url`: no reconnects, short timeouts."""
    return await nats.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        allow_reconnect=False,
        drain_timeout=CONNECT_TIMEOUT_SECONDS,
        nkeys_seed_str=None if nkeys_seed is None else nkeys_seed.decode("ascii"),
    )


async def provision(
    url: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    nkeys_seed: bytes | None = None,
    agencies: Sequence[str] = (),
) -> None:
    """Connect to the bus at `url`, provision the streams, the buckets and the attachment
    bucket of each of `agencies`, drain.

    With authorization on, `nkeys_seed` is an operator's NKey seed (broker/authz.py).
    """
    nc = await _connect(url, nkeys_seed)
    try:
        await provision_streams(nc.jetstream(), limits=limits, replicas=replicas, agencies=agencies)
    finally:
        await nc.drain()


async def provision_stores_for(
    url: str,
    agencies: Sequence[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    nkeys_seed: bytes | None = None,
) -> None:
    """Connect to the bus at `url` and create the missing attachment buckets of `agencies`
    (an agency a new directory admits, broker/authority.py), drain."""
    nc = await _connect(url, nkeys_seed)
    try:
        await provision_attachment_stores(
            nc.jetstream(), agencies, limits=limits, replicas=replicas
        )
    finally:
        await nc.drain()
