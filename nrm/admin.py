"""Administrator operations on a working folder: root keys, the directory draft, publishing.

The folder (`--dir`, default `$NRM_ADMIN_DIR` or `.`) holds:

    admin-<n>.key         an administrator's root signing key, encrypted (0600)
    root.<version>.json   every signed root, version 1 upwards (the trust anchor is root.1)
    directory.json        the directory being prepared or last published, with signatures
    published-version     the highest directory version published from this folder
    settings.toml         the directory lifetime and publishing margin (`nrm admin init`)
    operator/             the bus operator's NKey (encrypted) used to publish and provision

Each function verifies what it reads and writes files atomically; refusing leaves them as
they were.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
from nacl.signing import SigningKey

from broker.authority import attachment_owners
from broker.authz import ServiceKeys
from broker.streams import provision_agency_stores
from keys import KeyFileError, PublicIdentity, UntrustedInputError
from keys.directory import (
    AgencyEntry,
    Directory,
    Root,
    TrustStore,
    add_signature,
    detached_signature,
    directory_from_files,
    encode_directory,
    encode_root,
    read_unverified_directory,
    sign,
    signature_count,
    signed_part,
    verify_root_chain,
    verify_root_update,
    walk_root_chain,
)
from keys.identity import signing_kid
from keys.keyfile import KdfCost, open_admin_key, seal_admin_key
from keys.limits import DEFAULT_LIMITS
from keys.policy import Policy, policy_from_doc
from keys.subjects import DIRECTORY_BUCKET, DIRECTORY_KEY, DIRECTORY_STREAM, root_key
from runtime import clock
from runtime.bus_client import connect_once
from runtime.config import ConfigError, days
from runtime.endpoint import BusEndpoint
from runtime.files import replace_file, write_new_file
from runtime.keydir import init_key_dir, load_key_dir

DIRECTORY_FILE = "directory.json"
PUBLISHED_FILE = "published-version"
SETTINGS_FILE = "settings.toml"
#: Every key settings.toml may hold (docs/CONFIG.md).
SETTINGS_KEYS = frozenset({"directory_lifetime_days", "publish_margin_days"})
OPERATOR_DIR = "operator"
DAY = 86400


class AdminError(Exception):
    """An administrator operation that cannot be done as asked."""


def verified_directory(roots: Sequence[Path], directory: Path) -> Directory:
    """The signed directory in the file `directory`, verified against the pinned root
    `roots[0]` and each later root in order (UntrustedInputError with its reason)."""
    return directory_from_files(
        roots[0].read_bytes(),
        [r.read_bytes() for r in roots[1:]],
        directory.read_bytes(),
        now=clock.now(),
    )


def identity_nats_key(identity: Path) -> str:
    """The NATS key of the identity file `identity` (the operator's, the ledger's, a bus
    authority's); AdminError if it is none or has none."""
    try:
        found = PublicIdentity.from_json(identity.read_bytes())
    except OSError as e:
        raise AdminError(f"cannot read {identity}: {e.strerror}") from e
    except (ValueError, KeyError) as e:
        raise AdminError(f"{identity}: not an identity file ({e})") from e
    if found.nats_key is None:
        raise AdminError(f"{identity}: the identity has no NATS key")
    return found.nats_key


def service_keys(
    *, operators: Sequence[Path], ledgers: Sequence[Path] = (), authorities: Sequence[Path] = ()
) -> ServiceKeys:
    """The NKeys of these identity files, for the authorization (broker/authz.py)."""
    return ServiceKeys(
        operators=tuple(identity_nats_key(p) for p in operators),
        ledgers=tuple(identity_nats_key(p) for p in ledgers),
        authorities=tuple(identity_nats_key(p) for p in authorities),
    )


class BusUnreachableError(AdminError):
    """No server of the bus answered, or the TLS handshake with it failed."""


class PublishMarginError(AdminError):
    """The draft expires sooner than the publishing margin: renew it (`nrm directory renew`),
    sign it again, then publish."""


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """Kept in the folder's settings.toml; a folder without one uses keys.DEFAULT_LIMITS.

    `directory_lifetime_seconds`: how long each new draft (a change or a renewal) is valid.
    `publish_margin_seconds`: publishing refuses a directory that expires sooner than this.
    """

    directory_lifetime_seconds: int = DEFAULT_LIMITS.directory_ttl_seconds
    publish_margin_seconds: int = DEFAULT_LIMITS.publish_margin_seconds

    def __post_init__(self) -> None:
        check_lifetime(self.directory_lifetime_seconds, margin=self.publish_margin_seconds)

    def to_toml(self) -> bytes:
        return (
            "# Written by `nrm admin init`; edit to change the defaults (docs/RUNBOOK.md).\n"
            f"directory_lifetime_days = {self.directory_lifetime_seconds / DAY!r}\n"
            f"publish_margin_days = {self.publish_margin_seconds / DAY!r}\n"
        ).encode()

    @classmethod
    def from_toml(cls, data: bytes, *, where: Path) -> AdminSettings:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise AdminError(f"{where} is not valid TOML: {e}") from e
        unknown = set(doc) - SETTINGS_KEYS
        if unknown:
            raise AdminError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        defaults = cls()
        values = {}
        for name, field, default in (
            (
                "directory_lifetime_days",
                "directory_lifetime_seconds",
                defaults.directory_lifetime_seconds,
            ),
            ("publish_margin_days", "publish_margin_seconds", defaults.publish_margin_seconds),
        ):
            try:
                values[field] = days(doc.get(name, default / DAY), key=name)
            except ConfigError as e:
                raise AdminError(f"{where}: {e}") from e
        try:
            return cls(**values)
        except ValueError as e:
            raise AdminError(f"{where}: {e}") from e


def check_lifetime(lifetime_seconds: int, *, margin: int) -> None:
    """A lifetime must be longer than the publishing margin, or nothing could be published."""
    if lifetime_seconds <= margin:
        raise ValueError(
            f"a directory lifetime of {lifetime_seconds / DAY:g} days is not longer than the "
            f"publishing margin of {margin / DAY:g} days: nothing could be published"
        )


@dataclass(frozen=True, slots=True)
class AdminFolder:
    path: Path

    def root_path(self, version: int) -> Path:
        return self.path / f"root.{version}.json"

    def root_versions(self) -> list[int]:
        versions = []
        for p in self.path.glob("root.*.json"):
            try:
                versions.append(int(p.name.split(".")[1]))
            except ValueError:
                continue
        return sorted(versions)

    def newest_root(self) -> Root:
        """Walk the root chain from root.1, verifying each step (signatures, version N+1);
        the roots may have expired (a rotation needs only their keys)."""
        versions = self._chain_versions()
        return walk_root_chain(
            self.root_path(1).read_bytes(), [self.root_path(v).read_bytes() for v in versions[1:]]
        )

    def trusted_root(self, *, now: int) -> Root:
        """The newest root of the verified chain, which must be current at `now` (§7.5)."""
        versions = self._chain_versions()
        return verify_root_chain(
            self.root_path(1).read_bytes(),
            [self.root_path(v).read_bytes() for v in versions[1:]],
            now=now,
        )

    def _chain_versions(self) -> list[int]:
        versions = self.root_versions()
        if not versions or versions[0] != 1:
            raise AdminError(f"{self.path} holds no root.1.json; run `nrm admin init` first")
        return versions

    def settings(self) -> AdminSettings:
        path = self.path / SETTINGS_FILE
        if not path.exists():
            return AdminSettings()
        return AdminSettings.from_toml(path.read_bytes(), where=path)

    def directory_bytes(self) -> bytes:
        path = self.path / DIRECTORY_FILE
        if not path.exists():
            raise AdminError(f"{path} does not exist; run `nrm admin init` first")
        return path.read_bytes()

    def published_version(self) -> int:
        """The highest directory version this folder has published (0 if none)."""
        path = self.path / PUBLISHED_FILE
        return int(path.read_text()) if path.exists() else 0

    def record_published(self, version: int) -> None:
        replace_file(self.path / PUBLISHED_FILE, f"{version}\n".encode(), mode=0o644)

    def draft(self) -> Directory:
        return read_unverified_directory(self.directory_bytes())

    def save_draft(self, directory: Directory) -> None:
        """Write a changed directory with no signatures: it must be signed again."""
        replace_file(self.path / DIRECTORY_FILE, encode_directory(directory), mode=0o644)


def init_admin(
    folder: Path,
    *,
    admins: int,
    threshold: int,
    passphrase: bytes | None,
    cost: KdfCost,
    settings: AdminSettings | None = None,
    now: int | None = None,
    operator_passphrase: bytes | None = None,
    passphrases: Sequence[bytes] | None = None,
) -> Root:
    """Create `admins` root keys, root.1 signed by all of them, an empty directory draft,
    the folder's settings and the bus operator's credentials, sealed with
    `operator_passphrase` (by default `passphrase`: not recommended, since the ledger and
    every bus authority read the operator's key and so hold its passphrase).

    With `passphrases` (one per administrator, in order), `admin-<n>.key` is sealed with
    the n-th of them instead of `passphrase`."""
    if not 1 <= threshold <= admins:
        raise AdminError("the threshold must be between 1 and the number of administrators")
    sealing = _one_each(passphrase, passphrases, admins, "administrator")
    operator_passphrase = passphrase if operator_passphrase is None else operator_passphrase
    if operator_passphrase is None:
        raise AdminError("no passphrase for the operator's key")
    settings = AdminSettings() if settings is None else settings
    now = clock.now() if now is None else now
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(folder.glob("root.*.json")):
        raise AdminError(f"{folder} already holds a root; refusing to overwrite it")
    keys = [SigningKey.generate() for _ in range(admins)]
    for n, (key, secret) in enumerate(zip(keys, sealing, strict=True), start=1):
        write_new_file(folder / f"admin-{n}.key", seal_admin_key(key, passphrase=secret, cost=cost))
    root = Root(
        version=1,
        expires=now + DEFAULT_LIMITS.root_ttl_seconds,
        threshold=threshold,
        keys={signing_kid(k.verify_key): k.verify_key for k in keys},
    )
    signed = encode_root(root)
    for key in keys:
        signed = sign(signed, key)
    write_new_file(folder / "root.1.json", signed, mode=0o644)
    empty = Directory(version=1, expires=now + settings.directory_lifetime_seconds, agencies=())
    write_new_file(folder / DIRECTORY_FILE, encode_directory(empty), mode=0o644)
    write_new_file(folder / SETTINGS_FILE, settings.to_toml(), mode=0o644)
    init_key_dir(
        folder / OPERATOR_DIR,
        agency="operator",
        name="Bus operator",
        passphrase=operator_passphrase,
        cost=cost,
    )
    return root


def _one_each(
    passphrase: bytes | None, passphrases: Sequence[bytes] | None, count: int, what: str
) -> list[bytes]:
    """The passphrase of each of `count` key files: `passphrases` if given (exactly one
    per file, else AdminError), else `passphrase` for all."""
    if passphrases is None:
        if passphrase is None:
            raise AdminError(f"no passphrase for the {what} keys")
        return [passphrase] * count
    if len(passphrases) != count:
        raise AdminError(
            f"{len(passphrases)} passphrases for {count} {what} keys: give one for all, "
            "or one per key in order"
        )
    return list(passphrases)


def change_admin_passphrase(key_path: Path, *, old: bytes, new: bytes, cost: KdfCost) -> str:
    """Seal the administrator key file `key_path` again under the passphrase `new` (the
    key unchanged), replacing it atomically (0600); KeyFileError, and the file as it was, if
    `old` does not open it. Returns the key's kid."""
    try:
        data = key_path.read_bytes()
    except OSError as e:
        raise AdminError(f"cannot read {key_path}: {e.strerror}") from e
    key = open_admin_key(data, passphrase=old)
    replace_file(key_path, seal_admin_key(key, passphrase=new, cost=cost))
    return signing_kid(key.verify_key)


def _save_next(
    folder: AdminFolder,
    directory: Directory,
    *,
    published: int,
    now: int,
    lifetime_seconds: int | None = None,
) -> Directory:
    """Save `directory`, a change of the draft, as the next draft, and return it: what every
    directory change ends with. Its version is one above the last signed one, its expiry
    renewed: `now` plus `lifetime_seconds`, by default the folder's directory lifetime."""
    settings = folder.settings()
    if lifetime_seconds is None:
        lifetime_seconds = settings.directory_lifetime_seconds
    try:
        check_lifetime(lifetime_seconds, margin=settings.publish_margin_seconds)
    except ValueError as e:
        raise AdminError(str(e)) from e
    draft = Directory(
        version=max(directory.version, published + 1),
        expires=now + lifetime_seconds,
        agencies=directory.agencies,
        policy=directory.policy,
    )
    folder.save_draft(draft)
    return draft


def renew_directory(
    folder: AdminFolder, *, lifetime_seconds: int | None = None, now: int | None = None
) -> Directory:
    """A new draft version with the same agencies and keys and a new expiry, to be signed by
    the threshold and published like any change (docs/RUNBOOK.md, "Expiry and renewal")."""
    now = clock.now() if now is None else now
    directory, published = _draft_and_published(folder)
    return _save_next(
        folder, directory, published=published, now=now, lifetime_seconds=lifetime_seconds
    )


def add_agency(
    folder: AdminFolder,
    identity: PublicIdentity,
    *,
    roles: Sequence[str],
    decides: str | None = None,
    overlap_seconds: int = DEFAULT_LIMITS.rotation_overlap_seconds,
    now: int | None = None,
) -> Directory:
    """Admit an agency, or take in its rotated keys (old ones retire after the overlap).

    `decides` (`first` or `second`) limits a competent authority to one identification
    stage (PROTOCOL §7.3); None leaves an existing agency's as it is, and a new one
    deciding both."""
    now = clock.now() if now is None else now
    if identity.nats_key is None:
        raise AdminError("the identity file has no NATS key; re-create it with `nrm keys init`")
    directory, published = _draft_and_published(folder)
    _refuse_shared_nats_key(directory, identity)
    if identity.agency in directory:
        current = directory.agency(identity.agency)
        known = {k.kid for k in current.signing_keys}
        if identity.signing_kid in known:
            same_nats = identity.nats_key == current.nats_key
            active = {k.kid for k in current.signing_keys if k.status == "active"}
            if not same_nats and identity.signing_kid not in active:
                # An identity.json from before a rotation: taking its NATS key would put
                # the old key back on the bus and cut the agency's current one off.
                raise AdminError(
                    f"this identity.json of {identity.agency} holds keys the directory has "
                    "already replaced; use the agency's current identity.json"
                )
            stages = current.decides if decides is None else (decides,)
            if same_nats and (tuple(roles) in (current.roles, ())) and stages == current.decides:
                raise AdminError(f"{identity.agency} is already in the directory with these keys")
            changed = dataclasses.replace(
                current, roles=tuple(roles or current.roles), decides=stages
            )
            directory = directory.with_agency(changed)
        else:
            directory = directory.rotate(
                identity.agency,
                signing=(identity.signing_kid, bytes(identity.signing_key)),
                encryption=(identity.encryption_kid, bytes(identity.encryption_key)),
                now=now,
                overlap_seconds=overlap_seconds,
            )
        # The NATS key has no overlap: once published, the bus authorizes only the new
        # NKey and the old one is cut off at once (docs/PROTOCOL.md §7.7).
        entry = directory.agency(identity.agency)
        directory = directory.with_agency(dataclasses.replace(entry, nats_key=identity.nats_key))
    else:
        if not roles:
            raise AdminError("give the agency at least one role (--roles)")
        entry = AgencyEntry.of(identity, roles, valid_from=now)
        stages = None if decides is None else (decides,)
        directory = directory.with_agency(dataclasses.replace(entry, decides=stages))
    return _save_next(folder, directory, published=published, now=now)


def set_policy(folder: AdminFolder, policy: Policy | None, *, now: int | None = None) -> Directory:
    """Put the national policy into the draft (PROTOCOL §7.11; the draft becomes
    spec_version 2), or take it out with None (refused while an agency holds a role only
    spec_version 2 defines)."""
    now = clock.now() if now is None else now
    directory, published = _draft_and_published(folder)
    try:
        changed = directory.with_policy(policy)
    except ValueError as e:
        raise AdminError(str(e)) from e
    if changed.policy == directory.policy:
        raise AdminError("the draft already has this policy")
    return _save_next(folder, changed, published=published, now=now)


def read_policy(data: bytes) -> Policy:
    """A policy file (the JSON of a directory's `policy` member, `nrm directory
    policy-template`); AdminError naming what is wrong."""
    try:
        return policy_from_doc(json.loads(data))
    except json.JSONDecodeError as e:
        raise AdminError(f"the policy file is not JSON: {e.msg} at line {e.lineno}") from e
    except ValueError as e:
        raise AdminError(f"the policy file is not a valid policy: {e}") from e


def remove_agency(folder: AdminFolder, agency: str, *, now: int | None = None) -> Directory:
    now = clock.now() if now is None else now
    directory, published = _draft_and_published(folder, listing=agency)
    return _save_next(folder, directory.without_agency(agency), published=published, now=now)


def revoke_key(
    folder: AdminFolder,
    agency: str,
    kid: str,
    *,
    reason: str,
    at: int | None = None,
    now: int | None = None,
) -> Directory:
    now = clock.now() if now is None else now
    directory, published = _draft_and_published(folder, listing=agency)
    directory = directory.revoke(agency, kid, at=now if at is None else at, reason=reason)
    return _save_next(folder, directory, published=published, now=now)


def sign_draft(folder: AdminFolder, key_path: Path, *, passphrase: bytes) -> int:
    """Add one administrator's signature; returns how many root signatures it now has."""
    key = open_admin_key(key_path.read_bytes(), passphrase=passphrase)
    root = folder.trusted_root(now=clock.now())
    if signing_kid(key.verify_key) not in root.keys:
        raise AdminError(f"{key_path} is not a key of the current root (version {root.version})")
    signed = sign(folder.directory_bytes(), key)
    replace_file(folder.path / DIRECTORY_FILE, signed, mode=0o644)
    return signature_count(signed, keys=root)


def verified_draft(folder: AdminFolder, *, now: int | None = None) -> Directory:
    """The draft, verified exactly as an agent will verify it (raises if not publishable)."""
    now = clock.now() if now is None else now
    store = TrustStore(folder.trusted_root(now=now))
    return store.update_directory(folder.directory_bytes(), now=now)


DRAFT_FORMAT = "nrm-draft/1"
DRAFT_SIGNATURE_FORMAT = "nrm-draft-signature/1"


def describe_draft(directory: Directory) -> list[str]:
    """What a draft says, one line per agency: what an administrator reads before signing."""
    lines = [f"directory version {directory.version}, expires {directory.expires}"]
    for a in directory.agencies:
        signing = ", ".join(f"{k.kid} {k.status}" for k in a.signing_keys)
        encryption = ", ".join(f"{k.kid} {k.status}" for k in a.encryption_keys)
        lines.append(
            f"{a.agency} ({a.name}): roles {', '.join(a.roles)}; signing {signing}; "
            f"encryption {encryption}; NATS {a.nats_key}"
        )
    return lines


def export_draft(folder: AdminFolder) -> bytes:
    """The draft to sign on another machine (`nrm-draft/1`): its unsigned canonical bytes,
    the version last published, and what it says (`describe_draft`)."""
    unsigned = signed_part(folder.directory_bytes())
    doc = {
        "format": DRAFT_FORMAT,
        "directory": base64.b64encode(unsigned).decode(),
        "published_version": folder.published_version(),
        "summary": describe_draft(read_unverified_directory(unsigned)),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _json_file(data: bytes, fmt: str, members: set[str], what: str) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise AdminError(f"{what} is not JSON") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt or set(doc) != members:
        raise AdminError(f"{what} is not an {fmt} document")
    return doc


def read_exported_draft(data: bytes) -> tuple[bytes, Directory]:
    """The unsigned directory bytes of an `nrm-draft/1` file and the directory they hold
    (read from those bytes, never from the file's summary)."""
    doc = _json_file(
        data, DRAFT_FORMAT, {"format", "directory", "published_version", "summary"}, "the draft"
    )
    try:
        unsigned = base64.b64decode(str(doc["directory"]), validate=True)
    except ValueError as e:
        raise AdminError("the draft's directory is not base64") from e
    directory = read_unverified_directory(unsigned)
    if signed_part(unsigned) != unsigned:
        raise AdminError("the draft's directory is not in canonical form")
    return unsigned, directory


def sign_exported_draft(data: bytes, key_path: Path, *, passphrase: bytes) -> bytes:
    """One administrator's detached signature over an exported draft (`nrm-draft-
    signature/1`), made where only the draft, the key file and its passphrase are."""
    unsigned, directory = read_exported_draft(data)
    key = open_admin_key(key_path.read_bytes(), passphrase=passphrase)
    kid, sig = detached_signature(unsigned, key)
    doc = {
        "format": DRAFT_SIGNATURE_FORMAT,
        "version": directory.version,
        "directory_sha256": hashlib.sha256(unsigned).hexdigest(),
        "keyid": kid,
        "sig": base64.b64encode(sig).decode(),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def merge_signatures(folder: AdminFolder, signatures: Iterable[bytes]) -> int:
    """Add detached signatures to the draft; each must be over exactly this draft and by a
    key of the current root, else AdminError (or BadSignatureError) and nothing is written.
    Returns how many root signatures the draft then has."""
    root = folder.trusted_root(now=clock.now())
    signed = folder.directory_bytes()
    digest = hashlib.sha256(signed_part(signed)).hexdigest()
    for data in signatures:
        doc = _json_file(
            data,
            DRAFT_SIGNATURE_FORMAT,
            {"format", "version", "directory_sha256", "keyid", "sig"},
            "a signature file",
        )
        kid = str(doc["keyid"])
        if doc["directory_sha256"] != digest:
            raise AdminError(
                f"the signature of {kid} is for another draft (version {doc['version']}): "
                "export the draft again and have it signed"
            )
        if kid not in root.keys:
            raise AdminError(f"{kid} is not a key of the current root (version {root.version})")
        try:
            sig = base64.b64decode(str(doc["sig"]), validate=True)
        except ValueError as e:
            raise AdminError(f"the signature of {kid} is not base64") from e
        signed = add_signature(signed, kid, sig, key=root.keys[kid])
    replace_file(folder.path / DIRECTORY_FILE, signed, mode=0o644)
    return signature_count(signed, keys=root)


def publishable_draft(
    folder: AdminFolder, *, margin_seconds: int | None = None, now: int | None = None
) -> Directory:
    """The verified draft, if it expires later than `margin_seconds` (by default the folder's
    publishing margin) from `now`, so that it does not start in the warning window; else
    PublishMarginError."""
    now = clock.now() if now is None else now
    directory = verified_draft(folder, now=now)
    margin = folder.settings().publish_margin_seconds if margin_seconds is None else margin_seconds
    if directory.expires - now <= margin:
        raise PublishMarginError(
            f"directory version {directory.version} expires in "
            f"{(directory.expires - now) / DAY:.1f} days, sooner than the publishing margin of "
            f"{margin / DAY:g} days; run `nrm directory renew`, sign it again and publish"
        )
    return directory


async def publish(
    folder: AdminFolder,
    bus: BusEndpoint | str,
    *,
    passphrase: bytes,
    margin_seconds: int | None = None,
) -> Directory:
    """Verify the draft locally (and that it is not about to expire), make the inbox stream
    and attachment bucket of each agency it admits that has none yet (with the replicas of
    the directory bucket: the bus authorities make none, they hold no operator key), then
    put every root and the directory in the KV bucket of `bus` (an endpoint, or URLs in any
    form runtime.endpoint accepts); BusUnreachableError if no server of it answers."""
    directory = publishable_draft(folder, margin_seconds=margin_seconds)
    operator = load_key_dir(folder.path / OPERATOR_DIR, passphrase=passphrase)
    assert operator.nats_seed is not None
    endpoint = bus if isinstance(bus, BusEndpoint) else BusEndpoint.of(bus)
    try:
        nc = await connect_once(endpoint, nkeys_seed=operator.nats_seed, connect_timeout=5)
        try:
            js = nc.jetstream()
            kv = await js.key_value(DIRECTORY_BUCKET)
            # Before the directory that admits them: an agency can connect (once its
            # authority reloads) only when its stores exist.
            replicas = (await js.stream_info(DIRECTORY_STREAM)).config.num_replicas or 1
            await provision_agency_stores(
                js, attachment_owners(directory), replicas=replicas, create_only=True
            )
            for v in folder.root_versions():
                await kv.put(root_key(v), folder.root_path(v).read_bytes())
            await kv.put(DIRECTORY_KEY, folder.directory_bytes())
        finally:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await nc.drain()
    except (nats.errors.Error, OSError, TimeoutError) as e:
        # e.g. no server answering, a certificate not trusted, or (mutual TLS) ours refused
        raise BusUnreachableError(
            f"could not publish to the bus at {', '.join(endpoint.urls)}: {type(e).__name__}: {e}"
        ) from e
    folder.record_published(directory.version)
    return directory


def rotate_root(
    folder: AdminFolder,
    *,
    old_keys: Sequence[Path],
    admins: int,
    threshold: int,
    passphrase: bytes | None,
    cost: KdfCost,
    now: int | None = None,
    passphrases: Sequence[bytes] | None = None,
    new_passphrase: bytes | None = None,
    new_passphrases: Sequence[bytes] | None = None,
) -> Root:
    """A new root set: version N+1 signed by a threshold of the old keys and all new ones.

    Each old key file opens with `passphrase`, or with its own of `passphrases` (one per
    old key, in order); each new key `admin-<n>.r<N+1>.key` is sealed with `new_passphrase`
    (by default `passphrase`), or with the n-th of `new_passphrases`. Every key signs here:
    root rotation has no export-and-merge flow, so the old keys' holders bring them
    together."""
    now = clock.now() if now is None else now
    current = folder.newest_root()  # it may have expired: its keys still sign the next one
    opening = _one_each(passphrase, passphrases, len(old_keys), "old root")
    new_passphrase = passphrase if new_passphrase is None else new_passphrase
    sealing = _one_each(new_passphrase, new_passphrases, admins, "new root")
    signers = []
    for path, secret in zip(old_keys, opening, strict=True):
        try:
            signers.append(open_admin_key(path.read_bytes(), passphrase=secret))
        except KeyFileError as e:
            raise KeyFileError(f"{path}: {e}") from e
    new_keys = [SigningKey.generate() for _ in range(admins)]
    root = Root(
        version=current.version + 1,
        expires=now + DEFAULT_LIMITS.root_ttl_seconds,
        threshold=threshold,
        keys={signing_kid(k.verify_key): k.verify_key for k in new_keys},
    )
    signed = encode_root(root)
    for key in [*signers, *new_keys]:
        signed = sign(signed, key)
    verify_root_update(current, signed)  # refuse before writing
    for n, (key, secret) in enumerate(zip(new_keys, sealing, strict=True), start=1):
        write_new_file(
            folder.path / f"admin-{n}.r{root.version}.key",
            seal_admin_key(key, passphrase=secret, cost=cost),
        )
    write_new_file(folder.root_path(root.version), signed, mode=0o644)
    # The directory must now be signed by the new root's keys.
    directory, published = _draft_and_published(folder)
    _save_next(folder, directory, published=published, now=now)
    return root


def _draft_and_published(
    folder: AdminFolder, *, listing: str | None = None
) -> tuple[Directory, int]:
    """The current draft and the version the next change must exceed: the last published
    one, or the draft's own if it is fully signed (it may be published any time). With
    `listing`, AdminError unless the draft lists that agency."""
    draft = folder.draft()
    if listing is not None and listing not in draft:
        raise AdminError(f"{listing} is not in the directory")
    published = folder.published_version()
    with contextlib.suppress(UntrustedInputError):  # an unsigned draft's version is free
        published = max(published, verified_draft(folder).version)
    return draft, published


def replace_keys(
    folder: AdminFolder,
    identity: PublicIdentity,
    *,
    reason: str,
    at: int | None = None,
    overlap_seconds: int = DEFAULT_LIMITS.rotation_overlap_seconds,
    now: int | None = None,
) -> Directory:
    """Rotation and revocation in one directory change (docs/RUNBOOK.md, "Revoke a key"):
    every signing and encryption key of the agency not yet revoked is revoked from `at`
    (default now) and the keys of `identity` — made by `nrm keys rotate` at the agency — are
    admitted, active from now, with its NATS key. Agents that hold the new keys switch to them
    when they see this directory, so no moment exists at which the agency has no usable key.
    The old encryption keys still open mail already sealed to them for `overlap_seconds`
    (nobody seals to a revoked key); the old signing keys are refused from `at`."""
    now = clock.now() if now is None else now
    at = now if at is None else at
    if identity.nats_key is None:
        raise AdminError("the identity file has no NATS key; re-create it with `nrm keys init`")
    directory, published = _draft_and_published(folder)
    if identity.agency not in directory:
        raise AdminError(f"{identity.agency} is not in the directory; admit it without revoking")
    _refuse_shared_nats_key(directory, identity)
    current = directory.agency(identity.agency)
    held = {k.kid for k in (*current.signing_keys, *current.encryption_keys)}
    if identity.signing_kid in held or identity.encryption_kid in held:
        raise AdminError(
            f"{identity.agency}'s identity file holds keys the directory already lists; run "
            "`nrm keys rotate` at the agency first and use the new identity.json"
        )
    directory = directory.rotate(
        identity.agency,
        signing=(identity.signing_kid, bytes(identity.signing_key)),
        encryption=(identity.encryption_kid, bytes(identity.encryption_key)),
        now=now,
        overlap_seconds=overlap_seconds,
    )
    for old in current.signing_keys + current.encryption_keys:
        if old.status != "revoked":
            directory = directory.revoke(identity.agency, old.kid, at=at, reason=reason)
    entry = directory.agency(identity.agency)
    directory = directory.with_agency(dataclasses.replace(entry, nats_key=identity.nats_key))
    return _save_next(folder, directory, published=published, now=now)


def revocation_leaves_no_key(folder: AdminFolder, agency: str, kid: str) -> str | None:
    """If revoking `kid` would leave `agency` with no usable signing or encryption key in the
    draft, say so (the warning `nrm keys revoke` prints); else None."""
    from keys.standing import standing_of

    directory = folder.draft()
    if agency not in directory:
        return None
    entry = directory.agency(agency)
    now = clock.now()
    others = [k for k in (*entry.signing_keys, *entry.encryption_keys) if k.kid != kid]
    standing = standing_of(
        directory,
        agency,
        signing_kids={k.kid for k in others},
        encryption_kids={k.kid for k in others},
        at=now,
        skew=DEFAULT_LIMITS.clock_skew_seconds,
    )
    if standing.ok:
        return None
    return (
        f"revoking {kid} leaves {agency} with no usable key: its agent will refuse new "
        "referrals and fail what is waiting in its outbox until it has new keys. Unless the "
        "agency's machine is lost, have it run `nrm keys rotate` first and use "
        "`nrm directory add-agency NEW-identity.json --revoke-previous --reason ...` instead: "
        "one change that revokes the old keys and admits the new ones"
    )


def _refuse_shared_nats_key(directory: Directory, identity: PublicIdentity) -> None:
    """Each agency logs in to the bus with its own NKey (PROTOCOL.md §7.3)."""
    shared = [a.agency for a in directory.agencies if a.nats_key == identity.nats_key]
    if shared and shared != [identity.agency]:
        raise AdminError(f"the NATS key of {identity.agency} is already the key of {shared[0]}")
