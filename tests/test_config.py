"""Strict configuration loading (runtime/config.py) as the agent and the ledger use it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agents.config import AgentConfig
from broker.ledger import LedgerConfig, LedgerConfigError
from keys.catalogue import MAX_CAPACITY_LIFETIME, MAX_SERVICES
from keys.limits import MAX_CAPACITY_LIFETIME_SECONDS, MAX_CATALOGUE_SERVICES
from runtime.config import ConfigError, Table, bind_address, days

from .support import Pki

TOKEN = "ab" * 32


def agent_doc(**extra: Any) -> dict[str, Any]:
    return {
        "agency": "police",
        "name": "Police",
        "key_dir": "keys",
        "nats_urls": ["nats://127.0.0.1:4222"],
        "database": "agent.db",
        "trust_root": "root.json",
        "api": {
            "bind": "127.0.0.1:0",
            "clients": [{"name": "cms", "token_sha256": TOKEN, "scopes": ["read"]}],
        },
        **extra,
    }


def test_a_complete_agent_configuration_loads_with_paths_beside_it(tmp_path: Path) -> None:
    """Relative paths are relative to the file; the informative `name` is accepted."""
    config = AgentConfig.from_dict(agent_doc(), base=tmp_path)
    assert config.database == tmp_path / "agent.db"
    assert (config.api_host, config.api_port) == ("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        (agent_doc(databse="x.db"), "'databse'"),
        (agent_doc(api={"bind": "127.0.0.1:0", "bnd": 1}), "api.'bnd'"),
        (
            agent_doc(
                api={
                    "bind": "127.0.0.1:0",
                    "clients": [{"name": "c", "token_sha256": TOKEN, "scopes": ["read"], "x": 1}],
                }
            ),
            "api.clients.'x'",
        ),
    ],
    ids=["top level", "nested table", "table in an array"],
)
def test_a_setting_nothing_reads_is_refused_by_name(
    tmp_path: Path, doc: dict[str, Any], named: str
) -> None:
    """A typo is not silently ignored: the error names the setting and its table."""
    with pytest.raises(ConfigError, match=f"unknown setting {named}"):
        AgentConfig.from_dict(doc, base=tmp_path)


def test_two_clients_of_one_name_are_refused(tmp_path: Path) -> None:
    """Access records tell API clients apart by name: a name given twice is refused."""
    other = "0" * 64
    clients = [
        {"name": "cms", "token_sha256": TOKEN, "scopes": ["read"]},
        {"name": "cms", "token_sha256": other, "scopes": ["submit"]},
    ]
    doc = agent_doc(api={"bind": "127.0.0.1:0", "clients": clients})
    with pytest.raises(
        ConfigError, match=r"api.clients\[0\] and api.clients\[1\] have the same name"
    ):
        AgentConfig.from_dict(doc, base=tmp_path)


def test_access_records_wait_at_most_an_hour(tmp_path: Path) -> None:
    """A coalescing window past an hour would hide reads from their owner that long."""
    ok = AgentConfig.from_dict(agent_doc(limits={"access_coalesce_seconds": 3600}), base=tmp_path)
    assert ok.limits.access_coalesce_seconds == 3600
    with pytest.raises(ConfigError, match="access_coalesce_seconds is at most 3600"):
        AgentConfig.from_dict(agent_doc(limits={"access_coalesce_seconds": 3601}), base=tmp_path)


def test_capacity_records_live_at_most_an_hour(tmp_path: Path) -> None:
    """A capacity record may not outlive an hour (PROTOCOL §8.8): nor may the agent's limit."""
    assert MAX_CAPACITY_LIFETIME_SECONDS == MAX_CAPACITY_LIFETIME
    doc = agent_doc(limits={"capacity_lifetime_seconds": 3600})
    assert AgentConfig.from_dict(doc, base=tmp_path).limits.capacity_lifetime_seconds == 3600
    with pytest.raises(ConfigError, match="capacity_lifetime_seconds is at most 3600"):
        AgentConfig.from_dict(agent_doc(limits={"capacity_lifetime_seconds": 3601}), base=tmp_path)


def test_a_catalogue_lists_no_more_services_than_the_format_allows(tmp_path: Path) -> None:
    """The agent's bound on a catalogue's services may be lower than the format's 64, never
    higher (PROTOCOL §8.8)."""
    assert MAX_CATALOGUE_SERVICES == MAX_SERVICES
    doc = agent_doc(limits={"max_catalogue_services": 8})
    assert AgentConfig.from_dict(doc, base=tmp_path).limits.max_catalogue_services == 8
    with pytest.raises(ConfigError, match="max_catalogue_services is at most 64"):
        AgentConfig.from_dict(agent_doc(limits={"max_catalogue_services": 65}), base=tmp_path)


