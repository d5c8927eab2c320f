"""The `nrm` command line: composes keys, agents and broker into one tool."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from pathlib import Path

import click

from agents import Agent, ConfigError, token_digest
from keys import KeyFileError, NrmError
from keys.keyfile import MODERATE, init_key_dir, read_passphrase

from . import logs

PATH = click.Path(path_type=Path)


@click.group()
def main() -> None:
    """NRM Exchange: secure referrals between the agencies of a National Referral Mechanism."""


# --- keys ----------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """An agency's own keys."""


@keys.command("init")
@click.option("--agency", required=True, help="Agency id (a-z, 0-9, '-').")
@click.option("--dir", "directory", type=PATH, required=True, help="Key directory to create.")
@click.option("--name", default=None, help="Display name (defaults to the agency id).")
@click.option(
    "--passphrase-file",
    type=PATH,
    default=None,
    help="File holding the passphrase; otherwise $NRM_PASSPHRASE.",
)
def keys_init(agency: str, directory: Path, name: str | None, passphrase_file: Path | None) -> None:
    """Create the agency's signing and encryption keys, encrypted at rest."""
    try:
        passphrase = read_passphrase(file=passphrase_file)
        agency_keys = init_key_dir(
            directory, agency=agency, name=name or agency, passphrase=passphrase, cost=MODERATE
        )
    except (KeyFileError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    ident = agency_keys.public
    click.echo(f"created keys for {ident.agency} in {directory}")
    click.echo(f"  signing key    {ident.signing_kid} (Ed25519)")
    click.echo(f"  encryption key {ident.encryption_kid} (X25519)")
    click.echo(f"  hand {directory / 'identity.json'} to the administrators")


# --- bus -----------------------------------------------------------------------------------


@main.group()
def bus() -> None:
    """The embedded NATS JetStream bus."""


@bus.command("up")
@click.option("--store", type=PATH, required=True, help="JetStream store directory.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Client port.")
def bus_up(store: Path, port: int | None) -> None:
    """Run nats-server on loopback in the foreground until Ctrl-C."""
    from broker import run_foreground

    sys.exit(run_foreground(store_dir=store, port=port))


# --- agent ---------------------------------------------------------------------------------


@main.group()
def agent() -> None:
    """The agency agent."""


@agent.command("run")
@click.option("--config", "config_path", type=PATH, required=True, help="Agent TOML file.")
def agent_run(config_path: Path) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    logs.configure()
    try:
        the_agent = Agent.from_config_file(config_path)
    except (ConfigError, NrmError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    asyncio.run(_run_agent(the_agent))


async def _run_agent(the_agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with the_agent:
        click.echo(f"agent {the_agent.config.agency} serving {the_agent.api_url}", err=True)
        await stop.wait()


@agent.command("new-token")
def agent_new_token() -> None:
    """Make an API token for a client system: the token, and the line for agent.toml."""
    token = secrets.token_urlsafe(32)
    click.echo(f"token (give to the client system, store nowhere else): {token}")
    click.echo(f'token_sha256 = "{token_digest(token)}"')


# --- demo ----------------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Leave everything running; print URLs and tokens.")
@click.option("--dir", "workdir", type=PATH, default=None, help="Work in this new directory.")
def demo(keep: bool, workdir: Path | None) -> None:
    """A bus and three agencies on this machine; police refers a person to the shelter."""
    from .demo import run

    sys.exit(run(keep=keep, workdir=workdir))
