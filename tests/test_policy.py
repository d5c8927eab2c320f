"""The national policy of a spec_version 2 directory (PROTOCOL §7.11): strict decoding, the
spec_version rules, and the administrators' commands that put it into the draft."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from keys.codec import canonical_json
from keys.directory import Directory, encode_directory, read_unverified_directory
from keys.errors import MalformedError
from keys.policy import Policy, Tier, policy_doc, policy_from_doc
from keys.roles import ROLES
from nrm import admin
from nrm.cli import main
from nrm.sandbox import Sandbox, prepare_mechanism

from .support import AGENCIES

POLICY = Policy(
    country="LT",
    without_consent={"competent-authority": ("legal_obligation", "public_task")},
)


def doc(**changes: Any) -> dict[str, Any]:
    d = policy_doc(POLICY)
    d.update(changes)
    return d


def test_a_policy_round_trips_through_a_spec_2_directory() -> None:
    directory = Directory(version=1, expires=10**9, agencies=(), policy=POLICY)
    data = encode_directory(directory)
    assert json.loads(data)["spec_version"] == 2
    again = read_unverified_directory(data)
    assert again.policy == POLICY and again.spec_version == 2
    without = directory.with_policy(None)
    assert json.loads(encode_directory(without))["spec_version"] == 1
    assert "policy" not in json.loads(encode_directory(without))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"reflection_min_days": 29}, "reflection_min_days must be an integer from 30"),
        ({"reflection_warn_days": 30}, "reflection_warn_days"),
        ({"second_stage_due_days": 30}, "second_stage_due_days must be an integer from 31"),
        ({"country": "lt"}, "ISO 3166-1 alpha-2"),
        ({"no_removal_from": "decision"}, "no_removal_from must be one of"),
        ({"reflection_ends_with_second_stage": 0}, "must be true or false"),
        ({"first_stage_due_days": True}, "first_stage_due_days"),
        ({"without_consent": {"police": ["consent"]}}, "without_consent.police must be among"),
        ({"without_consent": {"sheriff": ["public_task"]}}, "names a role"),
        ({"without_consent": {"police": ["public_task", "legal_obligation"]}}, "sorted list"),
        ({"child_identity_roles": ["police", "coordinator"]}, "sorted list"),
        ({"child_identity_roles": ["parent"]}, "names a role"),
        ({"child_legal_bases": ["Children Act"]}, "child_legal_bases"),
        ({"colour": "blue"}, "policy must have exactly the members"),
        (
            {"break_glass": {"confirm_seconds": 900, "follow_up_days": 7, "reasons": []}},
            "break_glass.reasons must list at least one",
        ),
        (
            {"break_glass": {"confirm_seconds": 0, "follow_up_days": 7, "reasons": ["a"]}},
            "break_glass.confirm_seconds must be an integer from 1",
        ),
        (
            {"break_glass": {"confirm_seconds": 900, "follow_up_days": 0, "reasons": ["a"]}},
            "break_glass.follow_up_days must be an integer from 1",
        ),
        (
            {"break_glass": {"confirm_seconds": 900, "follow_up_days": 7, "reasons": ["b", "a"]}},
            "break_glass.reasons must be a sorted list",
        ),
        (  # a reason is its audit events' reason code: at most 40 characters
            {"break_glass": {"confirm_seconds": 900, "follow_up_days": 7, "reasons": ["a" * 41]}},
            "break_glass.reasons must be a sorted list",
        ),
        (
            {"break_glass": {"confirm_seconds": 900, "follow_up_days": 7, "reasons": "a"}},
            "break_glass.reasons must be a list",
        ),
        (
            {"break_glass": {"confirm_seconds": 900, "reasons": ["a"]}},
            "policy.break_glass must have exactly the members",
        ),
    ],
)
def test_a_policy_out_of_range_is_refused_naming_the_member(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        policy_from_doc(doc(**changes))


def test_priority_tiers_are_all_there_and_in_order() -> None:
    priority = policy_doc(POLICY)["priority"]
    del priority["routine"]
    with pytest.raises(ValueError, match=r"policy\.priority must have exactly"):
        policy_from_doc(doc(priority=priority))
    late = policy_doc(POLICY)["priority"]
    late["emergency"]["due_seconds"] = late["routine"]["due_seconds"] + 1
    with pytest.raises(ValueError, match="more pressing tier cannot be due later"):
        policy_from_doc(doc(priority=late))
    with pytest.raises(ValueError, match="acknowledge_seconds"):
        Tier(acknowledge_seconds=100, due_seconds=99)


def test_a_decoded_directory_with_a_bad_policy_is_malformed() -> None:
    good = json.loads(encode_directory(Directory(1, 10**9, (), policy=POLICY)))
    good["policy"]["reflection_min_days"] = 14
    with pytest.raises(MalformedError, match="reflection_min_days"):
        read_unverified_directory(canonical_json(good))


def test_who_may_refer_an_adult_without_consent() -> None:
    assert POLICY.may_skip_consent(("competent-authority",), "public_task")
    assert POLICY.may_skip_consent(("coordinator", "competent-authority"), "legal_obligation")
    assert not POLICY.may_skip_consent(("police",), "public_task")
    assert not POLICY.may_skip_consent(("competent-authority",), "vital_interests")


def test_every_role_the_directory_defines_has_its_categories() -> None:
    from agents.referral import ROLE_CATEGORIES

    assert frozenset(ROLE_CATEGORIES) == ROLES
    assert ROLE_CATEGORIES["rapporteur"] == frozenset()
    assert "criminal" not in ROLE_CATEGORIES["immigration"]


@pytest.fixture
def folder(tmp_path: Path) -> Sandbox:
    return prepare_mechanism(tmp_path, AGENCIES, admins=1, threshold=1)


def nrm(*args: str | Path) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_administrators_put_a_policy_into_the_draft_and_take_it_out(
    folder: Sandbox, tmp_path: Path
) -> None:
    """policy-template → edit → set-policy: the draft becomes spec_version 2 with the new
    roles allowed; a bad file is refused (exit 1) and changes nothing; --none goes back,
    but not while an agency holds a spec_version 2 role."""
    template = nrm("directory", "policy-template", "--country", "LT")
    assert template.exit_code == 0, template.output
    policy = json.loads(template.output)
    assert policy["reflection_min_days"] == 30 and policy["country"] == "LT"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**policy, "reflection_min_days": 10}))
    before = folder.admin.directory_bytes()
    refused = nrm("directory", "set-policy", bad, "--dir", folder.admin.path)
    assert refused.exit_code == 1, refused.output
    assert "reflection_min_days" in refused.output and "Traceback" not in refused.output
    assert folder.admin.directory_bytes() == before

    good = tmp_path / "policy.json"
    good.write_text(json.dumps({**policy, "reflection_min_days": 45}))
    done = nrm("directory", "set-policy", good, "--dir", folder.admin.path)
    assert done.exit_code == 0, done.output
    draft = folder.admin.draft()
    assert draft.policy is not None and draft.policy.reflection_min_days == 45
    shown = nrm("directory", "show", "--json", "--dir", folder.admin.path)
    assert json.loads(shown.output)["spec_version"] == 2

    # A spec_version 2 role is now allowed; while it is held, the policy cannot go.
    police = draft.agency("police")
    folder.admin.save_draft(
        draft.with_agency(replace(police, roles=("competent-authority", "police")))
    )
    stuck = nrm("directory", "set-policy", "--none", "--dir", folder.admin.path)
    assert stuck.exit_code == 1 and "need a directory with a national policy" in stuck.output
    folder.admin.save_draft(draft)
    back = nrm("directory", "set-policy", "--none", "--dir", folder.admin.path)
    assert back.exit_code == 0, back.output
    assert folder.admin.draft().policy is None

    usage = nrm("directory", "set-policy", "--dir", folder.admin.path)
    assert usage.exit_code == 2


def test_a_spec_2_role_is_refused_without_a_policy(folder: Sandbox) -> None:
    identity = folder.agencies["police"].identity_path
    result = nrm(
        "directory",
        "add-agency",
        identity,
        "--roles",
        "police,competent-authority",
        "--dir",
        folder.admin.path,
    )
    assert result.exit_code == 1, result.output
    assert "competent-authority" in result.output and "spec_version 2" in result.output
    assert admin.AdminFolder(folder.admin.path).draft().agency("police").roles == ("police",)


def test_a_competent_authority_may_be_limited_to_one_stage(folder: Sandbox, tmp_path: Path) -> None:
    """`add-agency --decides first` makes the police a competent authority of the first stage
    only (PROTOCOL §7.3); `--decides` on an agency that is not one is refused (exit 1) and
    changes nothing; the member survives signing and strict decoding."""
    template = json.loads(nrm("directory", "policy-template", "--country", "LT").output)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(template))
    assert nrm("directory", "set-policy", policy, "--dir", folder.admin.path).exit_code == 0

    def add(agency: str, *args: str) -> Any:
        identity = folder.agencies[agency].identity_path
        return nrm("directory", "add-agency", identity, *args, "--dir", folder.admin.path)

    before = folder.admin.directory_bytes()
    refused = add("shelter", "--decides", "first")
    assert refused.exit_code == 1, refused.output
    assert "competent-authority only" in refused.output
    assert folder.admin.directory_bytes() == before

    done = add("police", "--roles", "competent-authority,police", "--decides", "first")
    assert done.exit_code == 0, done.output
    police = folder.admin.draft().agency("police")
    assert police.decides == ("first",)
    assert police.decides_stage("first") and not police.decides_stage("second")
    assert not folder.admin.draft().agency("shelter").decides_stage("first")
    again = add("police", "--decides", "first")
    assert again.exit_code == 1 and "already in the directory" in again.output

    decoded = read_unverified_directory(encode_directory(folder.admin.draft()))
    assert decoded.agency("police").decides == ("first",)
    moved = add("police", "--decides", "second")
    assert moved.exit_code == 0, moved.output
    assert folder.admin.draft().agency("police").decides == ("second",)
