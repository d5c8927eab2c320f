"""deploy/ cannot drift from the code: the systemd units pass `systemd-analyze verify` and
score no worse than deploy/README.md says, every command a unit, the compose file or a
manifest runs is a real `nrm` command line, every file the compose file mounts is made by
deploy/compose-setup.sh and the configurations in it load, and every Kubernetes manifest
validates strictly against a pinned Kubernetes version."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from agents.config import AgentConfig
from broker.ledger import LedgerConfig
from broker.server import nats_server_binary
from nrm.cli import main
from runtime.tomlfile import dumps

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
#: The Kubernetes version the manifests are validated against (deploy/README.md).
KUBERNETES_VERSION = "1.33.0"


class NotAnNrmCommand(Exception):
    """The command line does not parse in the `nrm` click tree."""


def nrm_command(argv: list[str]) -> click.Context:
    """Parse `nrm ARGV` down to its command and its options, without running anything."""
    cmd: click.Command = main
    ctx: click.Context | None = None
    path = ["nrm"]
    args = list(argv)
    try:
        while isinstance(cmd, click.Group):
            ctx = click.Context(cmd, info_name=path[-1], parent=ctx)
            if not args:
                raise NotAnNrmCommand(f"{' '.join(path)} needs a command")
            name, *args = args
            sub = cmd.get_command(ctx, name)
            if sub is None:
                raise NotAnNrmCommand(f"No such command '{name}' in {' '.join(path)}")
            cmd = sub
            path.append(name)
        return cmd.make_context(path[-1], args, parent=ctx)
    except click.UsageError as e:
        raise NotAnNrmCommand(f"{' '.join(path)}: {e.format_message()}") from e


def check_nrm_commands(commands: dict[str, list[str]]) -> None:
    """Every `nrm` command line parses."""
    failures = {}
    for where, argv in commands.items():
        try:
            nrm_command(argv)
        except NotAnNrmCommand as e:
            failures[where] = str(e)
    assert not failures


def test_the_command_check_can_fail() -> None:
    """A misspelt option, an unknown command and a bad value are each refused."""
    assert nrm_command(["agent", "run", "--config", "/etc/nrm/agent.toml"]).params
    for argv in (
        ["agent", "run", "--confg", "x"],
        ["agent", "walk"],
        ["ledger", "config", "--out", "x", "--checkpoint-interval", "soon"],
        ["agent"],
    ):
        with pytest.raises(NotAnNrmCommand):
            nrm_command(argv)


# --- systemd ---------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)"
)
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "RestrictNamespaces": "yes",
    "UMask": "0077",
}


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Each `Key=value` of the unit's [Service] section, repeated keys in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the units whose /opt/nrm/bin/ (the documented venv) points at executable
    stand-ins, so that `verify` finds the binaries; the template as instance `police`."""
    folder = tmp_path_factory.mktemp("units")
    bin_dir = folder / "opt-nrm-bin"
    bin_dir.mkdir()
    for name in ("nrm", "nats-server"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    copies = {}
    for unit in UNITS:
        name = unit.name.replace("@.service", "@police.service")
        text = unit.read_text().replace("/opt/nrm/bin/", f"{bin_dir}/")
        (folder / name).write_text(text)
        copies[unit.name] = folder / name
    return copies


def verify(path: Path) -> str:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, check=False
    )
    return (
        f"exit {done.returncode}: {done.stdout}{done.stderr}"
        if done.returncode
        else (done.stdout + done.stderr)
    )


def test_the_four_units_are_there() -> None:
    """The agent (template), the ledger, the bus node and its authority."""
    assert [u.name for u in UNITS] == [
        "nrm-agent@.service",
        "nrm-bus-authority.service",
        "nrm-ledger.service",
        "nrm-nats.service",
    ]


@needs_systemd
@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_unit_passes_systemd_analyze_verify(installed_units: dict[str, Path], unit: str) -> None:
    """Not one warning: an unknown or misspelt setting is reported, not ignored."""
    assert verify(installed_units[unit]) == ""


