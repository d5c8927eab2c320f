"""Subject and stream names on the bus: the contract between agents and broker.

docs/PROTOCOL.md section 5 is normative. Subjects are versioned so that a v2 can run beside v1.
"""

from __future__ import annotations

import re
from typing import Final

PREFIX = "nrm.v1"

#: Each agency's inbox is a JetStream stream of its own (work-queue retention),
#: `NRM_INBOX_<agency>`, capturing exactly its inbox subject (PROTOCOL.md §5): the agency may
#: then erase what it consumed (`STREAM.MSG.DELETE` is scoped by stream, not by subject) and
#: one agency's mail cannot use up another's space. Agency ids are a subset of the stream
#: name alphabet, and the prefix keeps an inbox stream's name apart from every other stream.
INBOX_STREAM_PREFIX = "NRM_INBOX_"

#: The header a message moved out of the shared inbox stream of an earlier release carries
#: (broker/streams.py `migrate_shared_inbox`): `<stream> <sequence>`, where it was stored
#: before, so that a recipient that had committed it there knows it again (PROTOCOL.md §5).
MOVED_FROM_HEADER = "Nrm-Moved-From"
#: The one inbox stream of every agency in releases before per-agency inbox streams: the
#: only stream a `MOVED_FROM_HEADER` may name (PROTOCOL.md §5).
SHARED_INBOX_STREAM = "NRM_MSG"

#: Agency ids are used verbatim as subject tokens, so they are restricted to a safe alphabet.
AGENCY_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def inbox_subject(agency: str) -> str:
    """The subject an agency's inbox is published to."""
    return f"{PREFIX}.msg.{_token(agency)}"


def audit_subject(agency: str) -> str:
    """The subject an agency's audit events are published to."""
    return f"{PREFIX}.audit.{_token(agency)}"


def inbox_stream(agency: str) -> str:
    """The JetStream stream holding `agency`'s inbox and nothing else."""
    return f"{INBOX_STREAM_PREFIX}{_token(agency)}"


def inbox_consumer(agency: str) -> str:
    """The durable consumer name an agency reads its inbox with."""
    return f"inbox-{_token(agency)}"


def publish_id(message_id: str, recipient: str) -> str:
    """The `Nats-Msg-Id` of one envelope's copy for one recipient.

    One envelope is published once per recipient inbox; each copy needs its own
    de-duplication id or the stream would drop all but the first.
    """
    return f"{message_id}.{recipient}"


def resend_publish_id(message_id: str, recipient: str, request_id: str) -> str:
    """The `Nats-Msg-Id` of a copy sent again for resend request `request_id` (PROTOCOL.md
    §6.3): the stream's de-duplication window must not drop it as the first copy."""
    return f"{publish_id(message_id, recipient)}.resend-{request_id}"


def _token(agency: str) -> str:
    """`agency`, if it is a valid agency id (a safe subject token)."""
    if not AGENCY_ID_PATTERN.fullmatch(agency):
        raise ValueError(f"not a valid agency id: {agency!r}")
    return agency


def audit_publish_id(event_id: str, reoffer: int | None = None) -> str:
    """The `Nats-Msg-Id` of an audit event: its event id, or after ledger restore `reoffer`
    (PROTOCOL.md §9.4) `<event id>.restore-<reoffer>`, which the stream's de-duplication
    window has not seen yet."""
    return event_id if reoffer is None else f"{event_id}.restore-{reoffer}"


#: Audit events (issue 5) live on a stream of their own.
AUDIT_STREAM = "NRM_AUDIT"
AUDIT_SUBJECTS = f"{PREFIX}.audit.>"

#: The JetStream key-value bucket the signed trust directory is published in, and its keys:
#: `root.<version>` for each root document, `directory` for the current directory.
DIRECTORY_BUCKET = "nrm-directory"
#: The JetStream stream behind the directory bucket (PROTOCOL §5.1, §7.8).
DIRECTORY_STREAM: Final = f"KV_{DIRECTORY_BUCKET}"
DIRECTORY_KEY = "directory"


#: The JetStream key-value bucket of instance leases (§5.2): key `<agency>` holds the id of
#: the one agent process allowed to consume that agency's inbox. Entries expire after the
#: bucket's TTL unless renewed, so a crashed holder's lease lapses by itself.
PRESENCE_BUCKET = "nrm-presence"
PRESENCE_STREAM = f"KV_{PRESENCE_BUCKET}"


def presence_key(agency: str) -> str:
    """The key of an agency's instance lease in the presence bucket."""
    return _token(agency)


#: The JetStream key-value bucket of service catalogues and capacity records (PROTOCOL §8.8):
#: `catalogue.<agency>` holds the provider's signed catalogue, `capacity.<agency>.<service_id>`
#: each service's signed capacity record. Each agency writes only its own keys, all read them.
SERVICES_BUCKET = "nrm-services"
SERVICES_STREAM: Final = f"KV_{SERVICES_BUCKET}"
CATALOGUE_KEY_PREFIX = "catalogue."
CAPACITY_KEY_PREFIX = "capacity."


def catalogue_key(agency: str) -> str:
    """The key of `agency`'s signed service catalogue in the services bucket."""
    return f"{CATALOGUE_KEY_PREFIX}{_token(agency)}"


def capacity_key(agency: str, service_id: str = "*") -> str:
    """The key of one service's signed capacity record in the services bucket; without a
    service id the wildcard pattern of all of `agency`'s capacity keys."""
    service = service_id if service_id == "*" else _token(service_id)
    return f"{CAPACITY_KEY_PREFIX}{_token(agency)}.{service}"


#: Each agency's encrypted referral attachments live in an object store bucket of its own
#: (§5.1): `nrm-att-<agency>`, behind the stream `OBJ_nrm-att-<agency>`. Only that agency
#: writes and erases in it; every agency may read it. Agency ids are a subset of the bucket
#: name alphabet (`[A-Za-z0-9_-]`), and the prefix keeps one agency's bucket name from ever
#: being another's.
ATTACHMENT_BUCKET_PREFIX = "nrm-att-"


def attachment_bucket(agency: str) -> str:
    """The object store bucket holding the attachments `agency` sends."""
    return f"{ATTACHMENT_BUCKET_PREFIX}{_token(agency)}"


def attachment_stream(agency: str) -> str:
    """The JetStream stream behind `agency`'s attachment bucket (nats-py's naming)."""
    return f"OBJ_{attachment_bucket(agency)}"


def attachment_object(referral_id: str, attachment_id: str) -> str:
    """The object name of one attachment of one referral."""
    return f"{referral_id}.{attachment_id}"


#: Roots are kept in the directory bucket under `root.<version>`.
ROOT_KEY_PREFIX = "root."


def root_key(version: int) -> str:
    return f"{ROOT_KEY_PREFIX}{version}"


def reply_prefix(agency: str) -> str:
    """The inbox prefix an agency's connection uses for replies, so that the server can let
    each agency subscribe to its own replies only (`<prefix>.>`)."""
    return f"_nrm_inbox.{_token(agency)}"
