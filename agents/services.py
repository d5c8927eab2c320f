"""Services with capacity (docs/PROTOCOL.md §8.8): every provider's catalogue and capacity,
followed in the services bucket and kept verified in memory; and this agency's own, signed
and put there.

Following: the bucket's stream is read as the directory's is (runtime/jetstream.py
`read_bucket`: the newest value of each key, then every value after it, polled every
POLL_SECONDS; no consumer, PROTOCOL §5.1). Each catalogue is verified against the trusted
directory and the last one accepted from its provider, each capacity record against its
provider's accepted catalogue and the last `seq` accepted for its service; what fails is
logged with the provider, the service id and the reason, and the last accepted value stands.
What arrives before the directory (or a capacity before its catalogue) waits, unjudged; at
most `limits.max_catalogue_services` capacity records of one provider wait (its oldest is
dropped, logged) and `limits.services_max_waiting` in all (the oldest of the provider holding
most), so that one agency's flood under its own prefix evicts only its own; under a trusted
directory, those of an agency holding no provider role are refused at once. Each newly
trusted directory judges every accepted catalogue and capacity record again.

Publishing: `publish_catalogue` and `publish_capacity` sign the next version (or `seq`) above
the last this agency's key holds, record the audit event (a catalogue), put it in the bucket
and take it as accepted, all under one lock, so that no number is signed twice; only once the
whole bucket was read (before, a number its key holds may be unread), and taken only while
the directory lists this agency's provider role (a directory change may come during the
put). A renewal that fails is tried again after a back-off, not at every poll. The loop
signs again, under the same lock, what is past half its life and not expired
(`limits.catalogue_lifetime_seconds`, `capacity_lifetime_seconds`), and at once what was
signed by a key other than this agency's signing key now (its keys rotated): a provider whose
agent runs never shows as unknown, and one whose agent stops does once its last record
expires.

This agency's own catalogues, put or read back and accepted, are handed to `on_own` (the
agent records their service ids: a referral naming one is judged by them, PROTOCOL §8.2
step 5), and `bucket_read` is set once the whole bucket was read: the agent's inbox waits
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import structlog

from keys import AgencyKeys, Limits, UntrustedInputError
from keys.catalogue import (
    MAX_SIGNED_CAPACITY_BYTES,
    PROVIDER_ROLES,
    Capacity,
    Catalogue,
    Service,
    claimed_number,
    sign_capacity,
    sign_catalogue,
    verify_capacity,
    verify_catalogue,
)
from keys.codec import exact_members, load_canonical
from keys.directory import Directory
from keys.errors import ExpiredError, OutOfRangeError, UnexpectedMessageError
from keys.signed import decode_frame
from keys.subjects import (
    CAPACITY_KEY_PREFIX,
    CATALOGUE_KEY_PREFIX,
    SERVICES_BUCKET,
    capacity_key,
    catalogue_key,
)
from runtime import clock
from runtime.backoff import RETRY_CAP_SECONDS, Backoff, Retry
from runtime.jetstream import read_bucket

from .errors import NotFound, Unavailable, Unprocessable
from .presence import TRANSIENT

log = structlog.get_logger("nrm.services")

#: How often the bucket is read for what is new (as the directory bucket, PROTOCOL §7.8).
POLL_SECONDS = 0.5
#: The members of one service in PUT /v1/catalogue (PROTOCOL §8.8).
SERVICE_MEMBERS = frozenset(Service.__dataclass_fields__)


class Services:
    """The verified catalogues and capacity of every provider; this agency's publishing."""

    def __init__(
        self,
        *,
        agency: str,
        keys: Callable[[], AgencyKeys],
        directory: Callable[[], Directory | None],
        limits: Limits,
        on_published: Callable[[Catalogue], object],
        on_own: Callable[[Catalogue], object] = lambda catalogue: None,
        durable: Callable[[], Awaitable[None]] | None = None,
        renewal_backoff: Backoff | None = None,
    ) -> None:
        self.agency = agency
        self.keys = keys
        self.directory = directory
        self.limits = limits
        #: Called once a catalogue this agency signed is in the bucket (its audit event).
        self.on_published = on_published
        #: Called with each catalogue of this agency's taken as accepted (its own put, or
        #: read back from the bucket): the agent records the service ids it lists.
        self.on_own = on_own
        #: Awaited between that event and the put: nothing leaves that a power cut could
        #: leave unaudited (the store's group commit; None: nothing to wait for).
        self.durable = durable
        #: The last catalogue accepted from each provider, and the last capacity record of
        #: each (provider, service): kept after they expire, for the rollback checks.
        self.catalogues: dict[str, Catalogue] = {}
        self.capacity: dict[tuple[str, str], Capacity] = {}
        #: Values read but not judged yet (no directory, or a capacity before its catalogue):
        #: catalogues (one key per agency the bus admits) and capacity records by provider
        #: (at most `limits.max_catalogue_services` each, `limits.services_max_waiting` in
        #: all), each in the order read.
        self._waiting: dict[str, bytes] = {}
        self._waiting_capacity: dict[str, dict[str, bytes]] = {}
        #: This agency's own keys: the version or seq each value read there names.
        self._claimed: dict[str, int] = {}
        #: The bytes last accepted (or put) under each key: the same read again is no news.
        self._accepted: dict[str, bytes] = {}
        self._js: Any = None
        #: Set once the whole bucket was read once (before, this agency's own catalogue may
        #: be unread yet): the transport judges no received message before (PROTOCOL §8.2
        #: step 5), as it judges none before the directory is read.
        self.bucket_read = asyncio.Event()
        self._wake = asyncio.Event()
        #: Held from taking a number to recording what was put under it (publish, renewal).
        self._lock = asyncio.Lock()
        #: The renewal's consecutive failed attempts, and the loop time before which it is
        #: not tried again (a full bucket, say, refuses every attempt: each would be audited).
        self._renewal = Retry(renewal_backoff or Backoff(POLL_SECONDS, RETRY_CAP_SECONDS))
        self._renew_after = 0.0
        self.log = log.bind(agency=agency)

    def wake(self) -> None:
        self._wake.set()

    # --- following ------------------------------------------------------------------------

    async def run(self, js: Any, running: Callable[[], bool]) -> None:
        """Follow the bucket over `js` (one connection), and sign again what is due."""
        seq, first, most = 1, True, self.limits.services_read_batch
        read_once = False  # the whole bucket read: this agency's own keys' numbers known
        while running():
            more = False
            try:
                found, after = await read_bucket(
                    js, SERVICES_BUCKET, seq, newest_only=first, most=most
                )
                more, seq = after - seq >= most, after
                first = first and more  # the newest of each key until the first read is done
                self.offer(found)
                read_once = read_once or not more
                if read_once and not self.bucket_read.is_set():
                    self.log.info("services_read")
                    self.bucket_read.set()
            except TRANSIENT as e:  # the bus: next time
                self._js = None
                self.log.warning("services_follow_interrupted", error=type(e).__name__)
            else:
                if read_once:  # before, a number this agency's key holds may be unread yet
                    self._js = js
                    await self._renew(js)
            if more:
                continue  # read on at once
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
        self._js = None

    def offer(self, found: Sequence[tuple[str, bytes]]) -> None:
        """Values read from the bucket, in order: judge them (or keep them waiting)."""
        for key, value in found:
            self._read(key, value)
        self._judge()

    def directory_changed(self) -> None:
        """Judge again, under the directory now trusted, everything accepted under the one
        before: a provider removed, or its role or key taken away, is listed no more, nor is
        a capacity record whose key was taken away. What merely expired stays (for the
        rollback checks; the listing leaves it out). This agency's own records stay while the
        directory lists it with a provider role: the loop signs them again under its signing
        key now (woken here), never leaving them to lapse under a key taken away."""
        directory = self.directory()
        if directory is None:
            return
        now = clock.now()
        own = self.agency in directory and bool(
            PROVIDER_ROLES & set(directory.agency(self.agency).roles)
        )
        for agency in list(self.catalogues):
            if agency == self.agency and own:
                continue
            try:
                verify_catalogue(
                    self._accepted[catalogue_key(agency)],
                    directory=directory,
                    now=now,
                    current=None,
                )
            except ExpiredError:
                pass  # checked last: the provider, its role, key and signature stand
            except UntrustedInputError as e:
                self.log.warning("service_entry_withdrawn", provider=agency, reason=e.reason)
                del self.catalogues[agency]
                for k in [k for k in self.capacity if k[0] == agency]:
                    del self.capacity[k]
        for (agency, service_id), _ in list(self.capacity.items()):
            catalogue = self.catalogues.get(agency)
            try:
                if catalogue is None:  # none should outlive its catalogue; one that did goes
                    raise UnexpectedMessageError("a capacity record without its catalogue")
                if agency == self.agency and own:
                    continue
                verify_capacity(
                    self._accepted[capacity_key(agency, service_id)],
                    directory=directory,
                    catalogue=catalogue,
                    now=now,
                    last_seq=None,
                )
            except ExpiredError:
                pass
            except UntrustedInputError as e:
                self.log.warning(
                    "service_entry_withdrawn",
                    provider=agency,
                    service_id=service_id,
                    reason=e.reason,
                )
                del self.capacity[(agency, service_id)]
        self._judge()  # what waited for a directory
        self.wake()

    def _read(self, key: str, value: bytes) -> None:
        agency = _agency_of(key)
        if agency == self.agency:
            number = claimed_number(value, capacity=key.startswith(CAPACITY_KEY_PREFIX))
            if number is not None:
                self._claimed[key] = max(number, self._claimed.get(key, 0))
        if not key.startswith(CAPACITY_KEY_PREFIX):
            self._waiting.pop(key, None)
            self._waiting[key] = value  # in the order read
            return
        directory = self.directory()
        if directory is not None and (reason := _not_a_provider(directory, agency)):
            # Any agency may put under its own prefix: only a provider's records may wait.
            self._drop(key, reason, "service_entry_refused")
            return
        held = self._waiting_capacity.setdefault(agency, {})
        held.pop(key, None)
        held[key] = value  # in the order read
        if len(held) > self.limits.max_catalogue_services:
            self._drop(next(iter(held)), "too-many-waiting")  # its own oldest: no other's
        elif sum(map(len, self._waiting_capacity.values())) > self.limits.services_max_waiting:
            # The largest holder's oldest, this one's own if it holds as many (no other's).
            most = max(len(h) for h in self._waiting_capacity.values())
            if len(held) < most:
                held = next(h for h in self._waiting_capacity.values() if len(h) == most)
            self._drop(next(iter(held)), "too-many-waiting")

    def _drop(self, key: str, reason: str, event: str = "service_entry_dropped") -> None:
        agency = _agency_of(key)
        held = self._waiting_capacity.get(agency, {})
        held.pop(key, None)
        if not held:
            self._waiting_capacity.pop(agency, None)
        self.log.warning(event, provider=agency, service_id=_service_of(key), reason=reason)

    def _judge(self) -> None:
        directory = self.directory()
        if directory is None:
            return
        now = clock.now()
        self._judge_waiting(self._waiting, directory, now)
        for agency, held in list(self._waiting_capacity.items()):
            if reason := _not_a_provider(directory, agency):
                for key in list(held):
                    self._drop(key, reason, "service_entry_refused")
            elif agency in self.catalogues:  # else until its catalogue is accepted
                del self._waiting_capacity[agency]
                self._judge_waiting(held, directory, now)

    def _judge_waiting(self, waiting: dict[str, bytes], directory: Directory, now: int) -> None:
        for key in list(waiting):
            agency = _agency_of(key)
            data = waiting.pop(key)
            if self._accepted.get(key) == data:
                continue  # this agent's own put read back, say
            try:
                if key.startswith(CATALOGUE_KEY_PREFIX):
                    self._accept_catalogue(key, data, directory, now)
                elif key.startswith(CAPACITY_KEY_PREFIX):
                    self._accept_capacity(key, data, directory, now)
            except UntrustedInputError as e:
                self.log.warning(
                    "service_entry_refused",
                    provider=agency,
                    service_id=_service_of(key),
                    reason=e.reason,
                )

    def _accept_catalogue(self, key: str, data: bytes, directory: Directory, now: int) -> None:
        agency = _agency_of(key)
        catalogue = verify_catalogue(
            data, directory=directory, now=now, current=self.catalogues.get(agency)
        )
        if key != catalogue_key(catalogue.agency):
            raise _Misplaced("a catalogue under another agency's key")
        if len(catalogue.services) > self.limits.max_catalogue_services:
            raise OutOfRangeError(
                f"a catalogue listing more than {self.limits.max_catalogue_services} services"
            )
        self._take_catalogue(key, data, catalogue)

    def _take_catalogue(self, key: str, data: bytes, catalogue: Catalogue) -> None:
        if catalogue.agency == self.agency:
            self.on_own(catalogue)
        self.catalogues[catalogue.agency] = catalogue
        self._accepted[key] = data
        for k in [
            k for k in self.capacity if k[0] == catalogue.agency and not catalogue.service(k[1])
        ]:
            del self.capacity[k]  # a service that left the catalogue: its capacity too

    def _accept_capacity(self, key: str, data: bytes, directory: Directory, now: int) -> None:
        agency = _agency_of(key)
        service_id = key.rsplit(".", 1)[-1]
        last = self.capacity.get((agency, service_id))
        record = verify_capacity(
            data,
            directory=directory,
            catalogue=self.catalogues[agency],
            now=now,
            last_seq=None if last is None else last.seq,
        )
        if key != capacity_key(record.agency, record.service_id):
            raise _Misplaced("a capacity record under another service's key")
        self.capacity[(agency, service_id)] = record
        self._accepted[key] = data

    # --- looking up -------------------------------------------------------------------------

    def offers(self, agency: str, service_id: str) -> bool:
        """Whether `agency`'s unexpired accepted catalogue, its agency still listed by the
        trusted directory, lists `service_id` (what GET /v1/services would show): a sender's
        check of a referral's `service` (PROTOCOL §8.2 step 5)."""
        catalogue = self.catalogues.get(agency)
        return (
            catalogue is not None
            and _current(agency, catalogue, self.directory(), clock.now())
            and catalogue.service(service_id) is not None
        )

    # --- listing ----------------------------------------------------------------------------

    def listing(
        self,
        *,
        type: str | None = None,
        suitable_for: str | None = None,
        language: str | None = None,
        region: str | None = None,
        available: bool = False,
    ) -> list[dict[str, Any]]:
        """Every service of an unexpired accepted catalogue whose provider the trusted
        directory still lists, that matches each filter given; `capacity` null when unknown
        (none accepted, or expired); with `available` only those with a free place."""
        directory, now = self.directory(), clock.now()
        out = []
        for agency, catalogue in sorted(self.catalogues.items()):
            if not _current(agency, catalogue, directory, now):
                continue
            for s in catalogue.services:
                record = self.capacity.get((agency, s.service_id))
                if record is not None and record.expires <= now:
                    record = None
                if (
                    (type is not None and s.type != type)
                    or (suitable_for is not None and suitable_for not in s.suitable_for)
                    or (language is not None and language not in s.languages)
                    or (region is not None and not _in_region(region, s.regions))
                    or (available and (record is None or record.free == 0))
                ):
                    continue
                out.append(_service_json(agency, catalogue.version, s, record))
        return out

    # --- publishing ---------------------------------------------------------------------------

    async def publish_catalogue(self, services: object) -> dict[str, Any]:
        """Sign this agency's catalogue of `services` (the JSON list of PUT /v1/catalogue)
        at the next version, put it in the bucket, and take it as accepted."""
        js, directory = self._ready()
        if not PROVIDER_ROLES & set(directory.agency(self.agency).roles):
            raise Unprocessable(
                "this agency holds no role that provides services: "
                + ", ".join(sorted(PROVIDER_ROLES))
            )
        listed = _services(services)
        if len(listed) > self.limits.max_catalogue_services:
            raise Unprocessable(
                f"a catalogue lists at most {self.limits.max_catalogue_services} services",
                member="services",
            )
        async with self._lock:
            try:
                catalogue = Catalogue(
                    agency=self.agency,
                    version=self._next(
                        catalogue_key(self.agency), self.catalogues.get(self.agency)
                    ),
                    expires=clock.now() + self.limits.catalogue_lifetime_seconds,
                    services=listed,
                )
            except ValueError as e:  # the services together (their ids, how many)
                raise Unprocessable(str(e), member="services") from e
            if not await self._put_catalogue(js, catalogue):
                raise Unprocessable(
                    "this agency no longer holds a role that provides services: "
                    + ", ".join(sorted(PROVIDER_ROLES))
                )
        return _catalogue_json(catalogue)

    async def publish_capacity(
        self, service_id: str, free: object, total: object
    ) -> dict[str, Any]:
        """Sign the next capacity record of one of this agency's services, put it in the
        bucket and take it as accepted."""
        js, _ = self._ready()
        for name, value in (("free", free), ("total", total)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise Unprocessable(f"{name} must be an integer", member=name)
        async with self._lock:
            catalogue = self.catalogues.get(self.agency)
            if catalogue is None or catalogue.expires <= clock.now():
                raise NotFound("this agency has published no catalogue (PUT /v1/catalogue)")
            if catalogue.service(service_id) is None:
                raise NotFound("no service with this id in this agency's catalogue")
            now = clock.now()
            try:
                record = Capacity(
                    agency=self.agency,
                    service_id=service_id,
                    seq=self._next(
                        capacity_key(self.agency, service_id),
                        self.capacity.get((self.agency, service_id)),
                    ),
                    free=free,  # type: ignore[arg-type]  # checked above
                    total=total,  # type: ignore[arg-type]
                    as_of=now,
                    expires=now + self.limits.capacity_lifetime_seconds,
                )
            except ValueError as e:
                raise Unprocessable(str(e), member="free" if "free" in str(e) else "total") from e
            if not await self._put_capacity(js, record):
                raise NotFound("this agency's catalogue was withdrawn (its provider role)")
        return _capacity_json(record)

    async def _renew(self, js: Any) -> None:
        """Sign again, at the next number, this agency's catalogue and capacity records past
        half their life and not expired, and those signed by a key other than its signing
        key now (rotated). Under the lock a publish holds: each number is taken once. A
        renewal whose audit write or put fails is logged by ids and tried again only after
        the back-off (each attempt signs, and audits a catalogue, anew)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._renew_after:
            return
        async with self._lock:
            try:
                await self._renew_due(js)
            except _RenewalFailed as e:
                delay = self._renewal.next_delay()
                self._renew_after = loop.time() + delay
                cause = e.__cause__
                self.log.warning(
                    "service_renewal_failed",
                    provider=self.agency,
                    service_id=e.service_id,
                    reason="put-failed" if isinstance(cause, Unavailable) else "audit-write-failed",
                    error=type((cause and cause.__cause__) or cause).__name__,
                    retry_seconds=round(delay, 1),
                )
            else:
                self._renewal.succeeded()

    async def _renew_due(self, js: Any) -> None:
        """`_renew`'s signing (the caller holds the lock): after each await, what was read
        before it is read again (a directory change may have withdrawn this agency's own)."""
        now, kid = clock.now(), self.keys().public.signing_kid
        own = self.catalogues.get(self.agency)
        half = self.limits.catalogue_lifetime_seconds // 2
        key = catalogue_key(self.agency)
        if (
            self._provider()
            and own is not None
            and now < own.expires
            and (own.expires <= now + half or self._signer(key) != kid)
        ):
            renewed = replace(
                own,
                version=self._next(key, own),
                expires=now + self.limits.catalogue_lifetime_seconds,
            )
            try:
                await self._put_catalogue(js, renewed)
            except (Unavailable, sqlite3.Error) as e:
                raise _RenewalFailed(None) from e
        half = self.limits.capacity_lifetime_seconds // 2
        for (agency, service_id), _ in list(self.capacity.items()):
            record = self.capacity.get((agency, service_id))
            key = capacity_key(agency, service_id)
            if (
                agency == self.agency
                and record is not None
                and self._provider()
                and self.catalogues.get(self.agency) is not None
                and now < record.expires
                and (record.expires <= now + half or self._signer(key) != kid)
            ):
                renewed_record = replace(
                    record,
                    seq=self._next(key, record),
                    as_of=now,
                    expires=now + self.limits.capacity_lifetime_seconds,
                )
                try:
                    await self._put_capacity(js, renewed_record)
                except Unavailable as e:
                    raise _RenewalFailed(service_id) from e

    def _provider(self) -> bool:
        """Whether the trusted directory lists this agency with a provider role."""
        directory = self.directory()
        return directory is not None and _not_a_provider(directory, self.agency) is None

    def _signer(self, key: str) -> str | None:
        """The key id that signed what this agency last accepted (or put) under `key`."""
        data = self._accepted.get(key)
        if data is None:
            return None
        try:
            if key.startswith(CAPACITY_KEY_PREFIX):
                return decode_frame(
                    data,
                    max_bytes=MAX_SIGNED_CAPACITY_BYTES,
                    max_items=8,
                    what="capacity",
                    body_name="capacity",
                )[1]
            kid = load_canonical(data, "catalogue")["signatures"][0]["keyid"]
        except (UntrustedInputError, ValueError, TypeError, KeyError, IndexError):
            return None
        return kid if isinstance(kid, str) else None

    async def _put_catalogue(self, js: Any, catalogue: Catalogue) -> bool:
        """Sign, audit, put and take as accepted (the caller holds the lock). The event is
        recorded before the value leaves, as a referral's before it is sent: a failed audit
        write puts nothing; a put that fails after it leaves the version used. False: the
        directory took this agency's provider role away meanwhile (put, not taken)."""
        key = catalogue_key(self.agency)
        data = sign_catalogue(catalogue, self.keys().signing_key)
        self.on_published(catalogue)
        self._claimed[key] = max(catalogue.version, self._claimed.get(key, 0))
        if self.durable is not None:
            await self.durable()
        if not self._provider():
            return False  # the role went while the event was written: nothing put
        await self._put(js, key, data)
        if not self._provider():
            return False  # read back, judged as any other agency's
        self._take_catalogue(key, data, catalogue)  # its own left services: never renewed
        return True

    async def _put_capacity(self, js: Any, record: Capacity) -> bool:
        """Sign, put and take as accepted (the caller holds the lock); a put that fails
        leaves the `seq` used (the bus may have taken it before its answer was lost). False:
        this agency's catalogue (or that service in it, or its provider role) went meanwhile
        (put, not taken: no capacity is held without its catalogue)."""
        key = capacity_key(self.agency, record.service_id)
        data = sign_capacity(record, self.keys().signing_key)
        self._claimed[key] = max(record.seq, self._claimed.get(key, 0))
        await self._put(js, key, data)
        catalogue = self.catalogues.get(self.agency)
        if not self._provider() or catalogue is None or not catalogue.service(record.service_id):
            return False  # read back, judged as any other agency's
        self._accepted[key] = data
        self.capacity[(self.agency, record.service_id)] = record
        return True

    async def _put(self, js: Any, key: str, data: bytes) -> None:
        try:
            await js.publish(f"$KV.{SERVICES_BUCKET}.{key}", data)
        except TRANSIENT as e:
            raise Unavailable(f"the bus did not take the value: {type(e).__name__}") from e

    def _next(self, key: str, last: Catalogue | Capacity | None) -> int:
        """One above the last number this agency's `key` held, read or accepted."""
        accepted = 0 if last is None else last.version if isinstance(last, Catalogue) else last.seq
        return max(accepted, self._claimed.get(key, 0)) + 1

    def _ready(self) -> tuple[Any, Directory]:
        js, directory = self._js, self.directory()
        if js is None or directory is None:
            raise Unavailable("the agent has not read the services bucket over the bus yet")
        return js, directory


class _RenewalFailed(Exception):
    """A renewal's audit write or put failed (its cause): of the catalogue (`service_id`
    None) or of one service's capacity."""

    def __init__(self, service_id: str | None) -> None:
        super().__init__(service_id)
        self.service_id = service_id


class _Misplaced(UntrustedInputError):
    """A value put under a key that is not its own (PROTOCOL §8.8)."""

    reason = "unexpected"


def _not_a_provider(directory: Directory, agency: str) -> str | None:
    """Why `directory` makes `agency` no provider (the reason a catalogue of its would be
    refused for), or None."""
    if agency not in directory:
        return "unknown-key"
    if not PROVIDER_ROLES & set(directory.agency(agency).roles):
        return "not-for-this-role"
    return None


def _agency_of(key: str) -> str:
    parts = key.split(".")
    return parts[1] if len(parts) > 1 else ""


def _service_of(key: str) -> str | None:
    return key.rsplit(".", 1)[-1] if key.count(".") == 2 else None


def _current(agency: str, catalogue: Catalogue, directory: Directory | None, now: int) -> bool:
    """Whether `agency`'s accepted `catalogue` is listed: unexpired, its provider still in
    the trusted directory (what GET /v1/services shows, and a sender's check judges by)."""
    return directory is not None and agency in directory and catalogue.expires > now


def _in_region(wanted: str, regions: Sequence[str]) -> bool:
    """`wanted` among `regions`, or a country whose subdivision is listed (XX for XX-NO)."""
    return any(r == wanted or r.startswith(wanted + "-") for r in regions)


def _services(doc: object) -> tuple[Service, ...]:
    """The services of PUT /v1/catalogue; Unprocessable naming the member that is wrong."""
    if not isinstance(doc, list):
        raise Unprocessable("services must be a list", member="services")
    out = []
    for i, item in enumerate(doc):
        where = f"services[{i}]"
        try:
            fields = exact_members(item, SERVICE_MEMBERS, "service")
            values: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            }
            out.append(Service(**values))
        except (ValueError, TypeError) as e:
            raise Unprocessable(f"{where}: {e}", member=where) from e
    return tuple(out)


def _catalogue_json(catalogue: Catalogue) -> dict[str, Any]:
    return {
        "agency": catalogue.agency,
        "version": catalogue.version,
        "expires": catalogue.expires,
        "services": [
            {name: _plain(getattr(s, name)) for name in sorted(SERVICE_MEMBERS)}
            for s in catalogue.services
        ],
    }


def _capacity_json(record: Capacity) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "free": record.free,
        "total": record.total,
        "as_of": record.as_of,
        "expires": record.expires,
    }


def _service_json(
    agency: str, version: int, service: Service, record: Capacity | None
) -> dict[str, Any]:
    return {
        "agency": agency,
        "catalogue_version": version,
        **{name: _plain(getattr(service, name)) for name in sorted(SERVICE_MEMBERS)},
        "capacity": None if record is None else _capacity_json(record),
    }


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value