@needs_systemd
def test_verify_reports_a_misspelt_setting(installed_units: dict[str, Path]) -> None:
    """The check above can fail: a typo in a hardening setting makes output."""
    good = installed_units["nrm-ledger.service"]
    bad = good.with_name("nrm-typo.service")
    bad.write_text(good.read_text().replace("ProtectHome=yes", "ProtectHme=yes"))
    assert "Unknown key 'ProtectHme'" in verify(bad)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened_and_runs_a_real_command(unit: Path) -> None:
    """The hardening deploy/README.md lists is in every unit; passphrases arrive only as
    credentials; the ExecStart is an `nrm` command line (or the packaged nats-server)."""
    settings = unit_settings(unit)
    for key, value in HARDENING.items():
        assert value in settings.get(key, []), f"{unit.name}: {key}={value}"
    assert settings["User"][0].startswith("nrm") and settings["StateDirectory"]
    [exec_start] = settings["ExecStart"]
    argv = shlex.split(exec_start.replace("%i", "police"))
    if argv[0] == "/opt/nrm/bin/nats-server":
        assert argv[1:] == ["-c", "/etc/nrm/nats/nats.conf"]
        return
    assert argv[0] == "/opt/nrm/bin/nrm"
    assert any(c.startswith("passphrase:") for c in settings["LoadCredential"])
    check_nrm_commands({unit.name: argv[1:]})


def test_each_agency_s_agent_runs_as_its_own_user() -> None:
    """Two agencies on one host must not read each other's database and keys: the
    template's user and group carry the instance (nrm-%i), as does its state folder."""
    settings = unit_settings(DEPLOY / "systemd" / "nrm-agent@.service")
    assert settings["User"] == ["nrm-%i"] and settings["Group"] == ["nrm-%i"]
    assert "%i" in settings["StateDirectory"][0]


def duration_seconds(text: str) -> float:
    """`30s`, `2m`, `60` (seconds) as seconds."""
    match = re.fullmatch(r"(\d+)(s|m)?", text.strip().strip('"'))
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_the_lame_duck_stop_ends_before_systemd_or_kubernetes_kills_the_server() -> None:
    """nats-server's lame-duck mode (SIGUSR2, preStop) lasts lame_duck_duration after
    lame_duck_grace_period (defaults 2 min and 10 s); the unit's TimeoutStopSec and the
    pods' terminationGracePeriodSeconds give it that and 15 s more before SIGKILL."""
    conf = (DEPLOY / "nats-cluster" / "nrm-1.conf").read_text()
    found = dict(re.findall(r"^(lame_duck_duration|lame_duck_grace_period): (\S+)$", conf, re.M))
    lame_duck = sum(
        duration_seconds(found[k]) for k in ("lame_duck_duration", "lame_duck_grace_period")
    )
    [timeout] = unit_settings(DEPLOY / "systemd" / "nrm-nats.service")["TimeoutStopSec"]
    grace = pod_specs()["nrm-nats"]["terminationGracePeriodSeconds"]
    assert lame_duck + 15 <= duration_seconds(timeout)
    assert lame_duck + 15 <= grace


def readme_scores() -> dict[str, float]:
    """The table of deploy/README.md: | `unit` | exposure |."""
    found = re.findall(
        r"^\| `([\w@.-]+\.service)` \| (\d+\.\d) \|", (DEPLOY / "README.md").read_text(), re.M
    )
    return {unit: float(score) for unit, score in found}


@needs_systemd
@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_security_exposure_is_at_most_what_the_readme_says(
    installed_units: dict[str, Path], unit: str
) -> None:
    """`systemd-analyze security --offline=yes` scores the unit no worse than recorded."""
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(installed_units[unit])],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= readme_scores()[unit]


