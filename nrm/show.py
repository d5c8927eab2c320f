"""Readable renderings for administrators and auditors."""

from __future__ import annotations

from datetime import UTC, datetime

from keys import UntrustedInputError
from keys.directory import signature_count
from runtime import clock

from .admin import AdminFolder, verified_draft


def when(t: int | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def show_directory(folder: AdminFolder) -> str:
    """The directory draft as a table, with its signature state against the current root."""
    directory = folder.draft()
    data = folder.directory_bytes()
    root = folder.newest_root()  # shown even once it has expired: it says so below
    count = signature_count(data, keys=root)
    try:
        verified_draft(folder)
        state = "verifies: publishable"
    except UntrustedInputError as e:
        state = f"not publishable ({e.reason})"
    lines = [
        f"directory version {directory.version}, expires {when(directory.expires)}; "
        f"{count} of {root.threshold} signatures from root v{root.version}: {state}",
        f"root version {root.version} expires {when(root.expires)}"
        + (" (EXPIRED: rotate the root)" if root.expires <= clock.now() else ""),
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
