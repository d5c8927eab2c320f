"""The options of every `nrm` command that connects to the bus, in one place.

    --nats URLS             one or more server URLs: repeat it, or separate them by commas
    --tls-ca FILE           the CAs that sign the servers' certificates (else the system's)
    --tls-cert FILE         this client's certificate, for servers that require mutual TLS
    --tls-key FILE          its key (never in argv: a file, 0600)
    --tls-server-name NAME  the name the servers' certificates carry, if not the URL's host

`bus_endpoint_options` adds them to a command and hands it one `endpoint` argument, a
`runtime.endpoint.BusEndpoint`; a malformed URL or a certificate without its key is a usage
error (exit 2) naming what is wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from runtime.endpoint import BusEndpoint, BusTls, EndpointError

F = TypeVar("F", bound=Callable[..., Any])
PATH = click.Path(path_type=Path, dir_okay=False)


def bus_endpoint_options(*, required: bool = True) -> Callable[[F], F]:
    """Add --nats and the --tls-* options; the command receives `endpoint` (None when
    --nats is not required and not given)."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(
            nats: tuple[str, ...],
            tls_ca: Path | None,
            tls_cert: Path | None,
            tls_key: Path | None,
            tls_server_name: str | None,
            **kwargs: Any,
        ) -> Any:
            kwargs["endpoint"] = endpoint_of(
                nats,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
                tls_server_name=tls_server_name,
                required=required,
            )
            return f(**kwargs)

        for option in reversed(
            [
                click.option(
                    "--nats",
                    multiple=True,
                    required=required,
                    metavar="URLS",
                    help="Bus URL(s): nats://host:4222 or tls://host:4222; repeat or "
                    "separate by commas.",
                ),
                click.option("--tls-ca", type=PATH, default=None, help="CA file (PEM)."),
                click.option(
                    "--tls-cert", type=PATH, default=None, help="Client certificate (PEM)."
                ),
                click.option("--tls-key", type=PATH, default=None, help="Client key (PEM)."),
                click.option(
                    "--tls-server-name", default=None, help="Name the server certificates carry."
                ),
            ]
        ):
            command = option(command)
        return command  # type: ignore[return-value]

    return decorate


def endpoint_of(
    nats: tuple[str, ...],
    *,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_server_name: str | None,
    required: bool = True,
) -> BusEndpoint | None:
    """The endpoint the options name; click.UsageError naming what is wrong."""
    tls_given = any(v is not None for v in (tls_ca, tls_cert, tls_key, tls_server_name))
    if not nats:
        if tls_given:
            raise click.UsageError("the --tls-* options go with --nats")
        if required:
            raise click.UsageError("give the bus with --nats")
        return None
    try:
        tls = (
            BusTls(
                ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, server_name=tls_server_name
            )
            if tls_given
            else None
        )
        return BusEndpoint.of(nats, tls)
    except EndpointError as e:
        raise click.UsageError(f"--nats/--tls-*: {e}") from e
