"""`nrm agent config` / `nrm ledger config` (nrm/configs.py, runtime/tomlfile.py): what they
write loads with the services' own strict loaders, holds only what was asked for, and never
replaces an existing file."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agents.config import AgentConfig, ConfigError, token_digest
from broker.ledger import LedgerConfig, LedgerConfigError
from keys import AgencyKeys
from nrm.cli import main
from runtime.config import Table
from runtime.endpoint import BusEndpoint, BusTls, endpoint_from_config
from runtime.tls import PlainHttpError
from runtime.tomlfile import dumps

from .support import Pki

LEDGER = [
    "--ledger-url=http://ledger.example:8090",
    "--ledger-name=national",
    "--ledger-identity=ledger-identity.json",
    "--ledger-token-file=ledger.token",
]


def nrm(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """What an agent's files name, beside its agent.toml: the ledger's identity and token,
    a webhook secret."""
    identity = AgencyKeys.generate(agency="ledger", name="Audit ledger").public
    (tmp_path / "ledger-identity.json").write_text(identity.to_json())
    (tmp_path / "ledger.token").write_text("auditor-token-" + "x" * 20)
    (tmp_path / "webhook.secret").write_text("s" * 32)
    return tmp_path


def test_toml_writer_round_trips_through_tomllib() -> None:
    """Tables, arrays of tables, quoting and escapes read back as written; None is left out."""
    doc: dict[str, Any] = {
        "name": 'a "quoted" \\ value\nwith ünïcode, a tab\t, NUL \x00 and DEL \x7f',
        "n": 3,
        "f": 0.5,
        "on": True,
        "list": ["x", "y"],
        "skipped": None,
        "table": {"k": 1, "inner": {"deep": "yes"}, "rows": [{"a": 1}, {"a": 2}]},
        "odd key": "quoted",
        "items": [{"url": "http://h", "secret_file": "s"}],
    }
    back = tomllib.loads(dumps(doc, header="two\nlines"))
    expected = {k: v for k, v in doc.items() if v is not None}
    assert back == expected


@given(st.text())
def test_any_string_round_trips_through_tomllib(text: str) -> None:
    """As a value and as a key: characters beyond the BMP are written raw (TOML forbids the
    surrogate pairs JSON would escape them as), controls and DEL escaped."""
    doc = {"name": text, "table": {text: [text]}}
    assert tomllib.loads(dumps(doc)) == doc


def test_a_name_beyond_the_bmp_loads() -> None:
    assert tomllib.loads(dumps({"name": "Agency \U0001f693"})) == {"name": "Agency \U0001f693"}


def test_agent_config_loads_with_the_agents_own_loader(folder: Path) -> None:
    """Every option lands where AgentConfig reads it; the client token is kept beside the
    file and only its SHA-256 is in it; the file is 0600."""
    out = folder / "agent.toml"
    result = nrm(
        "agent", "config", "--out", str(out), "--agency", "police", "--name", "Police",
        "--nats", "nats://bus-1:4222,bus-2", "--nats", "bus-3:4333",
        "--key-dir", "/etc/nrm/keys", "--passphrase-file", "/run/credentials/x/passphrase",
        "--database", "/var/lib/nrm/police/agent.db", "--api-bind", "192.0.2.10:8081",
        "--trust-root", "root.1.json", "--trust-cache", "/var/lib/nrm/police/trust",
        "--client", "case-management:submit,read,act", "--client", "dashboard:read",
        *LEDGER, "--webhook", "http://cms:9000/events", "--webhook-secret-file", "webhook.secret",
        "--allow-plain-http",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "allow_plain_http = true" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = AgentConfig.load(out)
    assert config.agency == "police"
    assert config.bus.urls == ("nats://bus-1:4222", "nats://bus-2:4222", "nats://bus-3:4333")
    assert config.key_dir == Path("/etc/nrm/keys")
    assert config.passphrase_file == Path("/run/credentials/x/passphrase")
    assert config.database == Path("/var/lib/nrm/police/agent.db")
    assert (config.api_host, config.api_port) == ("192.0.2.10", 8081)
    assert config.trust_root == folder / "root.1.json"
    cms = (folder / "case-management.token").read_text()
    assert stat.S_IMODE((folder / "case-management.token").stat().st_mode) == 0o600
    assert cms not in out.read_text()
    assert [(c.name, c.token_sha256.hex(), sorted(c.scopes)) for c in config.clients] == [
        ("case-management", token_digest(cms), ["act", "read", "submit"]),
        ("dashboard", token_digest((folder / "dashboard.token").read_text()), ["read"]),
    ]
    assert config.ledger is not None
    assert (config.ledger.url, config.ledger.name) == ("http://ledger.example:8090", "national")
    assert config.ledger.token == (folder / "ledger.token").read_text()
    assert [w.url for w in config.webhooks] == ["http://cms:9000/events"]
    assert "nats_tls" not in out.read_text() and "tls_" not in out.read_text()


def test_a_token_file_already_there_is_used_not_replaced(folder: Path) -> None:
    """An operator may choose the token: an existing NAME.token is read, not replaced."""
    (folder / "cms.token").write_text("chosen-by-the-operator-0123456789")
    assert nrm(
        "agent", "config", "--out", str(folder / "agent.toml"), "--agency", "police",
        "--nats", "bus", "--client", "cms:read",
    ).exit_code == 0  # fmt: skip
    [client] = AgentConfig.from_dict(
        tomllib.loads((folder / "agent.toml").read_text()), base=folder
    ).clients
    assert client.token_sha256.hex() == token_digest("chosen-by-the-operator-0123456789")


def test_the_confirm_scope_is_granted_like_any_other(folder: Path) -> None:
    """A break-glass confirmer (PROTOCOL §8.2 step 2) gets its token and scopes from
    `--client NAME:confirm,read`, beside the case system that submits."""
    assert nrm(
        "agent", "config", "--out", str(folder / "agent.toml"), "--agency", "police",
        "--nats", "bus", "--client", "cms:submit,read", "--client", "duty-officer:confirm,read",
    ).exit_code == 0  # fmt: skip
    cms, officer = AgentConfig.from_dict(
        tomllib.loads((folder / "agent.toml").read_text()), base=folder
    ).clients
    assert (officer.name, officer.scopes) == ("duty-officer", frozenset({"confirm", "read"}))
    assert "confirm" not in cms.scopes
    token = (folder / "duty-officer.token").read_text()
    assert officer.token_sha256.hex() == token_digest(token)


def test_one_client_never_both_submits_and_confirms(folder: Path) -> None:
    """The two-person rule of break-glass holds only between two clients: one with both
    `submit` and `confirm` is refused at load (ConfigError naming it) and by `nrm agent
    config` (exit 2, no file written)."""
    assert nrm(
        "agent", "config", "--out", str(folder / "agent.toml"), "--agency", "police",
        "--nats", "bus", "--client", "cms:submit,read", "--client", "duty-officer:confirm,read",
    ).exit_code == 0  # fmt: skip
    doc = tomllib.loads((folder / "agent.toml").read_text())
    AgentConfig.from_dict(doc, base=folder)
    doc["api"]["clients"][1]["scopes"] = ["confirm", "read", "submit"]
    with pytest.raises(ConfigError, match="'duty-officer' has both the confirm and the submit"):
        AgentConfig.from_dict(doc, base=folder)
    result = nrm(
        "agent", "config", "--out", str(folder / "other.toml"), "--agency", "police",
        "--nats", "bus", "--client", "cms:submit,confirm,read",
    )  # fmt: skip
    assert result.exit_code == 2 and "both submit and confirm" in result.output, result.output
    assert not (folder / "other.toml").exists()


def test_an_existing_file_is_never_overwritten(folder: Path) -> None:
    """Exit 1 naming the file; the file and the folder are unchanged (no token made)."""
    out = folder / "agent.toml"
    out.write_text("# mine\n")
    before = sorted(p.name for p in folder.iterdir())
    result = nrm(
        "agent", "config", "--out", str(out), "--agency", "police", "--nats", "bus",
        "--client", "cms:read",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert out.read_text() == "# mine\n"
    assert sorted(p.name for p in folder.iterdir()) == before
    ledger = folder / "ledger.toml"
    ledger.write_text("# mine\n")
    result = nrm("ledger", "config", "--out", str(ledger), "--name", "national", "--nats", "b")
    assert result.exit_code == 1 and ledger.read_text() == "# mine\n"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--agency", "Police!"], "--agency"),
        (["--agency", "police", "--client", "cms:write"], "--client"),
        (["--agency", "police", "--client", "cms"], "--client"),
        (["--agency", "police", "--api-bind", "localhost"], "--api-bind"),
        (["--agency", "police", "--ledger-url", "http://l"], "--ledger-url"),
        (["--agency", "police", *LEDGER[:3]], "--ledger"),
        (["--agency", "police", "--http-tls-cert", "c.pem"], "--http-tls-cert"),
        (["--agency", "police", "--webhook", "http://cms"], "--webhook"),
        (["--agency", "police", "--nats", "nats://user:pw@bus"], "--nats"),
    ],
    ids=[
        "bad agency id", "unknown scope", "no scopes", "bind without port", "ledger url alone",
        "ledger without its token", "certificate without key", "webhook without secret",
        "credentials in the URL",
    ],
)  # fmt: skip
def test_agent_config_usage_errors_name_the_option(
    folder: Path, args: list[str], named: str
) -> None:
    """A malformed option is a usage error (exit 2) naming it; nothing is written."""
    nats = [] if any(a.startswith("--nats") for a in args) else ["--nats", "bus"]
    result = nrm("agent", "config", "--out", str(folder / "agent.toml"), *nats, *args)
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not (folder / "agent.toml").exists()


def test_ledger_config_loads_with_the_ledgers_own_loader(tmp_path: Path) -> None:
    """Auditor tokens beside the file, their SHA-256 in it; every option read back."""
    out = tmp_path / "ledger.toml"
    result = nrm(
        "ledger", "config", "--out", str(out), "--name", "national",
        "--key-dir", "/etc/nrm/ledger/keys",
        "--passphrase-file", "/run/credentials/nrm-ledger.service/passphrase",
        "--nats", "tls://bus-1:4222", "--nats", "tls://bus-2:4222",
        "--trust-root", "root.1.json", "--database", "/var/lib/nrm-ledger/ledger.db",
        "--bind", "192.0.2.10:8090", "--auditor", "court-of-audit", "--auditor", "ombudsman",
        "--agency-token", "shelter", "--metrics-token", "prometheus",
        "--rapporteur-token", "rapporteur",
        "--checkpoint-interval", "5", "--suppress-below", "10", "--expiry-warning-days", "14",
        "--allow-plain-http",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    config = LedgerConfig.load(out)
    assert config.name == "national"
    assert config.bus.urls == ("tls://bus-1:4222", "tls://bus-2:4222")
    assert config.key_dir == Path("/etc/nrm/ledger/keys")
    assert config.passphrase_file == Path("/run/credentials/nrm-ledger.service/passphrase")
    assert config.database == Path("/var/lib/nrm-ledger/ledger.db")
    assert (config.host, config.port) == ("192.0.2.10", 8090)
    assert config.auditor_tokens == tuple(
        bytes.fromhex(token_digest((tmp_path / f"{a}.token").read_text()))
        for a in ("court-of-audit", "ombudsman")
    )
    text = out.read_text()  # the current form, not the older [[auditors]]
    assert "[[auditors]]" not in text and text.count('scope = "auditor"') == 2, text
    scopes = {t.digest: t.scope for t in config.tokens}
    for name, scope in (
        ("shelter", "agency:shelter"),
        ("prometheus", "metrics"),
        ("rapporteur", "rapporteur"),
    ):
        digest = bytes.fromhex(token_digest((tmp_path / f"{name}.token").read_text()))
        assert scopes[digest] == scope
    assert sorted(scopes.values()).count("auditor") == 2
    # An unknown scope is refused with the setting named.
    text = out.read_text().replace('scope = "metrics"', 'scope = "everything"')
    out.write_text(text)
    with pytest.raises(LedgerConfigError, match=r"tokens\.scope"):
        LedgerConfig.load(out)
    assert (config.checkpoint_interval_seconds, config.suppress_below) == (5.0, 10)
    assert config.expiry_warning_seconds == 14 * 86400


def test_ledger_config_usage_errors(tmp_path: Path) -> None:
    """A name that is not DNS-like, a repeated auditor: exit 2, nothing written."""
    out = tmp_path / "ledger.toml"
    for args in (
        ["--name", "Not a name"],
        ["--name", "n", "--auditor", "a", "--auditor", "a"],
        ["--name", "n", "--auditor", "a", "--agency-token", "a"],
        ["--name", "n", "--agency-token", "Not-An-Id"],
    ):
        result = nrm("ledger", "config", "--out", str(out), "--nats", "bus", *args)
        assert result.exit_code == 2, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    pki = Pki(tmp_path)
    cert, key = pki.issue("c", "agent.example")
    files = {"ca": pki.ca_file, "cert": cert, "key": key}
    return files


def test_tls_settings_appear_only_when_given_and_read_back(
    folder: Path, pki: dict[str, Path]
) -> None:
    """--tls-* make `[nats_tls]` (read back by runtime.endpoint exactly), --http-tls-* make
    `[api] tls_cert`/`tls_key`, --ledger-ca `[ledger] ca_file`; the whole file loads."""
    out = folder / "agent.toml"
    result = nrm(
        "agent", "config", "--out", str(out), "--agency", "police",
        "--nats", "tls://10.0.0.1:4222,tls://10.0.0.2:4222", "--tls-ca", str(pki["ca"]),
        "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]),
        "--tls-server-name", "nats.example", "--http-tls-cert", str(pki["cert"]),
        "--http-tls-key", str(pki["key"]), *LEDGER[1:], "--ledger-url=https://ledger:8090",
        "--ledger-ca", str(pki["ca"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(out.read_text())
    assert endpoint_from_config(Table(doc), base=folder) == BusEndpoint(
        urls=("tls://10.0.0.1:4222", "tls://10.0.0.2:4222"),
        tls=BusTls(
            ca_file=pki["ca"],
            cert_file=pki["cert"],
            key_file=pki["key"],
            server_name="nats.example",
        ),
    )
    assert (doc["api"]["tls_cert"], doc["api"]["tls_key"]) == (str(pki["cert"]), str(pki["key"]))
    assert doc["ledger"]["ca_file"] == str(pki["ca"])
    config = AgentConfig.load(out)
    assert config.agency == "police"


def test_ledger_tls_settings_appear_only_when_given(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The ledger's top-level `tls_cert`/`tls_key` and its `[nats_tls]`; the file loads."""
    out = tmp_path / "ledger.toml"
    plain = tmp_path / "plain.toml"
    assert nrm("ledger", "config", "--out", str(plain), "--name", "n", "--nats", "b").exit_code == 0
    assert "tls" not in plain.read_text()
    result = nrm(
        "ledger", "config", "--out", str(out), "--name", "national", "--nats", "tls://bus",
        "--tls-ca", str(pki["ca"]), "--http-tls-cert", str(pki["cert"]),
        "--http-tls-key", str(pki["key"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = tomllib.loads(out.read_text())
    assert doc["nats_tls"] == {"ca_file": str(pki["ca"])}
    assert (doc["tls_cert"], doc["tls_key"]) == (str(pki["cert"]), str(pki["key"]))
    config = LedgerConfig.load(out)
    assert config.name == "national"


def agent_doc(folder: Path, **top: Any) -> dict[str, Any]:
    return {"agency": "police", "key_dir": "k", "database": "a.db", "nats_urls": "bus",
            "trust_root": "root.json", "api": {"bind": "127.0.0.1:8081"}, **top}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"api": {"bind": "0.0.0.0:8081"}}, "api.bind"),
        ({"api": {"bind": "[::]:8081"}}, "api.bind"),
        ({"ledger": {"url": "http://ledger.example:8090"}}, "ledger.url"),
        ({"ledger": {"url": "http://10.0.0.1:8090"}}, "ledger.url"),
        ({"api": {"bind": "127.0.0.5:8081"}}, None),
        ({"api": {"bind": "[::1]:8081"}}, None),
        ({"api": {"bind": "localhost:8081"}}, None),
        ({"ledger": {"url": "http://localhost:8090"}}, None),
        ({"ledger": {"url": "https://ledger.example:8090"}}, None),
        ({"ledger": {"url": "http://ledger.example"}, "allow_plain_http": True}, None),
        ({"api": {"bind": "0.0.0.0:8081"}, "allow_plain_http": True}, None),
    ],
)
def test_plain_http_beyond_loopback_is_refused_unless_allowed(
    folder: Path, change: dict[str, Any], refused: str | None
) -> None:
    """Bearer tokens in clear: an agent API bound beyond loopback without a certificate or
    an http:// ledger on another host is refused at load, naming the setting and
    allow_plain_http; loopback (127.0.0.0/8, ::1, localhost) and https always pass."""
    doc = agent_doc(folder, **change)
    if "ledger" in doc:
        doc["ledger"] = {**doc["ledger"], "name": "national", "identity": "ledger-identity.json",
                         "token_file": "ledger.token"}  # fmt: skip
    if refused is None:
        AgentConfig.from_dict(doc, base=folder)
        return
    with pytest.raises(PlainHttpError, match=rf"{refused}.*allow_plain_http = true"):
        AgentConfig.from_dict(doc, base=folder)


