"""Bus authorization: the nats-server `authorization` block generated from the directory.

Every connection authenticates with an NKey (challenge-response: the server sends a nonce,
the client signs it with its seed; no password is ever sent or stored). There is no
`no_auth_user`, so anonymous connections are refused. Five kinds of user:

- **Agencies** publish to any inbox (`nrm.v1.msg.*`) and to their own audit subject; they may
  create, inspect, fetch from and ack only their own durable inbox consumer `inbox-<id>`
  filtered on their own inbox subject, on their own inbox stream `NRM_INBOX_<id>`, and erase
  messages of that stream only (`STREAM.MSG.DELETE`, after the inbox commit); read (get and
  poll) the directory bucket, and subscribe only to their own reply subjects
  `_nrm_inbox.<id>.>` (agents connect with `inbox_prefix=keys.subjects.reply_prefix(id)`),
  and read and write only their own key of
  the instance-lease bucket (`$KV.nrm-presence.<id>`, PROTOCOL.md §5.2). They write and
  erase attachments only in their own object store bucket `nrm-att-<id>` and read those of
  the other agencies (`attachment_publish`); buckets are created by operators only. They
  put only their own keys of the services bucket and read all of it (`services_publish`).
- **Auditors** subscribe to `nrm.v1.audit.>` and read the directory bucket. Their replies
  use the prefix `_nrm_inbox.auditor-<first 8 characters of the NKey, lowercased>` (see
  `auditor_reply_prefix`); agency ids starting with `auditor-` are therefore reserved.
- **Ledgers** (broker/ledger.py, connecting with their own key folder's NKey) read the
  directory bucket as auditors do and consume the audit stream through their durable pull
  consumer `ledger` only: its create (the form naming the filter), info, delete (a replay
  after a restore), next and acks. They publish nothing else: no inbox, no audit subject,
  no directory key, no stream or bucket.
- **Bus authorities** (`nrm bus authority`, one per node, each with its own NKey) read the
  directory bucket and nothing else; what they change is their node's authorization file,
  never the bus. The stores of an agency a directory admits are made by the operator who
  publishes it (`nrm directory publish`, docs/DESIGN.md "Who holds which bus credential").
  Ledgers and authorities reply on `_nrm_service.<ledger|authority>-<8 characters of the
  NKey, lowercased>` (`service_reply_prefix`), a root no agency's replies share.
- **Operators** (bus administrators) have the whole JetStream API and write the directory
  bucket; they use the default `_INBOX.>` replies. They publish to inboxes only to move the
  mail of an earlier release's shared inbox stream into the per-agency ones
  (broker/streams.py; signed envelopes, which receivers check, §4.7), and, payloads being
  end-to-end encrypted, read nothing of substance even with full access.

Anything not allowed is denied (an allow list denies the rest); a few explicit denies guard
the consumer-creation forms that would let an agency name or filter someone else's inbox.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from broker.server import conf_string
from keys.subjects import (
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    DIRECTORY_BUCKET,
    DIRECTORY_STREAM,
    PREFIX,
    PRESENCE_BUCKET,
    PRESENCE_STREAM,
    SERVICES_BUCKET,
    SERVICES_STREAM,
    attachment_bucket,
    attachment_stream,
    audit_subject,
    capacity_key,
    catalogue_key,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    presence_key,
    reply_prefix,
)

#: A user NKey public key: `U` then 55 base32 characters.
USER_NKEY_PATTERN = re.compile(r"^U[A-Z2-7]{55}$")
#: Agency ids with this prefix would collide with auditor reply subjects.
AUDITOR_PREFIX = "auditor-"

#: The JetStream stream behind the directory bucket, and the subjects of its keys.
DIRECTORY_KEYS = f"$KV.{DIRECTORY_BUCKET}.>"
#: The ledger's durable pull consumer on the audit stream.
LEDGER_CONSUMER = "ledger"
#: Where the service identities' replies go: outside `_nrm_inbox.`, so no agency id (whose
#: replies are `_nrm_inbox.<id>`) can name them.
SERVICE_REPLY_ROOT = "_nrm_service"
#: The account info request (limits, usage) that common NATS clients send first.
JS_INFO = "$JS.API.INFO"


def auditor_reply_prefix(nkey: str) -> str:
    """The reply-subject prefix an auditor connects with: `_nrm_inbox.auditor-<8 chars>`."""
    _check_nkey(nkey)
    return f"_nrm_inbox.{AUDITOR_PREFIX}{nkey[:8].lower()}"


def service_reply_prefix(kind: str, nkey: str) -> str:
    """The reply-subject prefix a ledger (`kind` "ledger") or a bus authority ("authority")
    connects with: `_nrm_service.<kind>-<8 characters of its NKey, lowercased>`."""
    if kind not in ("ledger", "authority"):
        raise ValueError(f"no service kind {kind!r}")
    _check_nkey(nkey)
    return f"{SERVICE_REPLY_ROOT}.{kind}-{nkey[:8].lower()}"


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """The public NKeys the bus admits besides the directory's agencies, each kind with its
    own permissions: `operators` (everything, broker/streams.py provisioning and
    `nrm directory publish`), `ledgers` (their audit consumer) and `authorities` (reading
    the directory). They come from configuration (cluster.toml `[trust]`, authority.toml
    `operator_nkeys`/`ledger_nkeys`/`authority_nkeys`, `nrm bus up` options), never from the
    directory: an authority must be admitted before it can read any directory."""

    operators: tuple[str, ...]
    ledgers: tuple[str, ...] = ()
    authorities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in (self.operators, self.ledgers, self.authorities):
            for nkey in kind:
                _check_nkey(nkey)


def directory_reader_publish() -> list[str]:
    """What reading the directory bucket takes: `$JS.API.INFO` (the account info common
    clients ask for first), the stream info, a direct get of a key's newest value (last by
    subject, the subject form only), and `STREAM.MSG.GET` by sequence, next by subject, with
    which agents/transport.py reads every value in order and then each new one. No consumer
    of any kind: a push consumer delivers to whatever subject its creator names, so one on
    this stream could be aimed at another agency's reply subjects."""
    return [
        JS_INFO,
        f"$JS.API.STREAM.INFO.{DIRECTORY_STREAM}",
        f"$JS.API.DIRECT.GET.{DIRECTORY_STREAM}.>",
        f"$JS.API.STREAM.MSG.GET.{DIRECTORY_STREAM}",
    ]


