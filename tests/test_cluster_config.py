"""`nrm cluster config`: the files of a cluster run by its operator, from one spec.

Every generated file passes `nats-server -t`; deploy/nats-cluster/ is exactly what the
command writes from the committed spec (no drift); a bad spec is refused naming what is
wrong.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from broker.cluster import ClusterNode
from broker.server import nats_server_binary
from keys.directory import read_unverified_directory
from nrm.cli import main
from runtime import clock

from .support import Pki

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nats-cluster"
DAY = 86400
#: What deploy/nats-cluster/ holds that the command does not write.
NOT_GENERATED = {"README.md", "cluster.toml", "demo"}


def nrm(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def at_demo_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Move the clock to a day after the demo directory's keys became valid: the demo
    documents expire (the root after a year), the generated files must not change."""
    directory = read_unverified_directory((DEPLOY / "demo" / "directory.json").read_bytes())
    signed = max(k.valid_from for a in directory.agencies for k in a.signing_keys)
    offset = tmp_path / "clock-offset"
    clock.set_offset(offset, signed + DAY - clock.now())
    monkeypatch.setenv(clock.ENV, str(offset))


def test_deploy_nats_cluster_is_what_cluster_config_writes_from_its_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_demo_time(monkeypatch, tmp_path)
    out = tmp_path / "out"
    result = nrm("cluster", "config", "--spec", DEPLOY / "cluster.toml", "--out", out)
    assert result.exit_code == 0, result.output
    committed = {p.name for p in DEPLOY.iterdir()} - NOT_GENERATED
    generated = {p.name for p in out.iterdir()}
    assert committed == generated
    for name in sorted(generated):
        assert (out / name).read_bytes() == (DEPLOY / name).read_bytes(), (
            f"deploy/nats-cluster/{name} drifted: regenerate it with "
            "`nrm cluster config --spec deploy/nats-cluster/cluster.toml --out deploy/nats-cluster "
            "--force`"
        )
    assert stat.S_IMODE((out / "nrm-1.authorization.conf").stat().st_mode) == 0o600


def write_pki(folder: Path) -> dict[str, Path]:
    pki = Pki(folder)
    files: dict[str, Path] = {"ca": pki.ca_file}
    for name in ("server", "route", "client"):
        files[name], files[f"{name}_key"] = pki.issue(name, "127.0.0.1", f"{name}.nrm.test")
    # A DNS name only, as a public CA issues.
    files["named"], files["named_key"] = pki.issue("named", "bus.nrm.test")
    return files


@dataclass(frozen=True)
class SpecTrust:
    """What a spec's [trust] and [authority] tables name: by default the demo documents of
    deploy/nats-cluster/ and an operator folder under the test's `tmp`."""

    roots: tuple[Path, ...] = (DEPLOY / "demo" / "root.1.json",)
    directory: Path = DEPLOY / "demo" / "directory.json"
    operator_identity: Path = DEPLOY / "demo" / "operator.identity.json"
    ledger_identity: Path = DEPLOY / "demo" / "ledger.identity.json"
    authority_identities: tuple[Path, ...] = tuple(
        DEPLOY / "demo" / f"authority-nrm-{i}.identity.json" for i in (1, 2, 3)
    )
    trust_root: Path | None = None  # else tmp / "root.1.json"
    key_dir: Path | None = None  # else tmp / "authority": every node's authority's own keys
    passphrase_file: Path | None = None  # else tmp / "passphrase"


