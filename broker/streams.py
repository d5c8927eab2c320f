"""Provisioning of the JetStream streams and buckets of the bus (docs/PROTOCOL.md section 5).

Shared: the audit stream, the directory, lease and services buckets. Per agency (auditors excepted):
its inbox stream `NRM_INBOX_<agency>` and its attachment bucket `nrm-att-<agency>`, created
by operators only, before the authorization that admits the agency is loaded. A bus
provisioned by an earlier release has one shared inbox stream `NRM_MSG`
(`LEGACY_MESSAGE_STREAM`); `migrate_shared_inbox` moves what it still holds into the
per-agency streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from keys.catalogue import MAX_CATALOGUE_BYTES
from keys.limits import DEFAULT_LIMITS, Limits
from keys.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DIRECTORY_BUCKET,
    DIRECTORY_STREAM,
    MOVED_FROM_HEADER,
    PREFIX,
    PRESENCE_BUCKET,
    PRESENCE_STREAM,
    SERVICES_BUCKET,
    SERVICES_STREAM,
    SHARED_INBOX_STREAM,
    attachment_bucket,
    attachment_stream,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
)
from runtime.bus_client import connect_once
from runtime.endpoint import BusEndpoint
from runtime.jetstream import erase_message, inbox_consumer_config

log = structlog.get_logger("nrm.streams")

#: How long connecting and draining may take while provisioning.
CONNECT_TIMEOUT_SECONDS = 5
#: Room for message headers on top of the largest envelope.
HEADER_ROOM_BYTES = 4096
#: How many revisions of each key the directory bucket keeps.
DIRECTORY_HISTORY = 16
#: The most the services bucket holds in all (catalogues and capacity records).
SERVICES_MAX_BYTES = 256 * 1024 * 1024
#: The stream behind the directory bucket (nats-py's KV naming).
#: The inbox stream every agency shared on a bus provisioned by an earlier release
#: (subjects `nrm.v1.msg.>`), and the subject it is moved to while its messages are moved
#: out: no user may publish to it, and it overlaps no inbox stream.
LEGACY_MESSAGE_STREAM = SHARED_INBOX_STREAM
LEGACY_MESSAGE_SUBJECTS = f"{PREFIX}.msg.>"
RETIRED_SUBJECT = f"{PREFIX}.retired.{LEGACY_MESSAGE_STREAM}"


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


def inbox_stream_config(agency: str, *, limits: Limits, replicas: int) -> StreamConfig:
    """The configuration of `agency`'s inbox stream: its inbox subject only, work-queue
    retention, bounded by `limits.inbox_max_bytes` and `inbox_max_msgs`; a publish to a
    full inbox is refused (discard new), never an older message dropped."""
    config = _shared_stream_config(
        inbox_stream(agency),
        inbox_subject(agency),
        RetentionPolicy.WORK_QUEUE,
        # max_msg_size counts headers too (Nats-Msg-Id): leave them room.
        limits.max_envelope_bytes + HEADER_ROOM_BYTES,
        limits=limits,
        replicas=replicas,
    )
    return config.evolve(
        max_bytes=limits.inbox_max_bytes,
        max_msgs=limits.inbox_max_msgs,
        discard=DiscardPolicy.NEW,
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
    inbox stream and attachment bucket of each of `agencies` (idempotent); move what a
    shared inbox stream of an earlier release holds into the inbox streams."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    await _put_stream(js, audit_stream_config(limits=limits, replicas=replicas))
    await provision_directory_bucket(js, replicas=replicas)
    await provision_presence_bucket(js, limits=limits, replicas=replicas)
    await provision_services_bucket(js, replicas=replicas)
    await provision_agency_stores(js, agencies, limits=limits, replicas=replicas)


async def _put_stream(
    js: JetStreamContext, config: StreamConfig, *, create_only: bool = False
) -> None:
    """Create the stream `config` names, or bring it to `config` (unless `create_only`:
    then an existing one is left as it is)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        if not create_only:
            await js.update_stream(config)