def test_the_ledger_configuration_is_strict_too(tmp_path: Path) -> None:
    """ledger.toml with an unknown setting is refused with LedgerConfigError naming it."""
    path = tmp_path / "ledger.toml"
    lines = [*LEDGER_LINES, f'[[auditors]]\nname = "court"\ntoken_sha256 = "{TOKEN}"']
    path.write_text("\n".join(lines) + "\n")
    config = LedgerConfig.load(path)
    assert config.port == 8090 and config.auditor_tokens == (bytes.fromhex(TOKEN),)
    path.write_text("\n".join(["checkpoint_intervall_seconds = 1", *lines]) + "\n")
    with pytest.raises(LedgerConfigError, match="checkpoint_intervall_seconds"):
        LedgerConfig.load(path)
    # The setting of earlier releases: refused, naming what replaces it.
    path.write_text("\n".join(['operator_key_dir = "operator"', *lines]) + "\n")
    with pytest.raises(LedgerConfigError, match=r"operator_key_dir is no longer read.*own key_dir"):
        LedgerConfig.load(path)
    assert config.origin == "national/nrm-ledger"
    for bad in ("National", "national ledger", "nrm/national"):  # not a DNS-like name (§9.3)
        path.write_text("\n".join([f'name = "{bad}"', *lines[1:]]) + "\n")
        with pytest.raises(LedgerConfigError, match="DNS-like"):
            LedgerConfig.load(path)


def test_values_are_checked_in_one_place() -> None:
    """host:port and days refuse what they cannot mean."""
    assert bind_address(":8080", key="bind") == ("127.0.0.1", 8080)
    for bad in ("127.0.0.1", "h:port", "h:70000"):
        with pytest.raises(ConfigError, match="bind"):
            bind_address(bad, key="bind")
    assert days(1.5, key="d") == 129600
    for wrong in (-1, True, "7"):
        with pytest.raises(ConfigError, match="non-negative number of days"):
            days(wrong, key="d")


def test_a_table_counts_only_what_was_read() -> None:
    """Reading by [], get, `in` or iteration marks keys; `allow` accepts one unread."""
    table = Table({"a": 1, "b": {"c": 2}, "d": 3})
    assert table["a"] == 1 and "d" in table
    with pytest.raises(ConfigError, match="unknown setting 'b'"):
        table.finish()
    assert table.get("b")["c"] == 2
    table.finish()
    table2 = Table({"note": "x"})
    table2.allow("note")
    table2.finish()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a certificate for 127.0.0.1 with its key (trustme)."""
    pki = Pki(tmp_path_factory.mktemp("tls"))
    cert, key = pki.issue("c", "127.0.0.1")
    files = {"ca": pki.ca_file, "cert": cert, "key": key}
    return files


def test_the_agent_reads_its_bus_tls_and_api_https_settings(
    tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """`nats_urls` in any form with `[nats_tls]`, `[api] tls_cert`/`tls_key` and an https
    `[ledger]`-free configuration load into the endpoint and the API's HTTPS files."""
    api = {"bind": "127.0.0.1:0", "tls_cert": str(tls_files["cert"]), "tls_key": "c.key"}
    doc = agent_doc(
        nats_urls="tls://a:4222, b",
        nats_tls={"ca_file": str(tls_files["ca"]), "server_name": "nats.test"},
        api=api,
    )
    config = AgentConfig.from_dict(doc, base=tls_files["key"].parent)
    assert config.bus.urls == ("tls://a:4222", "nats://b:4222")
    assert config.bus.tls is not None and config.bus.tls.server_name == "nats.test"
    assert config.api_tls is not None and config.api_tls.key_file == tls_files["key"]
    assert AgentConfig.from_dict(agent_doc(), base=tmp_path).api_tls is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"nats_url": "nats://a:4222"}, "nats_url is no longer read: give nats_urls"),
        ({"nats_tls": {"ca_file": "missing.pem"}}, "nats_tls: cannot load the bus TLS files"),
        ({"nats_tls": {"cert_file": "c.pem"}}, r"nats_tls: a client certificate needs its key"),
        ({"api": {"bind": "127.0.0.1:0", "tls_cert": "c.pem"}}, "api.tls_cert and api.tls_key"),
        ({"api": {"bind": "127.0.0.1:0", "tls_cert": "c.pem", "tls_key": "ca.pem"}}, "api.tls"),
    ],
    ids=["single nats_url", "CA file missing", "cert without key", "cert only", "not a key"],
)
def test_wrong_tls_settings_are_a_config_error_naming_them(
    tls_files: dict[str, Path], change: dict[str, Any], named: str
) -> None:
    """A TLS setting that cannot work is refused when the file is loaded, naming it."""
    doc = agent_doc(**change)
    if "nats_url" in change:
        del doc["nats_urls"]
    with pytest.raises(ConfigError, match=named):
        AgentConfig.from_dict(doc, base=tls_files["ca"].parent)


