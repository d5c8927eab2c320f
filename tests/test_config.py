"""Strict configuration loading (runtime/config.py) as the agent and the ledger use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.config import AgentConfig
from broker.ledger import LedgerConfig, LedgerConfigError
from runtime.config import ConfigError, Table, bind_address, days

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


def test_the_ledger_configuration_is_strict_too(tmp_path: Path) -> None:
    """ledger.toml with an unknown setting is refused with LedgerConfigError naming it."""
    path = tmp_path / "ledger.toml"
    lines = [
        'name = "national"',
        'key_dir = "keys"',
        'operator_key_dir = "operator"',
        'nats_urls = ["nats://127.0.0.1:4222"]',
        'trust_root = "root.json"',
        'database = "ledger.db"',
        'bind = "127.0.0.1:8090"',
        f'[[auditors]]\nname = "court"\ntoken_sha256 = "{TOKEN}"',
    ]
    path.write_text("\n".join(lines) + "\n")
    config = LedgerConfig.load(path)
    assert config.port == 8090 and config.auditor_tokens == (bytes.fromhex(TOKEN),)
    path.write_text("\n".join(["checkpoint_intervall_seconds = 1", *lines]) + "\n")
    with pytest.raises(LedgerConfigError, match="checkpoint_intervall_seconds"):
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