def presence_publish(agency: str) -> list[str]:
    """Holding an instance lease, as nats-py's key-value store does it: the bucket's stream
    info (`key_value()`, `status()`), a direct get of the agency's own key, and publishes
    (create and compare-and-set updates) to that key only."""
    key = f"$KV.{PRESENCE_BUCKET}.{presence_key(agency)}"
    return [
        f"$JS.API.STREAM.INFO.{PRESENCE_STREAM}",
        f"$JS.API.DIRECT.GET.{PRESENCE_STREAM}.{key}",
        key,
    ]


def services_publish(agency: str) -> list[str]:
    """The services bucket (PROTOCOL §8.8): putting the agency's own catalogue and capacity
    keys only (`$KV.nrm-services.catalogue.<agency>`, `...capacity.<agency>.*`), and reading
    every key as the directory is read (stream info, direct get in the subject form, messages
    by sequence). No consumer, no delete or purge."""
    return [
        f"$KV.{SERVICES_BUCKET}.{catalogue_key(agency)}",
        f"$KV.{SERVICES_BUCKET}.{capacity_key(agency)}",
        f"$JS.API.STREAM.INFO.{SERVICES_STREAM}",
        f"$JS.API.DIRECT.GET.{SERVICES_STREAM}.$KV.{SERVICES_BUCKET}.>",
        f"$JS.API.STREAM.MSG.GET.{SERVICES_STREAM}",
    ]


