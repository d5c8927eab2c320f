"""Every limit of the system in one frozen object (sizes, counts, windows, timeouts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    #: Largest envelope accepted from the bus, checked before any decoding.
    max_envelope_bytes: int = 1 << 20
    #: Largest plaintext body sealed into one envelope.
    max_body_bytes: int = 768 * 1024
    #: Deepest nesting of a JSON message body (a referral is 5 deep: message, referral,
    #: body, locations, a location), checked before parsing (PROTOCOL.md §6.4).
    max_body_depth: int = 16
    #: Largest magnitude of an integer in a JSON message body: I-JSON's (RFC 7493) 2^53 - 1,
    #: which every JSON implementation and SQLite hold exactly.
    max_json_integer: int = (1 << 53) - 1
    #: Most recipients one envelope may name.
    max_recipients: int = 32
    #: Longest string field (ids, kinds) inside an envelope header.
    max_header_str: int = 128
    #: Largest attachment an agency system may upload (scanned documents, photos).
    max_attachment_bytes: int = 25 * 1024 * 1024
    #: Largest HTTP request body the agent API reads.
    max_request_bytes: int = 1 << 20
    #: How long an HTTP server (agent API, ledger) goes on reading and discarding a request
    #: body it answered without reading (a 413, say), so that the client sees the answer
    #: before the connection closes. aiohttp's default is 10 s, which lets a client that
    #: stops sending tie a handler up that long, and holds up stopping just as long.
    http_lingering_seconds: float = 1.0
    #: What an HTTP server's parser takes (aiohttp's defaults, made explicit): the longest
    #: request line and header field, in bytes, and the most header fields. Beyond, the
    #: answer is a 400 problem before any handler runs (runtime/http.py `app_runner`); the
    #: OpenAPI documents bound every parameter so that a request they allow fits.
    http_max_request_line: int = 8190
    http_max_header_field: int = 8190
    http_max_headers: int = 128
    #: Default lifetime of a sealed message.
    message_ttl_seconds: int = 14 * 24 * 3600
    #: Clock skew tolerated between agencies.
    clock_skew_seconds: int = 300
    #: JetStream de-duplication window on the message stream.
    duplicate_window_seconds: int = 600
    #: How long an unconsumed message stays on the bus.
    stream_max_age_seconds: int = 30 * 24 * 3600
    #: The most one agency's inbox stream holds (PROTOCOL.md §5): once full, publishes to it
    #: are refused (the senders retry) and no other agency's inbox is affected.
    inbox_max_bytes: int = 1 << 30
    inbox_max_msgs: int = 100_000
    #: Outbox retry back-off bounds.
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 5.0
    #: Bus reconnection back-off: attempt n waits a random time up to
    #: min(reconnect_max_seconds, reconnect_initial_seconds * 2**n) (runtime/backoff.py).
    reconnect_initial_seconds: float = 0.5
    reconnect_max_seconds: float = 60.0
    #: How many outbox rows are published per batch, and inbox messages fetched per pull.
    batch_size: int = 64
    #: How long JetStream waits for an inbox ack before redelivering.
    ack_wait_seconds: float = 30.0
    #: How long a message signed by an unknown key is held back (the receiver may not have
    #: the directory that lists it yet) before it is refused for good.
    unknown_key_grace_seconds: int = 120
    #: Default overlap during which a rotated-out key stays valid.
    rotation_overlap_seconds: int = 7 * 24 * 3600
    #: Default lifetime of a signed directory and of a root.
    directory_ttl_seconds: int = 30 * 24 * 3600
    root_ttl_seconds: int = 365 * 24 * 3600
    #: How long before the directory or the newest root expires every part that trusts it
    #: turns its health to "warning" (docs/RUNBOOK.md, "Expiry and renewal").
    expiry_warning_seconds: int = 7 * 24 * 3600
    #: `nrm directory publish` refuses a directory that expires sooner than this (the
    #: default of an admin folder without its own setting). Equal to the warning window, so
    #: that a directory just published never starts out in the warning state.
    publish_margin_seconds: int = 7 * 24 * 3600
    #: An urgent / emergency referral not acknowledged within this long escalates to the
    #: co-ordinator.
    escalation_urgent_seconds: int = 4 * 3600
    escalation_emergency_seconds: int = 30 * 60
    #: How often the agent looks for referrals to escalate, to report overdue or to expire.
    timer_interval_seconds: float = 5.0
    #: Most events in one ledger proof request (POST /v1/proofs): an agent confirms this
    #: many of its own audit events per round.
    ledger_proof_batch: int = 256
    #: How long an agent's instance lease lives without renewal (the presence bucket's TTL,
    #: set when the bus is provisioned; docs/PROTOCOL.md §5.2). A crashed agent's successor
    #: takes over its inbox at most about 1.25 times this long after the crash.
    instance_lease_seconds: int = 15
    #: Page size bounds of list endpoints.
    max_page_size: int = 500
    default_page_size: int = 50
    #: Resend requests after an agent restore (PROTOCOL.md §6.3): how far before the newest
    #: message held from a sender the request starts (mail can arrive out of order), the
    #: least time between two requests a sender honours from one agency, and the most
    #: envelopes it queues again for one request.
    resend_overlap_seconds: int = 3600
    resend_min_interval_seconds: int = 300
    resend_max_messages: int = 10_000
    #: Reads of one received referral's body or attachment by one API client within this
    #: long are recorded as one `record.accessed` audit event with a count (PROTOCOL.md §9.0),
    #: so a case system polling its inbox does not flood the ledger. At most an hour: the
    #: owner learns of reads no later than that (agents/config.py refuses more).
    access_coalesce_seconds: int = 60
    #: Most referral ids one subject access report (POST /v1/subject-access) names.
    subject_access_max_referrals: int = 100
    #: How long a service catalogue the agent signs stays valid (PROTOCOL.md §8.8); the
    #: agent signs the next version once half of it has passed.
    catalogue_lifetime_seconds: int = 7 * 24 * 3600
    #: How long a capacity record the agent signs stays valid, at most an hour (§8.8); the
    #: agent signs the same counts again once half of it has passed, so that a provider
    #: whose agent runs never shows as unknown and one that stops does within this long.
    capacity_lifetime_seconds: int = 900
    #: The most services a catalogue may list (PROTOCOL.md §8.8, at most the format's 64):
    #: PUT /v1/catalogue refuses more (422), and the agent refuses a provider's catalogue
    #: listing more (`out-of-range`), so no provider's keys it holds grow past this.
    max_catalogue_services: int = 64
    #: The most capacity records the agent holds unjudged, read from the services bucket
    #: before their provider's catalogue was accepted; beyond, the oldest is dropped (logged).
    services_max_waiting: int = 4096
    #: The most messages one read of a bucket's stream takes (the services follower reads
    #: on at once while a read comes back full).
    services_read_batch: int = 1024


#: The longest `access_coalesce_seconds` a configuration may set.
MAX_ACCESS_COALESCE_SECONDS = 3600
#: The longest `capacity_lifetime_seconds` a configuration may set (keys/catalogue.py's
#: MAX_CAPACITY_LIFETIME, which a test holds equal).
MAX_CAPACITY_LIFETIME_SECONDS = 3600
#: The most `max_catalogue_services` a configuration may set (keys/catalogue.py's
#: MAX_SERVICES, which a test holds equal).
MAX_CATALOGUE_SERVICES = 64


DEFAULT_LIMITS = Limits()
