"""Readable renderings for administrators and auditors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keys import UntrustedInputError
from keys.directory import AgencyEntry, signature_count
from keys.policy import policy_doc
from runtime import clock

from .admin import AdminFolder, verified_draft
from .output import agency_entry


def when(t: int | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def entry_fingerprint(entry: AgencyEntry) -> str | None:
    """The fingerprint (PROTOCOL.md §2.4) of the identity an agency's active signing and
    encryption keys and its NATS key make: what its `nrm keys init` or `nrm keys rotate`
    printed, to compare out of band. None while it has no active key of either kind."""
    from nacl.public import PublicKey
    from nacl.signing import VerifyKey

    from keys import PublicIdentity
    from keys.identity import fingerprint

    signing = [k for k in entry.signing_keys if k.status == "active"]
    encryption = [k for k in entry.encryption_keys if k.status == "active"]
    if len(signing) != 1 or len(encryption) != 1:
        return None
    identity = PublicIdentity(
        entry.agency,
        entry.name,
        VerifyKey(signing[0].public),
        PublicKey(encryption[0].public),
        entry.nats_key,
    )
    return fingerprint(identity)


def refuse_unsigned(data: bytes, *, what: str) -> None:
    """Raise Failed if the directory file `data` carries no signature at all: the draft
    `nrm directory add-agency` writes, which neither starts a bus nor publishes (a later
    verification would call its missing signature list "malformed")."""
    from .exits import Failed

    if signature_count(data, keys=None) == 0:
        raise Failed(
            f"{what} is unsigned: sign it first (`nrm directory sign`, as many administrators "
            "as the root's threshold); a bus starts and a directory publishes only once it is"
            " signed"
        )


def draft_state(folder: AdminFolder) -> tuple[int, int, str | None]:
    """(signatures, threshold, None if the draft verifies else why not) against the newest
    root. An unsigned or under-signed draft says so (a draft's empty signature list is not
    "malformed": it is what `add-agency` writes)."""
    root = folder.newest_root()
    count = signature_count(folder.directory_bytes(), keys=root)
    if count == 0:
        return count, root.threshold, "unsigned"
    if count < root.threshold:
        return count, root.threshold, "under-signed"
    try:
        verified_draft(folder)
    except UntrustedInputError as e:
        return count, root.threshold, e.reason
    return count, root.threshold, None


def directory_document(folder: AdminFolder) -> dict[str, Any]:
    """`nrm directory show --json`: the draft, its signature state and every key in full."""
    directory = folder.draft()
    root = folder.newest_root()
    count, threshold, problem = draft_state(folder)
    return {
        "version": directory.version,
        "expires": directory.expires,
        "signatures": count,
        "threshold": threshold,
        "publishable": problem is None,
        "problem": problem,
        "root": {
            "version": root.version,
            "expires": root.expires,
            "expired": root.expires <= clock.now(),
        },
        "agencies": [agency_entry(a) for a in directory.agencies],
        "spec_version": directory.spec_version,
        "policy": None if directory.policy is None else policy_doc(directory.policy),
    }


def show_directory(folder: AdminFolder) -> str:
    """The directory draft as a table, with its signature state against the current root."""
    directory = folder.draft()
    root = folder.newest_root()  # shown even once it has expired: it says so below
    count, _, problem = draft_state(folder)
    if problem is None:
        state = "verifies: publishable"
    elif problem == "unsigned":
        state = "unsigned: not publishable yet (`nrm directory sign`)"
    elif problem == "under-signed":
        state = f"not publishable yet (under-signed: {root.threshold - count} more needed)"
    else:
        state = f"not publishable ({problem})"
    lines = [
        f"directory version {directory.version}, expires {when(directory.expires)}; "
        f"{count} of {root.threshold} signatures from root v{root.version}: {state}",
        f"root version {root.version} expires {when(root.expires)}"
        + (" (EXPIRED: rotate the root)" if root.expires <= clock.now() else ""),
        "national policy: none (spec_version 1)"
        if directory.policy is None
        else f"national policy of {directory.policy.country} (spec_version 2; --json shows it)",
        "",
        f"{'agency':<16} {'roles':<20} {'key':<6} {'kid':<34} {'status':<9} "
        f"{'valid from':<17} {'valid until':<17} revoked",
    ]
    for a in directory.agencies:
        lines.append(f"{a.agency:<16} {','.join(a.roles):<20} nats   {a.nats_key[:32]}…")
        for kind, keys in (("sign", a.signing_keys), ("enc", a.encryption_keys)):
            for k in keys:
                revoked = "" if k.revoked_at is None else f"{when(k.revoked_at)} ({k.reason})"
                lines.append(
                    f"{'':<16} {'':<20} {kind:<6} {k.kid:<34} {k.status:<9} "
                    f"{when(k.valid_from):<17} {when(k.valid_until):<17} {revoked}"
                )
    return "\n".join(lines)
