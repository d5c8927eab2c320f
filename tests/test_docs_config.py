"""docs/CONFIG.md lists exactly the keys each configuration loader reads.

The accepted keys come from the loaders themselves: each is run on a configuration that
holds every table (and takes every branch), and every key any of its tables was asked for is
collected (`runtime.config.Table` remembers them: a key asked for is one the file may hold;
every other key is refused). `[limits]` and `[retention]` accept their dataclass's fields,
and an administrator folder's settings.toml its `SETTINGS_KEYS`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import pytest

import agents.config
import broker.ledger
import runtime.config
from agents.config import AgentConfig
from agents.retention import RetentionSchedule
from broker.cluster import ClusterSpec
from broker.external import AuthorityConfig
from broker.ledger import LedgerConfig
from keys import Limits
from keys.identity import AgencyKeys
from nrm.admin import SETTINGS_KEYS
from runtime.config import Table

from .support import Pki

DOC = (Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md").read_text(encoding="utf-8")
HEX = "ab" * 32
#: A user's public NKey (authority.toml's lists of them).
NKEY = "U" + "A" * 55


class Recording(Table):
    """A Table that keeps every instance made, so the keys read can be collected."""

    made: ClassVar[list[Table]] = []

    def __init__(self, doc: dict[str, Any], *, where: str = "") -> None:
        super().__init__(doc, where=where)
        Recording.made.append(self)


def keys_read(monkeypatch: pytest.MonkeyPatch, load: Callable[[], object]) -> set[str]:
    """Every dotted key the loader asked any of its tables for, table names left out."""
    Recording.made = []
    for module in (runtime.config, agents.config, broker.ledger):
        monkeypatch.setattr(module, "Table", Recording)
    load()
    monkeypatch.undo()
    read = {t.where + k for t in Recording.made for k in t._read}
    return {k for k in read if not any(other.startswith(k + ".") for other in read)}


def documented(section: str) -> set[str]:
    """The keys in the tables of the `## <section>` part of docs/CONFIG.md."""
    found = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", DOC, flags=re.S | re.M)
    assert found is not None, f"no section {section!r}"
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", found.group(1), flags=re.M))


def assert_documented(section: str, read: set[str]) -> None:
    """The keys the loader reads are the ones the section documents."""
    listed = documented(section)
    assert not read - listed, f"{section}: read but not documented: {sorted(read - listed)}"
    assert not listed - read, f"{section}: documented but not read: {sorted(listed - read)}"


def toml_keys(doc: dict[str, Any], where: str = "") -> Iterator[str]:
    for key, value in doc.items():
        items = value if isinstance(value, list) else [value]
        tables = [v for v in items if isinstance(v, dict)]
        if tables:
            for t in tables:
                yield from toml_keys(t, f"{where}{key}.")
        else:
            yield where + key


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every file a complete configuration names, real where it is read."""
    folder = tmp_path_factory.mktemp("config")
    pki = Pki(folder)
    cert, key = pki.issue("server", "127.0.0.1")
    (folder / "server.pem").write_bytes(cert.read_bytes())
    (folder / "server.key").write_bytes(key.read_bytes())
    (folder / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    (folder / "secret").write_text("s" * 32)
    (folder / "token").write_text("t" * 32)
    public = AgencyKeys.generate(agency="national", name="Ledger").public
    (folder / "identity.json").write_text(public.to_json())
    return folder


TLS = {"ca_file": "ca.pem", "cert_file": "server.pem", "key_file": "server.key"}
NATS_TLS = {**TLS, "server_name": "nats.test"}


def agent_doc() -> dict[str, Any]:
    return {
        "agency": "police",
        "key_dir": "keys",
        "nats_urls": ["tls://127.0.0.1:4222"],
        "nats_tls": NATS_TLS,
        "database": "agent.db",
        "trust_root": "root.json",
        "api": {
            "bind": "127.0.0.1:0",
            "tls_cert": "server.pem",
            "tls_key": "server.key",
            "clients": [{"name": "cms", "token_sha256": HEX, "scopes": ["read"]}],
        },
        "ledger": {
            "url": "https://127.0.0.1:8090",
            "ca_file": "ca.pem",
            "name": "national",
            "identity": "identity.json",
            "token_file": "token",
        },
        "webhooks": [
            {"url": "https://127.0.0.1:9000/e", "secret_file": "secret", "ca_file": "ca.pem"}
        ],
        "retention": {"history_days": 10},
        "limits": {"ack_wait_seconds": 10},
    }


def write_toml(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_agent_toml(monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    """Every key agent.toml's loader reads is documented, and no other."""
    read = keys_read(monkeypatch, lambda: AgentConfig.from_dict(agent_doc(), base=files))
    read |= {f"limits.{f.name}" for f in fields(Limits)}
    read |= {f"retention.{f.name}" for f in fields(RetentionSchedule)}
    assert "api.clients.scopes" in read and "webhooks.secret_file" in read
    assert_documented("agent.toml", read)


def test_ledger_toml(monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    """Every key ledger.toml's loader reads is documented, and no other."""
    path = write_toml(
        files / "ledger.toml",
        [
            'name = "national"',
            'key_dir = "keys"',
            'nats_urls = "tls://127.0.0.1:4222"',
            'trust_root = "root.json"',
            'database = "ledger.db"',
            'bind = "127.0.0.1:0"',
            'tls_cert = "server.pem"',
            'tls_key = "server.key"',
            "[nats_tls]",
            *(f'{k} = "{v}"' for k, v in NATS_TLS.items()),
            "[[tokens]]",
            f'token_sha256 = "{HEX}"',
            'scope = "agency:police"',
            "[[auditors]]",
            f'token_sha256 = "{"cd" * 32}"',
        ],
    )
    read = keys_read(monkeypatch, lambda: LedgerConfig.load(path))
    assert "tokens.scope" in read and "auditors.scope" not in read
    assert_documented("ledger.toml", read)


def test_authority_toml(monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    """Every key authority.toml's loader reads is documented, and no other."""
    path = write_toml(
        files / "authority.toml",
        [
            'node_name = "nrm-1"',
            'nats_urls = "tls://127.0.0.1:4222"',
            'authorization_file = "auth.conf"',
            'pid_file = "nats.pid"',
            'monitor_url = "http://127.0.0.1:8222"',
            'trust_root = "root.json"',
            'key_dir = "keys"',
            'passphrase_file = "passphrase"',
            f'operator_nkeys = ["{NKEY}"]',
            "ledger_nkeys = []",
            f'authority_nkeys = ["{NKEY}"]',
            "[nats_tls]",
            *(f'{k} = "{v}"' for k, v in NATS_TLS.items()),
        ],
    )
    read = keys_read(monkeypatch, lambda: AuthorityConfig.load(path))
    assert_documented("authority.toml", read)


def test_cluster_toml(monkeypatch: pytest.MonkeyPatch, files: Path) -> None:
    """Every key of the cluster spec its loader reads is documented, and no other."""
    node = [
        'host = "nats-{n}.test"',
        'client = "0.0.0.0:4222"',
        'route = "0.0.0.0:6222"',
        'store_dir = "/var/lib/nrm/{n}"',
    ]
    tls = [
        'cert_file = "/etc/tls/c.pem"',
        'key_file = "/etc/tls/c.key"',
        'ca_file = "/etc/tls/ca.pem"',
        "verify = true",
    ]
    path = write_toml(
        files / "cluster.toml",
        [
            "[trust]",
            'roots = ["root.1.json"]',
            'directory = "directory.json"',
            'operator_identity = "operator.json"',
            'ledger_identity = "ledger.json"',
            'authority_identities = ["authority-1.json", "authority-2.json"]',
            "[client_tls]",
            *tls,
            "[route_tls]",
            *tls,
            "[authority]",
            'trust_root = "/etc/nrm/root.json"',
            'key_dir = "/etc/nrm/authority"',
            'passphrase_file = "/etc/nrm/passphrase"',
            "[authority.nats_tls]",
            'ca_file = "/etc/tls/ca.pem"',
            'cert_file = "/etc/tls/a.pem"',
            'key_file = "/etc/tls/a.key"',
            *(
                line
                for n in (1, 2, 3)
                for line in ["[[nodes]]", f'name = "n{n}"', *(x.format(n=n) for x in node)]
            ),
        ],
    )
    read = keys_read(monkeypatch, lambda: ClusterSpec.load(path))
    assert_documented("cluster.toml", read)


def test_admin_settings_toml() -> None:
    """An administrator folder's settings.toml: its declared keys, documented."""
    assert documented("An administrator folder's settings.toml") == set(SETTINGS_KEYS)


@pytest.mark.parametrize("section", ["agent.toml", "ledger.toml", "authority.toml"])
def test_the_examples_use_only_documented_keys(section: str) -> None:
    """Each file's TOML example in docs/CONFIG.md parses and holds documented keys only."""
    found = re.search(rf"^## {re.escape(section)}\n.*?^```toml\n(.*?)^```$", DOC, flags=re.S | re.M)
    assert found is not None
    example = set(toml_keys(tomllib.loads(found.group(1))))
    assert example <= documented(section)


def test_the_readme_agent_toml_uses_only_documented_keys() -> None:
    """The agent.toml README shows holds keys docs/CONFIG.md documents."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```$", readme, flags=re.S | re.M)
    assert blocks
    for block in blocks:
        assert set(toml_keys(tomllib.loads(block))) <= documented("agent.toml")
