"""Service catalogues and capacity records (keys/catalogue.py, PROTOCOL §8.8): the code lists,
the constructors' rules and verification against a real directory. The catalogue-* and
capacity-* vectors cover one failure each; these are the scenarios around them."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from keys.catalogue import (
    MAX_CAPACITY_LIFETIME,
    SERVICE_TYPES,
    Capacity,
    Catalogue,
    Service,
    sign_capacity,
    sign_catalogue,
    verify_capacity,
    verify_catalogue,
)
from keys.directory import AgencyEntry, Directory
from keys.errors import ExpiredError, RevokedKeyError, UnknownKeyError
from keys.identity import AgencyKeys

T0 = 1_767_225_600
SCHEMA = Path(__file__).parents[1] / "agents" / "schemas" / "referral-v1.schema.json"


def service(**changes: Any) -> Service:
    base = Service(
        service_id=os.urandom(8).hex(),
        type="shelter",
        languages=("en", "lt"),
        suitable_for=("women",),
        accessibility=(),
        regions=("LT-VL",),
        capacity_unit="places",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def shelter() -> AgencyKeys:
    return AgencyKeys.generate(agency="shelter", name="Shelter")


def directory_of(keys: AgencyKeys, roles: tuple[str, ...] = ("ngo",)) -> Directory:
    entry = AgencyEntry.of(keys.public, roles, valid_from=T0)
    return Directory(version=1, expires=T0 + 10**7, agencies=(entry,))


def test_service_types_are_the_referral_schema_s_requested_services() -> None:
    schema = json.loads(SCHEMA.read_text())
    requested = schema["$defs"]["body"]["properties"]["requested_services"]["items"]["enum"]
    assert tuple(requested) == SERVICE_TYPES


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"service_id": "A" * 16}, "service_id"),
        ({"type": "dentist"}, "type"),
        ({"languages": ()}, "languages"),
        ({"languages": ("lt", "en")}, "languages"),
        ({"languages": ("en", "en")}, "languages"),
        ({"suitable_for": ("cats",)}, "suitable_for"),
        ({"accessibility": ("lift", "step_free")}, "accessibility"),
        ({"regions": ("Vilnius",)}, "regions"),
        ({"capacity_unit": "beds"}, "capacity_unit"),
    ],
)
def test_a_service_outside_the_code_lists_cannot_be_made(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        service(**changes)


def test_a_catalogue_round_trips_and_services_are_kept_sorted(shelter: AgencyKeys) -> None:
    services = (service(), service(), service(type="legal", capacity_unit="sessions"))
    catalogue = Catalogue("shelter", 1, T0 + 10 * 86_400, services)
    assert [s.service_id for s in catalogue.services] == sorted(s.service_id for s in services)
    signed = sign_catalogue(catalogue, shelter.signing_key)
    verified = verify_catalogue(signed, directory=directory_of(shelter), now=T0, current=None)
    assert verified == catalogue
    with pytest.raises(ValueError, match="distinct"):
        Catalogue("shelter", 1, T0, (services[0], services[0]))


def test_a_catalogue_follows_its_provider_s_keys(shelter: AgencyKeys) -> None:
    """Signed by a key the directory does not list, or one revoked since: refused."""
    catalogue = Catalogue("shelter", 1, T0 + 10 * 86_400, (service(),))
    stranger = AgencyKeys.generate(agency="shelter", name="Shelter")
    with pytest.raises(UnknownKeyError):
        verify_catalogue(
            sign_catalogue(catalogue, stranger.signing_key),
            directory=directory_of(shelter),
            now=T0,
            current=None,
        )
    directory = directory_of(shelter)
    entry = directory.agency("shelter")
    key = dataclasses.replace(
        entry.signing_keys[0], status="revoked", revoked_at=T0 + 10, reason="stolen laptop"
    )
    revoked = directory.with_agency(dataclasses.replace(entry, signing_keys=(key,)))
    signed = sign_catalogue(catalogue, shelter.signing_key)
    assert verify_catalogue(signed, directory=revoked, now=T0 + 9, current=None) == catalogue
    with pytest.raises(RevokedKeyError):
        verify_catalogue(signed, directory=revoked, now=T0 + 10, current=None)
    with pytest.raises(UnknownKeyError):
        verify_catalogue(
            signed,
            directory=directory_of(AgencyKeys.generate(agency="police", name="Police")),
            now=T0,
            current=None,
        )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"free": 21}, "exceed"),
        ({"expires": T0}, "after as_of"),
        ({"expires": T0 + MAX_CAPACITY_LIFETIME + 1}, "at most"),
        ({"seq": 0}, "seq"),
        ({"total": -1}, "total"),
        ({"free": True}, "free"),
    ],
)
def test_a_capacity_record_outside_its_rules_cannot_be_made(
    changes: dict[str, Any], problem: str
) -> None:
    base = {
        "agency": "shelter",
        "service_id": "0" * 16,
        "seq": 1,
        "free": 3,
        "total": 20,
        "as_of": T0,
        "expires": T0 + 600,
    }
    with pytest.raises(ValueError, match=problem):
        Capacity(**(base | changes))


def test_capacity_is_unknown_once_its_record_expires(shelter: AgencyKeys) -> None:
    """A provider that stops updating shows no free places: its last record expires."""
    places = service()
    catalogue = Catalogue("shelter", 1, T0 + 10 * 86_400, (places,))
    record = Capacity("shelter", places.service_id, 1, 3, 20, T0, T0 + 600)
    signed = sign_capacity(record, shelter.signing_key)
    directory = directory_of(shelter)
    kw: dict[str, Any] = {"directory": directory, "catalogue": catalogue, "last_seq": None}
    assert verify_capacity(signed, now=T0 + 599, **kw) == record
    with pytest.raises(ExpiredError):
        verify_capacity(signed, now=T0 + 600, **kw)
    other = SigningKey.generate()
    with pytest.raises(UnknownKeyError):
        verify_capacity(sign_capacity(record, other), now=T0, **kw)