def attachment_publish(agency: str, *, readable: Sequence[str]) -> list[str]:
    """Attachments as nats-py's object store writes them and agents/attachments.py reads and
    erases them (§5.1).

    In its own bucket `nrm-att-<agency>` the agency publishes chunks and meta
    (`$O.<bucket>.>`, nats-py's `put`) and deletes messages one sequence at a time (erasure
    after a consent withdrawal). In the bucket of each agency in `readable` (the senders
    whose attachments it may be cited, its own included) it may only read: the stream info
    (`object_store()`) and messages by subject (`STREAM.MSG.GET`: the meta last by subject,
    the chunks next by subject). No consumer (nats-py's `get` would create an ordered push
    consumer, which could be aimed at any subject), never a publish under another agency's
    `$O.`, never a delete, a purge, or a stream create, update or delete. Content is end-to-
    end encrypted and its hash is in the signed referral, so reading discloses nothing."""
    subjects = [
        f"$O.{attachment_bucket(agency)}.>",
        f"$JS.API.STREAM.MSG.DELETE.{attachment_stream(agency)}",
    ]
    for sender in sorted({agency, *readable}):
        stream = attachment_stream(sender)
        subjects += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}"]
    return subjects


def agency_permissions(
    agency: str, *, readable: Sequence[str] = ()
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(publish allow, publish deny, subscribe allow, subscribe deny) for one agency;
    `readable` are the agencies whose attachment buckets it may read (all of them)."""
    consumer = inbox_consumer(agency)
    inbox = inbox_subject(agency)
    stream = inbox_stream(agency)
    publish_allow = [
        f"{PREFIX}.msg.*",
        audit_subject(agency),
        # Creating its consumer, only in the form that names the filter subject: the server
        # checks that the config's name and filter match the ones in the subject.
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{inbox}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
        # Erasing what it consumed (agents/transport.py): the API is scoped by stream, and
        # this stream holds its own inbox and nothing else.
        f"$JS.API.STREAM.MSG.DELETE.{stream}",
        *directory_reader_publish(),
        *presence_publish(agency),
        *attachment_publish(agency, readable=readable),
        *services_publish(agency),
    ]
    publish_deny = [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.*",
        "$JS.API.CONSUMER.DURABLE.CREATE.>",
        DIRECTORY_KEYS,
    ]
    subscribe_allow = [f"{reply_prefix(agency)}.>"]
    subscribe_deny = ["_INBOX.>", f"{PREFIX}.>"]
    return publish_allow, publish_deny, subscribe_allow, subscribe_deny


def auditor_permissions(nkey: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(publish allow, publish deny, subscribe allow, subscribe deny) for one auditor."""
    return (
        directory_reader_publish(),
        [DIRECTORY_KEYS, "$JS.API.CONSUMER.DURABLE.CREATE.>"],
        [AUDIT_SUBJECTS, f"{auditor_reply_prefix(nkey)}.>"],
        ["_INBOX.>", f"{PREFIX}.msg.>"],
    )


def ledger_permissions(nkey: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(publish allow, publish deny, subscribe allow, subscribe deny) for a ledger: the
    directory as an auditor reads it, and its own pull consumer on the audit stream (the
    events come as replies to its fetches, on its own reply subjects)."""
    consumer = f"{AUDIT_STREAM}.{LEDGER_CONSUMER}"
    return (
        [
            *directory_reader_publish(),
            # The form naming the filter (nats-py's for a named consumer with one filter).
            f"$JS.API.CONSUMER.CREATE.{consumer}.{AUDIT_SUBJECTS}",
            f"$JS.API.CONSUMER.INFO.{consumer}",
            f"$JS.API.CONSUMER.DELETE.{consumer}",  # a replay after a restore (§9.4)
            f"$JS.API.CONSUMER.MSG.NEXT.{consumer}",
            f"$JS.ACK.{consumer}.>",
        ],
        [DIRECTORY_KEYS, "$JS.API.CONSUMER.DURABLE.CREATE.>"],
        [f"{service_reply_prefix('ledger', nkey)}.>"],
        ["_INBOX.>", f"{PREFIX}.>"],
    )


def authority_permissions(nkey: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(publish allow, publish deny, subscribe allow, subscribe deny) for a bus authority:
    reading the directory bucket, nothing more."""
    return (
        directory_reader_publish(),
        [DIRECTORY_KEYS, "$JS.API.CONSUMER.DURABLE.CREATE.>"],
        [f"{service_reply_prefix('authority', nkey)}.>"],
        ["_INBOX.>", f"{PREFIX}.>"],
    )


def operator_permissions() -> tuple[list[str], list[str], list[str], list[str]]:
    """(publish allow, publish deny, subscribe allow, subscribe deny) for a bus operator."""
    return (["$JS.>", DIRECTORY_KEYS, f"{PREFIX}.msg.*"], [], ["_INBOX.>"], [])


def authorization_block(
    *,
    agencies: Sequence[tuple[str, str]],
    auditors: Sequence[str],
    operators: Sequence[str],
    ledgers: Sequence[str] = (),
    authorities: Sequence[str] = (),
) -> str:
    """The nats-server `authorization { users = [...] }` block for these users.

    `agencies` are (agency id, NKey public key); `auditors`, `operators`, `ledgers` and
    `authorities` (the bus authorities) are NKey public keys. Raises ValueError on an
    invalid id or key, a reserved id, or a key used twice.
    """
    entries: list[tuple[str, str, tuple[list[str], list[str], list[str], list[str]]]] = []
    seen_ids: set[str] = set()
    for agency, _ in agencies:
        inbox_subject(agency)  # validates the id
        if agency.startswith(AUDITOR_PREFIX):
            raise ValueError(f"agency ids starting with {AUDITOR_PREFIX!r} are reserved: {agency}")
        if agency in seen_ids:
            raise ValueError(f"agency listed twice: {agency}")
        seen_ids.add(agency)
    readable = sorted(seen_ids)
    for agency, nkey in agencies:
        entries.append((f"agency {agency}", nkey, agency_permissions(agency, readable=readable)))
    for nkey in auditors:
        entries.append((f"auditor {auditor_reply_prefix(nkey)}", nkey, auditor_permissions(nkey)))
    for nkey in ledgers:
        entries.append(("ledger", nkey, ledger_permissions(nkey)))
    for nkey in authorities:
        entries.append(("bus authority", nkey, authority_permissions(nkey)))
    for nkey in operators:
        entries.append(("operator", nkey, operator_permissions()))

    if not entries:
        # An authorization block without users would let anyone in.
        raise ValueError("an authorization block needs at least one user")
    seen_keys: set[str] = set()
    lines = [
        "# Written by NRM Exchange (broker/authz.py). NKey users only: no anonymous access.",
        "authorization {",
        "  users = [",
    ]
    for label, nkey, (pub_allow, pub_deny, sub_allow, sub_deny) in entries:
        _check_nkey(nkey)
        if nkey in seen_keys:
            raise ValueError(f"NKey used by two users: {nkey}")
        seen_keys.add(nkey)
        lines.append(f"    # {label}")
        lines.append("    {")
        lines.append(f"      nkey: {conf_string(nkey)}")
        lines.append("      permissions: {")
        lines.append(f"        publish: {{ {_lists(pub_allow, pub_deny)} }}")
        lines.append(f"        subscribe: {{ {_lists(sub_allow, sub_deny)} }}")
        lines.append("      }")
        lines.append("    }")
    lines.extend(["  ]", "}"])
    return "\n".join(lines) + "\n"


def _lists(allow: list[str], deny: list[str]) -> str:
    text = f"allow: {_list(allow)}"
    if deny:
        text += f", deny: {_list(deny)}"
    return text


def _list(subjects: list[str]) -> str:
    return "[" + ", ".join(conf_string(s) for s in subjects) + "]"


def _check_nkey(nkey: str) -> None:
    if not USER_NKEY_PATTERN.fullmatch(nkey):
        raise ValueError(f"not a user NKey public key: {nkey!r}")