# --- compose ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder deploy/compose-setup.sh makes, with the nrm of this interpreter."""
    folder = tmp_path_factory.mktemp("compose") / "nrm"
    env = {**os.environ, "NRM": str(Path(sys.executable).parent / "nrm")}
    subprocess.run(
        ["sh", str(DEPLOY / "compose-setup.sh"), str(folder)],
        env=env,
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def mounts(service: dict[str, Any], host_dir: Path) -> Iterator[tuple[str, Path | None]]:
    """(container path, host path) of each volume; host None for a named volume."""
    for item in service.get("volumes", []):
        variable, brace, rest = item.partition("}")  # ${NRM_DIR:?message} may hold a colon
        if variable.startswith("${NRM_DIR") and brace:
            relative, target = rest.lstrip("/").split(":")[:2]
            yield target, host_dir / relative
        else:
            yield item.split(":")[1], None


def on_host(path: str, service: dict[str, Any], host_dir: Path) -> Path | None:
    """Where a container path of `service` is on the host (None: in a named volume)."""
    best = max(
        (m for m in mounts(service, host_dir) if path == m[0] or path.startswith(m[0] + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    assert best is not None, f"{path} is in no mounted volume"
    target, host = best
    return None if host is None else host / path[len(target) :].lstrip("/")


def test_compose_services_run_real_nrm_commands(compose: dict[str, Any]) -> None:
    """The bus, the directory publication, the ledger and three agents; each command parses."""
    services = compose["services"]
    assert {"bus", "publish", "ledger"} <= set(services)
    assert len([s for s in services.values() if s["command"][:2] == ["agent", "run"]]) >= 2
    check_nrm_commands({name: s["command"] for name, s in services.items()})


def test_compose_mounts_only_what_the_setup_script_makes(
    compose: dict[str, Any], mechanism: Path
) -> None:
    """Every host path mounted exists after compose-setup.sh; every named volume is declared;
    every file a command line names is mounted."""
    for name, service in compose["services"].items():
        for target, host in mounts(service, mechanism):
            if host is None:
                assert target.startswith("/var/lib/nrm")
            else:
                assert host.exists(), f"{name}: {host}"
        named = [
            v.split(":")[0]
            for v in service.get("volumes", [])
            if v.startswith(tuple("abcdefghijklmnopqrstuvwxyz"))
        ]
        assert set(named) <= set(compose["volumes"])
        for arg in service["command"]:
            key, _, value = arg.partition("=")
            if value.startswith("/etc/nrm/"):
                if any(t.startswith(value + "/") for t, _ in mounts(service, mechanism)):
                    continue  # a folder of separately mounted files (publish's --dir)
                host = on_host(value, service, mechanism)
                assert host is not None and host.exists(), f"{name} {key}: {value}"


def test_the_administrators_passphrase_and_keys_reach_no_container(
    compose: dict[str, Any], mechanism: Path
) -> None:
    """Only the operator's passphrase is mounted (the bus, publish), never admin.passphrase
    nor an admin-N.key: a network-facing service holds neither."""
    admin_files = {mechanism / "admin.passphrase", *mechanism.glob("admin/admin-*.key")}
    assert len(admin_files) == 4
    for name, service in compose["services"].items():
        for _, host in mounts(service, mechanism):
            if host is not None:
                assert not mounted_files(host) & admin_files, name
    assert (mechanism / "operator.passphrase").read_bytes() != (
        mechanism / "admin.passphrase"
    ).read_bytes()


def mounted_files(host: Path) -> set[Path]:
    """The host files a mount of `host` shows (itself, or everything under a folder)."""
    return set(host.rglob("*")) | {host} if host.is_dir() else {host}


def test_the_ledger_holds_its_own_key_and_never_the_operator_s(
    compose: dict[str, Any], mechanism: Path
) -> None:
    """The ledger logs in to the bus with the NATS key of its own key folder, sealed with a
    passphrase of its own; neither the operator's key nor its passphrase reaches the ledger's
    container, and the bus admits the ledger's NKey (--ledger-identity)."""
    operator = {*mounted_files(mechanism / "admin" / "operator"), mechanism / "operator.passphrase"}
    ledger = compose["services"]["ledger"]
    seen = set().union(*(mounted_files(h) for _, h in mounts(ledger, mechanism) if h is not None))
    assert not seen & operator
    assert (mechanism / "ledger" / "keys" / "agency.key") in seen
    assert (mechanism / "ledger" / "passphrase").read_bytes() != (
        mechanism / "operator.passphrase"
    ).read_bytes()
    [ledger_toml] = [a.partition("=")[2] for a in ledger["command"] if a.startswith("--config=")]
    host = on_host(ledger_toml, ledger, mechanism)
    assert host is not None
    assert "operator" not in host.read_text()
    bus = compose["services"]["bus"]
    [identity] = [a.partition("=")[2] for a in bus["command"] if a.startswith("--ledger-identity=")]
    assert on_host(identity, bus, mechanism) == mechanism / "ledger" / "keys" / "identity.json"


PATH_SETTINGS = ("key_dir", "passphrase_file", "trust_root", "trust_cache", "database",
                 "identity", "token_file")  # fmt: skip


def host_config(doc: dict[str, Any], base: str, service: dict[str, Any], host_dir: Path,
                state: Path) -> dict[str, Any]:  # fmt: skip
    """`doc` with each container path replaced by where it is on the host (paths in
    named volumes moved into `state`): what the service sees, seen from here."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out[key] = host_config(value, base, service, host_dir, state)
        elif key in PATH_SETTINGS and isinstance(value, str):
            full = value if value.startswith("/") else f"{base}/{value}"
            host = on_host(full, service, host_dir)
            out[key] = str(host if host is not None else state / full.lstrip("/"))
            if host is not None:
                assert host.exists(), f"{key} = {value}: not made by compose-setup.sh"
        else:
            out[key] = value
    return out


def test_compose_configurations_load_as_the_containers_see_them(
    compose: dict[str, Any], mechanism: Path, tmp_path: Path
) -> None:
    """Each agent.toml and ledger.toml, its paths followed through the mounts, names files
    the setup made and loads with the service's own loader; the agents reach the bus and
    the ledger by their compose service names."""
    loaded = 0
    for name, service in compose["services"].items():
        given = [a.partition("=")[2] for a in service["command"] if a.startswith("--config=")]
        config = given[0] if given else None
        if config is None:
            continue
        host = on_host(config, service, mechanism)
        assert host is not None
        doc = host_config(tomllib.loads(host.read_text()), config.rsplit("/", 1)[0], service,
                          mechanism, tmp_path / name)  # fmt: skip
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        rewritten = tmp_path / name / "config.toml"
        rewritten.write_text(dumps(doc))
        assert doc["nats_urls"] == ["nats://bus:4222"]
        if service["command"][0] == "agent":
            agent = AgentConfig.load(rewritten)
            assert agent.agency == name
            assert agent.ledger is not None and agent.ledger.url == "http://ledger:8090"
            port = agent.api_port
            assert f"127.0.0.1:{port}:{port}" in service["ports"]
        else:
            assert LedgerConfig.load(rewritten).name == "national"
        loaded += 1
    assert loaded == 4


# --- Kubernetes ------------------------------------------------------------------------------

MANIFESTS = sorted(
    p for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml"
)


def resources(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(manifest: Path) -> None:
    """Every resource validates against the pinned Kubernetes version, unknown fields refused."""
    for resource in resources(manifest):
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The check above can fail: a misspelt field is an error, not ignored."""
    [deployment] = [
        r for r in resources(DEPLOY / "kubernetes" / "ledger.yaml") if r["kind"] == "Deployment"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [m.name for m in MANIFESTS]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        r["metadata"]["name"]: r["spec"]["template"]["spec"]
        for m in MANIFESTS
        for r in resources(m)
        if r["kind"] in ("Deployment", "StatefulSet")
    }


def test_every_container_is_locked_down() -> None:
    """Non-root, read-only root file system, no capabilities, no privilege escalation, the
    runtime's seccomp profile; no service-account token."""
    specs = pod_specs()
    assert set(specs) == {"nrm-ledger", "nrm-nats"}
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_nats_nodes_share_the_authorization_with_the_authority_sidecar() -> None:
    """Three nodes; the server and the authority share the process namespace (for SIGHUP)
    and an emptyDir holding the include; both run the packaged programs as documented."""
    [nats] = [
        r for r in resources(DEPLOY / "kubernetes" / "nats.yaml") if r["kind"] == "StatefulSet"
    ]
    assert nats["spec"]["replicas"] == 3
    spec = nats["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    run = {v["name"]: v for v in spec["volumes"]}["run"]
    assert "emptyDir" in run
    containers = {c["name"]: c for c in spec["containers"]}
    for c in containers.values():
        assert {"name": "run", "mountPath": "/run/nats"} in c["volumeMounts"]
    assert containers["nats"]["command"][:2] == ["/opt/nrm/bin/nats-server", "-c"]
    ledger = pod_specs()["nrm-ledger"]["containers"][0]
    authority = [a.replace("$(POD_NAME)", "nrm-nats-0") for a in containers["authority"]["args"]]
    check_nrm_commands({"ledger": ledger["args"], "authority": authority})


def test_a_recreated_nats_pod_admits_no_agency_until_its_authority_applies(
    tmp_path: Path,
) -> None:
    """The emptyDir is refilled on every pod start: with the seed include from `nrm cluster
    seed-authorization` (the operator, the ledger and the authorities, no agency), never
    with a generated (possibly stale) directory's one; the authority has no readiness probe
    (its 503 before a directory is trusted would take the node out of service)."""
    spec = pod_specs()["nrm-nats"]
    [init] = spec["initContainers"]
    script = init["command"][-1]
    assert '/config/seed.authorization.conf "/run/nats/$POD_NAME.authorization.conf"' in script
    assert "/config/$POD_NAME.authorization.conf" not in script
    authority = {c["name"]: c for c in spec["containers"]}["authority"]
    assert "readinessProbe" not in authority and "livenessProbe" in authority

    demo = DEPLOY / "nats-cluster" / "demo"
    identities = {
        "--operator-identity": [demo / "operator.identity.json"],
        "--ledger-identity": [demo / "ledger.identity.json"],
        "--authority-identity": sorted(demo.glob("authority-*.identity.json")),
    }
    assert len(identities["--authority-identity"]) == 3
    args = [a for option, files in identities.items() for f in files for a in (option, str(f))]
    seed = tmp_path / "seed.authorization.conf"
    command = ["cluster", "seed-authorization", *args, "--out", str(seed)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    text = seed.read_text()
    wanted = {json.loads(f.read_text())["nats_key"] for fs in identities.values() for f in fs}
    found = re.findall(r"nkey: \"(\w+)\"", text)
    assert len(found) == 5 and set(found) == wanted
    (tmp_path / "node.conf").write_text(f'listen: "127.0.0.1:-1"\ninclude "{seed.name}"\n')
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "node.conf")],
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 1 and "not overwritten" in again.output


def volume_users(spec: dict[str, Any]) -> dict[str, set[str]]:
    """Each volume of a pod spec (and claim template): the containers, init ones too, that
    mount it."""
    users: dict[str, set[str]] = {v["name"]: set() for v in spec["volumes"]}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for m in c["volumeMounts"]:
            users.setdefault(m["name"], set()).add(c["name"])
    return users


def test_each_authority_logs_in_with_its_own_key_and_no_pod_holds_the_operator_s() -> None:
    """The init container copies the pod's own authority key and passphrase (by pod name)
    into an emptyDir only the authority mounts; the secret of every pod's key is mounted by
    the init container alone; no volume of the ledger or the bus is the operator's key."""
    spec = pod_specs()["nrm-nats"]
    [init] = spec["initContainers"]
    script = init["command"][-1]
    assert '"/authority-keys/$POD_NAME.key" /run/nrm-authority/keys/agency.key' in script
    assert '"/authority-keys/$POD_NAME.passphrase" /run/nrm-authority/passphrase' in script
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["authority-keys"]["secret"]["secretName"] == "nrm-authority-keys"
    assert "emptyDir" in volumes["authority-run"]
    users = volume_users(spec)
    assert users["authority-keys"] == {"node-config"}
    assert users["authority-run"] == {"node-config", "authority"}
    for name, pod in pod_specs().items():
        for v in pod["volumes"]:
            assert "operator" not in v["name"] + v.get("secret", {}).get("secretName", ""), name
    ledger = pod_specs()["nrm-ledger"]
    assert {v["secret"]["secretName"] for v in ledger["volumes"] if "secret" in v} == {
        "nrm-ledger-config",
        "nrm-ledger-keys",
    }


def test_routes_and_clients_use_certificates_of_different_secrets() -> None:
    """The route CA is not the clients' CA: an agency's client certificate cannot open a
    route. Only the server mounts the route secret."""
    spec = pod_specs()["nrm-nats"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets["tls"] != secrets["route-tls"]
    containers = {c["name"]: c for c in spec["containers"]}
    mounted = {c: {m["name"] for m in containers[c]["volumeMounts"]} for c in containers}
    assert {"tls", "route-tls"} <= mounted["nats"]
    assert "route-tls" not in mounted["authority"]


def test_the_network_policy_lets_the_authority_reach_every_node_it_names() -> None:
    """The authority sidecar connects to any of the nodes of its nats_urls (their client
    port), the server to the others' route port: both allowed out to the NATS pods."""
    [policy] = [
        r for r in resources(DEPLOY / "kubernetes" / "nats.yaml") if r["kind"] == "NetworkPolicy"
    ]
    to_nodes = {
        p["port"]
        for rule in policy["spec"]["egress"]
        if any(t.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "nrm-nats"}
               for t in rule["to"])
        for p in rule["ports"]
    }  # fmt: skip
    authority = tomllib.loads((DEPLOY / "nats-cluster" / "nrm-1.authority.toml").read_text())
    ports = {int(u.rsplit(":", 1)[1]) for u in authority["nats_urls"]}
    assert ports == {4222} and {4222, 6222} <= to_nodes


def unit_writable(settings: dict[str, list[str]]) -> list[str]:
    """The folders a unit under ProtectSystem=strict may write."""
    dirs = [f"/var/lib/{d}" for v in settings.get("StateDirectory", []) for d in v.split()]
    dirs += [f"/run/{d}" for v in settings.get("RuntimeDirectory", []) for d in v.split()]
    dirs += [f"/var/log/{d}" for v in settings.get("LogsDirectory", []) for d in v.split()]
    return dirs + [d for v in settings.get("ReadWritePaths", []) for d in v.split()]


def inside(path: str, folders: list[str]) -> bool:
    return any(path.startswith(f.rstrip("/") + "/") for f in folders)


def test_the_example_cluster_fits_the_shipped_bus_units() -> None:
    """Every path of deploy/nats-cluster/ a unit writes or reads is one the unit gives it:
    nats-server's store, pid and log files in nrm-nats.service's own directories, its config
    and include in the folder of its `-c` file; the authority's include in what it may
    write, the pid file the server's, its passphrase its credential."""
    nats = unit_settings(DEPLOY / "systemd" / "nrm-nats.service")
    authority = unit_settings(DEPLOY / "systemd" / "nrm-bus-authority.service")
    [conf_path] = [a for a in shlex.split(nats["ExecStart"][0]) if a.endswith(".conf")]
    credentials = {
        c.partition(":")[0]: f"/run/credentials/nrm-bus-authority.service/{c.partition(':')[0]}"
        for c in authority["LoadCredential"]
    }
    for node in ("nrm-1", "nrm-2", "nrm-3"):
        conf = (DEPLOY / "nats-cluster" / f"{node}.conf").read_text()
        paths = dict(re.findall(r"^\s*(pid_file|store_dir|log_file): \"([^\"]+)\"$", conf, re.M))
        assert {"pid_file", "store_dir"} <= set(paths)
        for key, path in paths.items():
            assert inside(path, unit_writable(nats)), f"{node}.conf {key} {path}"
        doc = tomllib.loads((DEPLOY / "nats-cluster" / f"{node}.authority.toml").read_text())
        assert doc["pid_file"] == paths["pid_file"]
        include = doc["authorization_file"]
        assert inside(include, unit_writable(authority)), include
        assert include.rsplit("/", 1)[0] == conf_path.rsplit("/", 1)[0]
        assert include.endswith(re.findall(r'^include "([^"]+)"$', conf, re.M)[0])
        assert doc["passphrase_file"] in credentials.values()


def test_nats_server_may_open_netlink_sockets() -> None:
    """Go's net.Interfaces() (nats-server listening on 0.0.0.0 lists the interfaces) reads
    them over netlink: without AF_NETLINK the server cannot start."""
    [families] = unit_settings(DEPLOY / "systemd" / "nrm-nats.service")["RestrictAddressFamilies"]
    assert set(families.split()) == {"AF_INET", "AF_INET6", "AF_NETLINK"}


def kubernetes_spec(folder: Path) -> Path:
    """The cluster spec of deploy/README.md "Kubernetes" (the layout of kubernetes/nats.yaml),
    with the demo mechanism's public files."""
    demo = DEPLOY / "nats-cluster" / "demo"
    authorities = [str(p) for p in sorted(demo.glob("authority-*.identity.json"))]
    nodes = "".join(
        f'[[nodes]]\nname = "nrm-nats-{n}"\nhost = "nrm-nats-{n}.nrm-nats.nrm.svc"\n'
        'client = "0.0.0.0:4222"\nroute = "0.0.0.0:6222"\nmonitor = "0.0.0.0:8222"\n'
        f'store_dir = "/data/jetstream/nrm-nats-{n}"\npid_file = "/run/nats/nrm-nats-{n}.pid"\n'
        'status_bind = "0.0.0.0:8223"\n\n'
        for n in range(3)
    )
    spec = folder / "cluster.toml"
    spec.write_text(
        "[trust]\n"
        f"roots = [{json.dumps(str(demo / 'root.1.json'))}]\n"
        f"directory = {json.dumps(str(demo / 'directory.json'))}\n"
        f"operator_identity = {json.dumps(str(demo / 'operator.identity.json'))}\n"
        f"ledger_identity = {json.dumps(str(demo / 'ledger.identity.json'))}\n"
        f"authority_identities = {json.dumps(authorities)}\n\n"
        "[client_tls]\n"
        'cert_file = "/etc/nats-tls/tls.crt"\nkey_file = "/etc/nats-tls/tls.key"\n'
        'ca_file = "/etc/nats-tls/ca.crt"\nverify = false\n\n'
        "[route_tls]\n"
        'cert_file = "/etc/nats-route-tls/tls.crt"\nkey_file = "/etc/nats-route-tls/tls.key"\n'
        'ca_file = "/etc/nats-route-tls/ca.crt"\nverify = true\n\n'
        "[authority]\n"
        'config_dir = "/run/nats"\ntrust_root = "/etc/nrm/trust/root.1.json"\n'
        'key_dir = "/run/nrm-authority/keys"\npassphrase_file = "/run/nrm-authority/passphrase"\n\n'
        '[authority.nats_tls]\nca_file = "/etc/nats-tls/ca.crt"\n\n' + nodes
    )
    return spec


def mounted_in(container: dict[str, Any], path: str) -> bool:
    return inside(path, [m["mountPath"] for m in container["volumeMounts"]])


def test_the_kubernetes_cluster_spec_fits_the_pods(tmp_path: Path) -> None:
    """From the spec deploy/README.md gives for kubernetes/ (`nrm cluster config`): every
    file each node's nats-server and authority name is in a volume that container mounts;
    the authority's key and passphrase are where the init container puts the pod's own."""
    spec = kubernetes_spec(tmp_path)
    out = tmp_path / "nats-config"
    result = CliRunner().invoke(main, ["cluster", "config", "--spec", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    pod = pod_specs()["nrm-nats"]
    containers = {c["name"]: c for c in pod["containers"]}
    [init] = pod["initContainers"]
    script = init["command"][-1]
    for n in range(3):
        name = f"nrm-nats-{n}"
        conf = (out / f"{name}.conf").read_text()
        for key, path in re.findall(r'^\s*(\w+_file|store_dir): "([^"]+)"$', conf, re.M):
            assert mounted_in(containers["nats"], path), f"{name}.conf {key} {path}"
        doc = tomllib.loads((out / f"{name}.authority.toml").read_text())
        paths = [doc[k] for k in ("authorization_file", "pid_file", "trust_root", "key_dir",
                                  "passphrase_file", "trust_cache")]  # fmt: skip
        for path in [*paths, *doc["nats_tls"].values()]:
            assert mounted_in(containers["authority"], path), f"{name}.authority.toml {path}"
        assert f"{doc['key_dir']}/agency.key" in script
        assert doc["passphrase_file"] in script
        assert doc["authorization_file"] == f"/run/nats/{name}.authorization.conf"
        assert len(doc["authority_nkeys"]) == 3


def test_the_docs_give_no_agency_an_auditor_token() -> None:
    """An auditor's ledger token reads every agency's events: an agency's agent gets
    `--agency-token AGENCY` (scope agency:AGENCY), never `--auditor AGENCY`."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), DEPLOY / "README.md",
            DEPLOY / "compose-setup.sh", DEPLOY / "nats-cluster" / "README.md"]  # fmt: skip
    text = "\n".join(p.read_text(encoding="utf-8") for p in docs)
    agencies = set(re.findall(r"--agency(?:-token)?[ =]([a-z][\w-]*)", text))
    auditors = set(re.findall(r"--auditor[ =]([a-z][\w-]*)", text))
    assert {"police", "shelter"} <= agencies and "court-of-audit" in auditors
    assert not auditors & agencies, auditors & agencies
