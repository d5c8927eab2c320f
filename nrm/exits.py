"""The exit codes of every `nrm` command, and the one mapping from expected failures to them.

README.md "Exit codes" documents this table; each command's --help says which it uses.

    0  ok
    1  refused or failed: bad input, a file that cannot be read, a bus or ledger that answers
       but refuses, anything not below
    2  usage: an unknown option, a missing or bad argument (click's own)
    3  verification failed: a tampered ledger, a receipt or directory that does not verify,
       a draft that expires within the publishing margin
    4  unreachable: the bus or the ledger cannot be reached (or JetStream is not ready yet);
       trying again later may succeed

`NrmGroup` (the class of the top `nrm` group) runs every command inside `expected_errors()`,
so an expected failure a command did not handle itself still ends as one line on stderr and
its code, never a traceback. A command whose standard output is closed early (`| head -1`)
stops silently with 141, as a program killed by SIGPIPE.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION_FAILED = 3
EXIT_UNREACHABLE = 4

#: The table as README.md shows it (a test compares them).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_ERROR: "refused or failed (bad input, unreadable file, a bus or ledger that refuses)",
    EXIT_USAGE: "usage (unknown option, missing or bad argument)",
    EXIT_VERIFICATION_FAILED: "verification failed (tampered ledger, receipt or directory "
    "that does not verify, draft expiring within the publishing margin)",
    EXIT_UNREACHABLE: "unreachable (bus or ledger cannot be reached, JetStream not ready): "
    "try again",
}

#: The sentence each command's --help ends with.
EXIT_HELP = "Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 verification failed, 4 unreachable."


class Failed(click.ClickException):
    """Refused or failed: exit 1."""

    exit_code = EXIT_ERROR


class VerificationFailed(click.ClickException):
    """Something did not verify: exit 3."""

    exit_code = EXIT_VERIFICATION_FAILED


class Unreachable(click.ClickException):
    """The bus or the ledger cannot be reached: exit 4."""

    exit_code = EXIT_UNREACHABLE


def _is_unreachable(e: BaseException) -> bool:
    import aiohttp
    import nats.errors

    if isinstance(e, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return False  # the server answered with a certificate we refuse: refused
    return isinstance(
        e,
        aiohttp.ClientConnectionError
        | nats.errors.NoServersError
        | nats.errors.ConnectionClosedError
        | nats.errors.TimeoutError
        | TimeoutError
        | ConnectionError,
    )


#: A command whose stdout closes early ends with this, silently: the status of a program
#: killed by SIGPIPE (128 + 13), as `yes | head -1` leaves for `yes`.
EXIT_BROKEN_PIPE = 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports POLLERR on its write end),
    rather than some socket of the command's own having been closed."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def _quit_on_closed_stdout() -> NoReturn:
    """Exit EXIT_BROKEN_PIPE without a message; stdout's unflushed bytes go to /dev/null so
    the interpreter's final flush does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file descriptor (an in-process runner): nothing is flushed later
    sys.exit(EXIT_BROKEN_PIPE)


@contextmanager
def expected_errors() -> Iterator[None]:
    """Every expected exception kind as its message and exit code (click's own exceptions,
    and SystemExit, pass through)."""
    import sqlite3

    from keys import KeyFileError, NrmError, UntrustedInputError
    from keys.ledger_verify import LedgerVerificationError

    from . import admin

    try:
        yield
    except click.exceptions.ClickException:
        raise
    except BrokenPipeError as e:
        if _stdout_closed():  # `| head -1` stopped reading: not an unreachable bus
            _quit_on_closed_stdout()
        raise Unreachable(f"unreachable: {type(e).__name__}: {e}") from e
    except admin.PublishMarginError as e:
        raise VerificationFailed(str(e)) from e
    except admin.BusUnreachableError as e:
        raise Unreachable(str(e)) from e
    except LedgerVerificationError as e:
        raise VerificationFailed(f"FAILED: {e}") from e
    except UntrustedInputError as e:
        raise Failed(f"refused ({e.reason}): {e}") from e
    except Exception as e:
        if _is_unreachable(e):
            raise Unreachable(f"unreachable: {type(e).__name__}: {e}") from e
        if isinstance(e, NrmError | KeyFileError | admin.AdminError | OSError | ValueError):
            raise Failed(str(e)) from e
        if isinstance(e, sqlite3.Error):
            raise Failed(f"database: {e}") from e
        raise


class NrmGroup(click.Group):
    """The top `nrm` group: every command runs inside `expected_errors()`."""

    def invoke(self, ctx: click.Context) -> Any:
        with expected_errors():
            try:
                return super().invoke(ctx)
            finally:  # a closed pipe shows here, not in the interpreter's final flush
                sys.stdout.flush()


def document_exit_codes(group: click.Group) -> None:
    """End the --help of every command under `group` with the exit-code sentence."""
    for command in group.commands.values():
        if command.epilog is None:
            command.epilog = EXIT_HELP
        if isinstance(command, click.Group):
            document_exit_codes(command)
