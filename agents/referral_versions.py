"""A schema v1 referral read as schema v2 (docs/PROTOCOL.md §8.1 "Schema versions").

Version 2 took the HTCDS 2.0 code lists for `gender` and `exploitation_types` and dropped
`nrm_stage`; every other field means the same in both. Agents accept both versions, and a
sender sends the version its case system submitted (an agent of an older release refuses v2),
so a case system written for v2 still receives v1 documents: `as_v2` reads one as v2, with
the two tables below, which the tests hold to both schemas.

Pure: no I/O. The mapping never invents a value: a v1 code maps to the v2 code that says the
same or, where HTCDS 2.0 split or dropped one, to the v2 code that covers it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DROPPED_IN_V2", "EXPLOITATION_V1_TO_V2", "GENDER_V1_TO_V2", "as_v2"]

#: HTCDS 1.0 Gender -> 2.0 prs_Gender. 1.0 had one code for transgender and non-conforming
#: people, which 2.0 splits in three; without knowing which, it reads as non-conforming.
GENDER_V1_TO_V2: Final[Mapping[str, str]] = {
    "female": "feminine",
    "male": "masculine",
    "transgender_non_conforming": "non_conforming",
    "unknown": "non_specified_unknown",
}

#: HTCDS 1.0 type of exploitation -> 2.0 vic_TypeOfExploitation. 2.0 names forced military
#: service by who forces it and illegal adoption by what it is; it has no `illicit_activities`,
#: which 1.0 listed as a kind of labour exploitation.
EXPLOITATION_V1_TO_V2: Final[Mapping[str, str]] = {
    "forced_labour": "forced_labour",
    "sexual_exploitation": "sexual_exploitation",
    "forced_marriage": "forced_marriage",
    "forced_military_service": "forced_military_by_non_state_actors",
    "organ_removal": "organ_removal",
    "forced_begging": "forced_begging",
    "illicit_activities": "forced_labour",
    "illegal_adoption": "forced_adoption",
    "surrogacy": "surrogacy",
    "other": "other",
}

#: v1 body fields v2 does not have. The stage of a case is what the competent authority's
#: signed decisions say (PROTOCOL §8.7), never what a sender claims.
DROPPED_IN_V2: Final = frozenset({"nrm_stage"})


def as_v2(referral: Mapping[str, Any]) -> dict[str, Any]:
    """The referral document (routing fields and body, valid under its own schema) as a
    new schema v2 document; a v2 document is returned as a copy, unchanged."""
    out = copy.deepcopy(dict(referral))
    if out.get("schema_version") == "2":
        return out
    if out.get("schema_version") != "1":
        raise ValueError("not a referral of schema version 1 or 2")
    out["schema_version"] = "2"
    body: dict[str, Any] = out["body"]
    for field in DROPPED_IN_V2:
        body.pop(field, None)
    if "gender" in body:
        body["gender"] = GENDER_V1_TO_V2[body["gender"]]
    if "exploitation_types" in body:
        mapped = (EXPLOITATION_V1_TO_V2[code] for code in body["exploitation_types"])
        body["exploitation_types"] = list(dict.fromkeys(mapped))  # two v1 codes may meet
    return out