def spec_text(
    tmp: Path,
    pki: dict[str, Path],
    *,
    ports: list[tuple[int, int, int, int]],
    client_verify: bool = True,
    trust: SpecTrust = SpecTrust(),
) -> str:
    """A spec of three loopback nodes (client, route, monitor, status ports) under `tmp`,
    trusting `trust`; client TLS (mutual with `client_verify`) and route mTLS."""
    q = json.dumps
    nodes = "".join(
        f"""
[[nodes]]
name = "n{i}"
host = "127.0.0.1"
client = "127.0.0.1:{client}"
route = "127.0.0.1:{route}"
monitor = "127.0.0.1:{monitor}"
status_bind = "127.0.0.1:{status}"
store_dir = {q(str(tmp / f"store-{i}"))}
pid_file = {q(str(tmp / f"n{i}.pid"))}
log_file = {q(str(tmp / f"n{i}.log"))}
"""
        for i, (client, route, monitor, status) in enumerate(ports, start=1)
    )
    client_cert = (
        f"cert_file = {q(str(pki['client']))}\nkey_file = {q(str(pki['client_key']))}\n"
        if client_verify
        else ""
    )
    return f"""
[trust]
roots = [{", ".join(q(str(r)) for r in trust.roots)}]
directory = {q(str(trust.directory))}
operator_identity = {q(str(trust.operator_identity))}
ledger_identity = {q(str(trust.ledger_identity))}
authority_identities = [{", ".join(q(str(a)) for a in trust.authority_identities)}]

[client_tls]
cert_file = {q(str(pki["server"]))}
key_file = {q(str(pki["server_key"]))}
ca_file = {q(str(pki["ca"]))}
verify = {"true" if client_verify else "false"}

[route_tls]
cert_file = {q(str(pki["route"]))}
key_file = {q(str(pki["route_key"]))}
ca_file = {q(str(pki["ca"]))}
verify = true

[authority]
trust_root = {q(str(trust.trust_root or tmp / "root.1.json"))}
key_dir = {q(str(trust.key_dir or tmp / "authority"))}
passphrase_file = {q(str(trust.passphrase_file or tmp / "passphrase"))}

[authority.nats_tls]
ca_file = {q(str(pki["ca"]))}
{client_cert}{nodes}"""