def test_the_ledger_reads_bus_tls_and_serves_https_with_both_files(
    tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    """ledger.toml: `[nats_tls]` into its endpoint; `tls_cert` without `tls_key` refused."""
    path = tmp_path / "ledger.toml"
    lines = [
        'name = "national"',
        'key_dir = "keys"',
        'nats_urls = "tls://n1:4222,tls://n2:4222"',
        'trust_root = "root.json"',
        'database = "ledger.db"',
        'bind = "0.0.0.0:8090"',
        f'tls_cert = "{tls_files["cert"]}"',
    ]
    nats_tls = ["[nats_tls]", f'ca_file = "{tls_files["ca"]}"']
    path.write_text("\n".join([*lines, f'tls_key = "{tls_files["key"]}"', *nats_tls]) + "\n")
    config = LedgerConfig.load(path)
    assert config.bus.urls == ("tls://n1:4222", "tls://n2:4222")
    assert config.bus.tls is not None and config.bus.tls.ca_file == tls_files["ca"]
    assert config.tls is not None and config.tls.cert_file == tls_files["cert"]
    path.write_text("\n".join([*lines, *nats_tls]) + "\n")
    with pytest.raises(LedgerConfigError, match="tls_cert and tls_key go together"):
        LedgerConfig.load(path)


def test_read_config_names_the_file_for_a_missing_a_malformed_and_an_unread_setting(
    tmp_path: Path,
) -> None:
    """One strict reader for every service file: each failure is a ConfigError naming the
    file; a good file gives what `read` made of it."""
    from runtime.config import read_config

    def read(table: Table, base: Path) -> tuple[str, Path]:
        return str(table["name"]), base / str(table.get("store", "s"))

    path = tmp_path / "x.toml"
    for text, says in (
        ("", "missing setting 'name'"),
        ("name = 'a'\nextra = 1\n", "unknown setting 'extra'"),
        ("name = 'a'\nstore = 'b\n", "not valid TOML"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(str(path))) as e:
            read_config(path, read)
        assert says in str(e.value)
    path.write_text("name = 'a'\nstore = 'b'\n")
    assert read_config(path, read) == ("a", tmp_path / "b")


LEDGER_LINES = [
    'name = "national"',
    'key_dir = "keys"',
    'nats_urls = ["nats://127.0.0.1:4222"]',
    'trust_root = "root.json"',
    'database = "ledger.db"',
    'bind = "127.0.0.1:8090"',
]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('tokens = "x"', r"tokens must be an array of tables"),
        ("auditors = [1, 2]", r"auditors must be an array of tables"),
        ('[tokens]\nname = "a"', r"tokens must be an array of tables"),
        ('nats_tls = "x"', r"nats_tls"),
    ],
    ids=["tokens a string", "auditors a list of numbers", "tokens a table", "nats_tls a string"],
)
def test_a_ledger_table_of_the_wrong_shape_is_a_config_error_naming_it(
    tmp_path: Path, extra: str, named: str
) -> None:
    """No AttributeError: a setting of the wrong shape is named, with the file."""
    path = tmp_path / "ledger.toml"
    path.write_text("\n".join([*LEDGER_LINES, extra]) + "\n")
    with pytest.raises(LedgerConfigError, match=named):
        LedgerConfig.load(path)


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        (agent_doc(api="127.0.0.1:0"), r"api must be a table"),
        (agent_doc(api={"bind": "127.0.0.1:0", "clients": "x"}), r"api\.clients must be an"),
        (agent_doc(api={"bind": "127.0.0.1:0", "clients": {"name": "c"}}), r"api\.clients"),
        (agent_doc(limits=[1]), r"limits must be a table"),
        (agent_doc(retention="x"), r"retention must be a table"),
        (agent_doc(ledger="x"), r"ledger must be a table"),
        (agent_doc(webhooks={"url": "x"}), r"webhooks must be an array of tables"),
    ],
    ids=["api", "clients a string", "clients a table", "limits", "retention", "ledger", "hooks"],
)
def test_an_agent_table_of_the_wrong_shape_is_a_config_error_naming_it(
    tmp_path: Path, doc: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        AgentConfig.from_dict(doc, base=tmp_path)


def test_the_same_token_twice_is_refused_naming_both_entries(tmp_path: Path) -> None:
    """One token, one scope: a digest under two ledger entries (or two agent clients) is
    refused at load, both entries named, the digest never shown."""
    path = tmp_path / "ledger.toml"
    twice = [
        f'[[auditors]]\nname = "court"\ntoken_sha256 = "{TOKEN}"',
        f'[[tokens]]\nname = "police"\ntoken_sha256 = "{TOKEN}"\nscope = "agency:police"',
    ]
    path.write_text("\n".join([*LEDGER_LINES, *twice]) + "\n")
    with pytest.raises(LedgerConfigError) as refused:
        LedgerConfig.load(path)
    assert "auditors[0] ('court')" in str(refused.value)
    assert "tokens[0] ('police')" in str(refused.value)
    assert TOKEN not in str(refused.value)
    client = {"token_sha256": TOKEN, "scopes": ["read"]}
    doc = agent_doc(
        api={
            "bind": "127.0.0.1:0",
            "clients": [{"name": "a", **client}, {"name": "b", **client, "scopes": ["submit"]}],
        }
    )
    with pytest.raises(ConfigError, match=r"api\.clients\[0\] \('a'\) and api\.clients\[1\]"):
        AgentConfig.from_dict(doc, base=tmp_path)