def test_the_ledger_the_generators_and_nrm_audit_refuse_plain_http_beyond_loopback(
    folder: Path,
) -> None:
    """ledger.toml binding 0.0.0.0 without tls_cert, `nrm ledger config`/`nrm agent config`
    that would write such a file, `nrm audit --ledger http://remote`: refused (exit 2 for
    the commands), each saying how to allow it."""
    ledger = folder / "ledger.toml"
    ledger.write_text(dumps({"name": "national", "key_dir": "k",
                             "nats_urls": "bus", "trust_root": "r", "database": "l.db",
                             "bind": "0.0.0.0:8090"}))  # fmt: skip
    with pytest.raises(LedgerConfigError, match=r"bind without tls_cert.*allow_plain_http"):
        LedgerConfig.load(ledger)
    ledger.write_text(ledger.read_text() + "allow_plain_http = true\n")
    assert LedgerConfig.load(ledger).host == "0.0.0.0"  # noqa: S104

    for argv in (
        ["ledger", "config", "--out", str(folder / "l2.toml"), "--name", "national",
         "--nats", "bus", "--bind", "0.0.0.0:8090"],
        ["agent", "config", "--out", str(folder / "a.toml"), "--agency", "police",
         "--nats", "bus", *LEDGER],
        ["audit", "query", "--ledger", "http://ledger.example:8090", "--token-file",
         str(folder / "ledger.token")],
    ):  # fmt: skip
        result = nrm(*argv)
        assert result.exit_code == 2, result.output
        assert "plain HTTP beyond loopback" in result.output
        assert "--allow-plain-http" in result.output
    assert not (folder / "l2.toml").exists() and not (folder / "a.toml").exists()


def test_a_client_token_never_takes_the_ledgers_token_file(folder: Path) -> None:
    """`--client ledger` would keep its token in ledger.token, the agent's ledger token
    (an auditor's, handed over by the ledger): refused naming --client, nothing written."""
    before = (folder / "ledger.token").read_text()
    result = nrm(
        "agent", "config", "--out", str(folder / "agent.toml"), "--agency", "police",
        "--nats", "bus", "--client", "ledger:read", *LEDGER, "--allow-plain-http",
    )  # fmt: skip
    assert result.exit_code == 2 and "--client" in result.output, result.output
    assert "the ledger's token" in result.output
    assert (folder / "ledger.token").read_text() == before
    assert not (folder / "agent.toml").exists()