def test_every_generated_file_passes_nats_server_t(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each node's configuration (with client and route TLS, its include) and its
    authorization alone pass `nats-server -t`; the authority.toml names this node's
    monitoring and every node's client URL, this node's first, over TLS."""
    at_demo_time(monkeypatch, tmp_path)
    pki = write_pki(tmp_path)
    spec = tmp_path / "cluster.toml"
    ports = [(14222 + i, 16222 + i, 18222 + i, 18322 + i) for i in range(3)]
    spec.write_text(spec_text(tmp_path, pki, ports=ports))
    out = tmp_path / "out"
    result = nrm("cluster", "config", "--spec", spec, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == 9
    for path in sorted(out.glob("*.conf")):
        checked = subprocess.run(
            [str(nats_server_binary()), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, (path.name, checked.stdout, checked.stderr)
    conf = (out / "n2.conf").read_text()
    assert 'include "n2.authorization.conf"' in conf
    assert f'pid_file: "{tmp_path / "n2.pid"}"' in conf
    assert conf.count("verify: true") == 2  # clients (mutual TLS) and routes
    assert 'client_advertise: "127.0.0.1:14223"' in conf
    assert '  advertise: "127.0.0.1:16223"' in conf
    authority = (out / "n2.authority.toml").read_text()
    assert 'monitor_url = "http://127.0.0.1:18223"' in authority
    urls = ["tls://127.0.0.1:14223", "tls://127.0.0.1:14222", "tls://127.0.0.1:14224"]
    assert f"nats_urls = {json.dumps(urls)}" in authority
    assert "[nats_tls]" in authority and "cert_file" in authority

    # Again: the authorization files may hold what the authorities applied since.
    (out / "n2.authorization.conf").write_text("# applied by the authority\n")
    again = nrm("cluster", "config", "--spec", spec, "--out", out)
    assert again.exit_code == 1, again.output
    assert "n1.authorization.conf exists" in again.output and "--force" in again.output
    assert (out / "n2.authorization.conf").read_text() == "# applied by the authority\n"
    forced = nrm("cluster", "config", "--spec", spec, "--out", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert "authorization {" in (out / "n2.authorization.conf").read_text()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("verify = true\n\n[authority]", "verify = false\n\n[authority]"), "mutual TLS"),
        (("[trust]\n", "[trust]\ncolour = 1\n"), "unknown setting trust.'colour'"),
        (('store_dir = "', 'store_dir = "relative/'), "absolute path"),
        (("[authority.nats_tls]", "[authority.other]"), "[authority.nats_tls]"),
        (("[route_tls]\n", "[unused]\n"), "insecure_routes = true"),
        (('name = "n1"', 'name = "../n1"'), "node name '../n1'"),
        (('client = "127.0.0.1:1"', 'client = "127.0.0.1:0"'), "needs a port (not 0)"),
        (("[authority.nats_tls]\n", 'nats_tls = "x"\n[unused]\n'), "authority.nats_tls must be"),
        # A spec of the previous release: each refused naming what replaces it.
        (
            ("[authority]\n", '[authority]\noperator_key_dir = "/etc/nrm/operator"\n'),
            "authority.operator_key_dir is no longer read",
        ),
        (("[trust]\n", "replicas = 3\n[trust]\n"), "replicas is no longer read"),
        (("authority-nrm-2", "authority-nrm-1"), "lists one identity.json twice"),
    ],
)
def test_a_bad_spec_is_refused_naming_what_is_wrong(
    tmp_path: Path, change: tuple[str, str], says: str
) -> None:
    pki = write_pki(tmp_path)
    text = spec_text(tmp_path, pki, ports=[(1 + i, 11 + i, 21 + i, 31 + i) for i in range(3)])
    assert change[0] in text
    spec = tmp_path / "cluster.toml"
    spec.write_text(text.replace(change[0], change[1], 1))
    result = nrm("cluster", "config", "--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_routes_in_the_clear_only_when_the_spec_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_demo_time(monkeypatch, tmp_path)
    pki = write_pki(tmp_path)
    text = spec_text(tmp_path, pki, ports=[(1 + i, 11 + i, 21 + i, 31 + i) for i in range(3)])
    start, end = text.index("[route_tls]"), text.index("[authority]")
    spec = tmp_path / "cluster.toml"
    spec.write_text("insecure_routes = true\n" + text[:start] + text[end:])
    result = nrm("cluster", "config", "--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    cluster = (tmp_path / "out" / "n1.conf").read_text().split("cluster {")[1]
    assert "tls {" not in cluster


def test_ipv6_hosts_are_bracketed_in_urls() -> None:
    node = ClusterNode(
        name="n1", host="2001:db8::1", client_port=4222, cluster_port=6222, store_dir="/s"
    )
    assert (node.url, node.route) == (
        "nats://[2001:db8::1]:4222",
        "nats-route://[2001:db8::1]:6222",
    )


def test_a_tls_setting_that_is_no_table_is_named(tmp_path: Path) -> None:
    """`client_tls = "x"` is refused naming client_tls (no AttributeError traceback)."""
    pki = write_pki(tmp_path)
    text = spec_text(tmp_path, pki, ports=[(1 + i, 11 + i, 21 + i, 31 + i) for i in range(3)])
    spec = tmp_path / "cluster.toml"
    spec.write_text('client_tls = "x"\n' + text.replace("[client_tls]\n", "[unused]\n", 1))
    result = nrm("cluster", "config", "--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "client_tls must be a table" in result.output
    assert "Traceback" not in result.output


def test_an_authority_path_beyond_the_bmp_is_valid_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """authority.toml is written by runtime/tomlfile.py: a path with a character beyond the
    BMP (which JSON would escape as a surrogate pair, invalid in TOML) reads back as given."""
    at_demo_time(monkeypatch, tmp_path)
    pki = write_pki(tmp_path)
    passphrase = tmp_path / "pass-\U0001d11e"
    text = spec_text(tmp_path, pki, ports=[(1 + i, 11 + i, 21 + i, 31 + i) for i in range(3)])
    spec = tmp_path / "cluster.toml"
    spec.write_text(
        text.replace(str(tmp_path / "passphrase"), str(passphrase), 1), encoding="utf-8"
    )
    result = nrm("cluster", "config", "--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    doc = tomllib.loads((tmp_path / "out" / "n1.authority.toml").read_text(encoding="utf-8"))
    assert doc["passphrase_file"] == str(passphrase)


def test_the_readme_spec_passes_cluster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/nats-cluster/README.md "The spec", its one [[nodes]] entry repeated for nodes 2
    and 3 ("three or more"), is a spec `nrm cluster config` accepts."""
    at_demo_time(monkeypatch, tmp_path)
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    spec = readme.split("## The spec", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    node = "[[nodes]]" + spec.split("[[nodes]]", 1)[1]
    spec += "".join(node.replace("nrm-1", f"nrm-{n}").replace("nats-1", f"nats-{n}")
                    for n in (2, 3))  # fmt: skip
    shutil.copytree(DEPLOY / "demo", tmp_path / "demo")
    (tmp_path / "cluster.toml").write_text(spec, encoding="utf-8")
    result = nrm("cluster", "config", "--spec", tmp_path / "cluster.toml", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"nrm-3.conf", "nrm-3.authority.toml"}