async def provision_agency_stores(
    js: JetStreamContext,
    agencies: Sequence[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    create_only: bool = False,
) -> None:
    """What each of `agencies` has of its own on the bus: its inbox stream (created, or
    brought to the wanted configuration unless `create_only`: the authority's, which never
    changes an existing stream's replicas; that is `nrm bus provision`'s) with its inbox
    consumer (created if missing) and its attachment bucket (created if missing); then the
    messages a shared inbox stream of an earlier release still holds for them are moved
    into their inboxes (idempotent). With
    no agencies (an open bus given no `--agency`), a shared inbox stream is left as it is:
    its mail has nowhere to go yet."""
    if not agencies:
        with contextlib.suppress(NotFoundError):
            await js.stream_info(LEGACY_MESSAGE_STREAM)
            log.warning("shared_inbox_kept", stream=LEGACY_MESSAGE_STREAM, reason="no-agencies")
        return
    retiring = await _retire_shared_inbox(js)
    for agency in agencies:
        await _put_stream(
            js,
            inbox_stream_config(agency, limits=limits, replicas=replicas),
            create_only=create_only,
        )
        await _put_inbox_consumer(js, agency, limits)
        await _put_attachment_store(js, agency, limits=limits, replicas=replicas)
    if retiring:
        await _migrate_or_log(js, agencies)


#: What may interrupt a migration run: the bus refusing or not answering. The run is
#: idempotent, so what it left is moved by a later one (broker/authority.py).
MIGRATION_ERRORS = (nats.errors.Error, TimeoutError, OSError)


async def _migrate_or_log(js: JetStreamContext, agencies: Sequence[str]) -> bool:
    """`migrate_shared_inbox`, its failure logged, never raised: moving old mail never keeps
    the bus from serving. True while the shared inbox stream still exists."""
    try:
        await migrate_shared_inbox(js, agencies)
    except MIGRATION_ERRORS as e:
        log.warning("shared_inbox_migration_interrupted", error=type(e).__name__)
        return True
    try:
        await js.stream_info(LEGACY_MESSAGE_STREAM)
    except NotFoundError:
        return False
    return True


async def _put_inbox_consumer(js: JetStreamContext, agency: str, limits: Limits) -> None:
    """Create the agency's inbox consumer as the pull consumer PROTOCOL.md §5 lists, unless
    it exists. Created by the operator, before the agency can connect, so that the agency
    never creates it itself with a `deliver_subject` (a push consumer delivering its mail
    into another agency's reply subjects; subject permissions cannot see the body), and
    nats-server refuses to turn a pull consumer into a push one. One that is a push consumer
    (made so by an agent before this release) is replaced; its unacknowledged messages are
    delivered again by the new one."""
    stream, name = inbox_stream(agency), inbox_consumer(agency)
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        pass
    else:
        if not info.config.deliver_subject:
            return
        await js.delete_consumer(stream, name)
        log.warning("push_inbox_consumer_replaced", agency=agency)
    await js.add_consumer(stream, inbox_consumer_config(agency, limits))


async def _retire_shared_inbox(js: JetStreamContext) -> bool:
    """Move the subjects of an earlier release's shared inbox stream aside (its `nrm.v1.msg.>`
    overlaps every inbox stream, so none could be created); False if there is none.

    Its consumers go first: they filter on inbox subjects the stream no longer takes, and
    their agents (of that release) now find their mail in their own inbox streams."""
    try:
        info = await js.stream_info(LEGACY_MESSAGE_STREAM)
    except NotFoundError:
        return False
    if info.config.subjects != [RETIRED_SUBJECT]:
        for consumer in await js.consumers_info(LEGACY_MESSAGE_STREAM):
            assert consumer.name is not None
            await js.delete_consumer(LEGACY_MESSAGE_STREAM, consumer.name)
        await js.update_stream(info.config.evolve(subjects=[RETIRED_SUBJECT]))
        log.info("shared_inbox_retired", stream=LEGACY_MESSAGE_STREAM)
    return True


async def migrate_shared_inbox(js: JetStreamContext, agencies: Sequence[str]) -> int:
    """Re-publish every message the retired shared inbox stream holds for one of `agencies`
    to its original subject with its original `Nats-Msg-Id` and where it was
    (`MOVED_FROM_HEADER`), erasing each from the old
    stream once its inbox stream acknowledged it; delete the old stream once it is empty.
    Returns how many it moved.

    Safe to stop and run again: a message re-published but not yet erased is published
    again under the same `Nats-Msg-Id` and dropped by the inbox stream's de-duplication
    window (after it, the receiver recognises the message id, PROTOCOL.md §4.7). Mail for an
    agency not in `agencies` stays where it is until a run that names it (or its max age);
    so does the rest of an agency's mail once its inbox stream refuses one (full, say: it
    is moved by a later run, once the agency has consumed what its inbox holds)."""
    moved = 0
    for agency in agencies:
        subject = inbox_subject(agency)
        seq = 1
        while True:
            try:
                msg = await js.get_msg(LEGACY_MESSAGE_STREAM, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            assert msg.seq is not None
            headers = {MOVED_FROM_HEADER: f"{LEGACY_MESSAGE_STREAM} {msg.seq}"}
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            if msg_id:
                headers["Nats-Msg-Id"] = msg_id
            try:
                await js.publish(subject, msg.data or b"", headers=headers)
            except APIError as e:  # refused by the inbox stream (full): the rest waits
                log.warning(
                    "shared_inbox_agency_deferred",
                    agency=agency,
                    stream_seq=msg.seq,
                    err_code=e.err_code,
                )
                break
            await erase_message(js, LEGACY_MESSAGE_STREAM, msg.seq)
            moved += 1
            seq = msg.seq + 1
    left = int((await js.stream_info(LEGACY_MESSAGE_STREAM)).state.messages)
    if left == 0:
        await js.delete_stream(LEGACY_MESSAGE_STREAM)
    log.info("shared_inbox_migrated", moved=moved, left=left)
    return moved


async def _provision_key_value(
    js: JetStreamContext,
    stream: str,
    update: Callable[[StreamConfig], StreamConfig | None],
    *,
    bucket: str,
    history: int,
    replicas: int,
    ttl: float | None = None,
    max_value_size: int | None = None,
    max_bytes: int | None = None,
) -> None:
    """Create the key-value `bucket` behind `stream` if it has none yet (file storage,
    direct gets on, bounded as given); else apply `update` to the stream's configuration
    and write it back where that changed it."""
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
                max_value_size=max_value_size,
                max_bytes=max_bytes,
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


async def provision_services_bucket(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the services bucket (PROTOCOL §8.8), or bring it to the wanted configuration
    (idempotent). One revision per key: a catalogue's or capacity's newest value is all an
    agent follows (it reads the stream as the directory's, `read_bucket`). No value larger
    than a signed catalogue, and `SERVICES_MAX_BYTES` in all (then puts are refused)."""
    size = MAX_CATALOGUE_BYTES + HEADER_ROOM_BYTES

    def update(config: StreamConfig) -> StreamConfig | None:
        wanted = (replicas, size, SERVICES_MAX_BYTES)
        if (config.num_replicas, config.max_msg_size, config.max_bytes) == wanted:
            return None
        return config.evolve(num_replicas=replicas, max_msg_size=size, max_bytes=SERVICES_MAX_BYTES)

    await _provision_key_value(
        js,
        SERVICES_STREAM,
        update,
        bucket=SERVICES_BUCKET,
        history=1,
        replicas=replicas,
        max_value_size=size,
        max_bytes=SERVICES_MAX_BYTES,
    )


async def _put_attachment_store(
    js: JetStreamContext, agency: str, *, limits: Limits, replicas: int
) -> None:
    """Create the object store bucket `nrm-att-<agency>` if it has none yet (idempotent;
    PROTOCOL.md §5.1). Only operators create buckets: an agency's agent waits for its own.
    A bucket is never deleted here: recipients may still be fetching from the bucket of an
    agency that has left; its objects expire with the stream's age."""
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


#: Where provisioning connects: a URL, or an endpoint (several URLs, TLS).
Target = str | BusEndpoint


async def _connect(url: Target, nkeys_seed: bytes | None) -> Client:
    """A provisioning connection to the bus at `url`: every server tried twice
    (runtime.bus_client.connect_once), short timeouts."""
    endpoint = BusEndpoint.of(url) if isinstance(url, str) else url
    return await connect_once(
        endpoint,
        nkeys_seed=nkeys_seed,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        drain_timeout=CONNECT_TIMEOUT_SECONDS,
    )


async def provision(
    url: Target,
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    nkeys_seed: bytes | None = None,
    agencies: Sequence[str] = (),
) -> None:
    """Connect to the bus at `url` (an endpoint, or URLs), provision the streams, the
    buckets and the inbox stream and attachment bucket of each of `agencies`, drain.

    With authorization on, `nkeys_seed` is an operator's NKey seed (broker/authz.py).
    """
    nc = await _connect(url, nkeys_seed)
    try:
        await provision_streams(nc.jetstream(), limits=limits, replicas=replicas, agencies=agencies)
    finally:
        await nc.drain()


async def provision_stores_for(
    url: Target,
    agencies: Sequence[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    replicas: int = 1,
    nkeys_seed: bytes | None = None,
) -> None:
    """Connect to the bus at `url` and create the inbox streams and attachment buckets of
    `agencies` that are missing (agencies a new directory admits, broker/authority.py);
    existing ones are left as they are (their replicas too), drain."""
    nc = await _connect(url, nkeys_seed)
    try:
        await provision_agency_stores(
            nc.jetstream(), agencies, limits=limits, replicas=replicas, create_only=True
        )
    finally:
        await nc.drain()


async def migrate_leftovers(
    url: Target, agencies: Sequence[str], *, nkeys_seed: bytes | None = None
) -> bool:
    """Connect to the bus at `url` and move what the retired shared inbox stream still
    holds for `agencies` (mail an earlier run left: its inbox was full, the bus did not
    answer), drain. True while the shared inbox stream still exists (the authority tries
    again later), False once it is gone or was never there."""
    nc = await _connect(url, nkeys_seed)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(LEGACY_MESSAGE_STREAM)
        except NotFoundError:
            return False
        if info.config.subjects != [RETIRED_SUBJECT]:
            return True  # not retired yet (no agency provisioned): nothing can move
        return await _migrate_or_log(js, agencies)
    finally:
        await nc.drain()
