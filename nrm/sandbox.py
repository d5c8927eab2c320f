"""A whole local mechanism in one folder: keys, passphrase files, tokens and agent configs.

Used by `nrm demo` and by the tests, so both set agencies up the way an operator would:
`nrm keys init`, then a TOML configuration per agent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.config import token_digest
from keys.keyfile import INTERACTIVE, KdfCost, init_key_dir, write_new_file


@dataclass(frozen=True, slots=True)
class AgencySetup:
    agency: str
    name: str
    home: Path
    config_path: Path
    token: str

    @property
    def identity_path(self) -> Path:
        return self.home / "keys" / "identity.json"


def prepare_mechanism(
    root: Path,
    agencies: Sequence[tuple[str, str]],
    *,
    nats_urls: Sequence[str],
    cost: KdfCost = INTERACTIVE,
    limits: dict[str, int | float] | None = None,
) -> dict[str, AgencySetup]:
    """Create keys and a configuration for each `(agency id, display name)` under `root`.

    Each agency lists every other one as a peer. Demo and test keys use the cheaper
    INTERACTIVE key-file cost; real deployments use `nrm keys init` and its default.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    homes = {}
    for agency, name in agencies:
        home = root / agency
        home.mkdir(mode=0o700)
        passphrase = secrets.token_urlsafe(24)
        write_new_file(home / "passphrase", passphrase.encode())
        init_key_dir(
            home / "keys", agency=agency, name=name, passphrase=passphrase.encode(), cost=cost
        )
        homes[agency] = (name, home)
    setups = {}
    for agency, (name, home) in homes.items():
        token = secrets.token_urlsafe(32)
        peers = [other for other in homes if other != agency]
        config = "\n".join(
            [
                f"agency = {json.dumps(agency)}",
                'key_dir = "keys"',
                'passphrase_file = "passphrase"',
                f"nats_urls = {json.dumps(list(nats_urls))}",
                'database = "agent.db"',
                "",
                "[api]",
                'bind = "127.0.0.1:0"',
                "[[api.clients]]",
                'name = "case-management"',
                f'token_sha256 = "{token_digest(token)}"',
                "",
                *[f'[[peers]]\nidentity = "../{peer}/keys/identity.json"' for peer in peers],
                "",
                "[limits]",
                *[f"{k} = {v!r}" for k, v in (limits or {}).items()],
                "",
            ]
        )
        config_path = home / "agent.toml"
        write_new_file(config_path, config.encode())
        setups[agency] = AgencySetup(agency, name, home, config_path, token)
    return setups
