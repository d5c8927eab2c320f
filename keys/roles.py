"""The roles an agency can hold in the directory (PROTOCOL §7.3): one list for the directory
decoder, the national policy and the agents' category tables."""

from __future__ import annotations

from typing import Final

#: The roles of directory spec_version 1.
SPEC1_ROLES: Final = frozenset(
    {
        "police",
        "border-guard",
        "ngo",
        "social-services",
        "labour-inspection",
        "prosecutor",
        "health",
        "coordinator",
        "auditor",
    }
)
#: The roles spec_version 2 adds (the NRM process: docs/proposals/nrm-process.md §3.1).
SPEC2_ROLES: Final = frozenset(
    {"competent-authority", "immigration", "child-protection", "rapporteur"}
)
#: Every role a directory may name.
ROLES: Final = SPEC1_ROLES | SPEC2_ROLES

#: The role that makes identification decisions (docs/PROTOCOL.md §8.7).
COMPETENT_AUTHORITY: Final = "competent-authority"
#: The national rapporteur, who receives the statistics contributions (PROTOCOL §8.11).
RAPPORTEUR: Final = "rapporteur"
#: The two identification stages a `competent-authority` decides (PROTOCOL §7.3, §8.7).
DECISION_STAGES: Final[tuple[str, ...]] = ("first", "second")
#: The values an agency's `decides` member may take: one stage. Absent, a competent
#: authority decides both (one encoding for each meaning).
DECIDES_VALUES: Final[tuple[tuple[str, ...], ...]] = (("first",), ("second",))
