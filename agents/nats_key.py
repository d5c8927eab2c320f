"""Following a NATS key rotation: connect with the seed the bus accepts.

docs/PROTOCOL.md §3.4 and §7.7. `nrm keys rotate` writes a new NATS seed into the key file and
keeps the one before it as `previous_nats_seed`; once administrators publish the directory
naming the new NKey, the bus authority authorizes only that key and the old one is cut off.
Either event may reach the agent first:

- the verified directory lists a NATS key other than the one the transport uses: the agent
  switches to the seed of the key the directory lists, if its key file holds it;
- the bus refuses the transport's key (it was cut off before the agent could read the new
  directory): the agent switches to the newest seed of its key file, if that is another one.

`wanted_seed` is the rule, a pure function; `NatsKeyFollower` applies it. The key file is
re-read (in a worker thread: Argon2id is slow) only when it changed on disk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from keys import AgencyKeys, KeyFileError
from keys.directory import Directory
from keys.identity import nats_public_key
from keys.keyfile import KEY_FILE_NAME

log = structlog.get_logger("nrm.nats_key")


def wanted_seed(
    keys: AgencyKeys, *, listed: str | None, in_use: bytes | None, refused: bool
) -> bytes | None:
    """The NATS seed to connect with.

    `listed` is the NKey the trusted directory names for this agency (None if it has none),
    `in_use` the seed of the current connection, `refused` whether the bus refused it.
    """
    if refused:
        # The bus knows a newer directory than the one held (or none lists this key any
        # more): the newest seed, and never back to an older one, so nothing flip-flops.
        return keys.nats_seed
    chosen = None if listed is None else keys.nats_seed_for(listed)
    return in_use if chosen is None else chosen


class NatsKeyFollower:
    """Keeps the transport on the NATS seed `wanted_seed` chooses."""

    def __init__(
        self,
        *,
        agency: str,
        key_dir: Path,
        load: Callable[[], AgencyKeys],
        keys: AgencyKeys,
        directory: Callable[[], Directory | None],
        in_use: Callable[[], bytes | None],
        switch: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.agency = agency
        self._key_path = key_dir / KEY_FILE_NAME
        self._load = load
        self._keys = keys
        self._stamp = self._file_stamp()
        self._directory = directory
        self._in_use = in_use
        self._switch = switch
        self._poked = asyncio.Event()
        self._refused: bytes | None = None  # the seed the bus last refused
        self._directory_changed = False
        self._warned: str | None = None  # the key last reported as refused, to say it once
        self.log = log.bind(agency=agency)

    def poke(self) -> None:
        """A new directory arrived: check whether it names another NATS key."""
        self._directory_changed = True
        self._poked.set()

    def refused(self, seed: bytes | None) -> None:
        """The bus refused the NATS key of `seed`."""
        self._refused = seed
        self._poked.set()

    async def run(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            refused, self._refused = self._refused, None
            changed, self._directory_changed = self._directory_changed, False
            # A late report about a seed the transport no longer uses says nothing; and the
            # directory held is only consulted when it changed: after a cut-off it is older
            # than the bus's authorization and would point back to the refused key.
            refused_now = refused is not None and refused == self._in_use()
            if not (refused_now or changed):
                continue
            try:
                await self.check(refused=refused_now)
            except Exception as e:  # the follower must outlive any one failed switch
                # e.g. the transport could not restart: try again at the next event
                self.log.error("nats_key_switch_failed", error=type(e).__name__)

    async def check(self, *, refused: bool) -> None:
        """Apply `wanted_seed`; switch the transport if it names another seed."""
        directory = self._directory()
        listed = None
        if directory is not None and self.agency in directory:
            listed = directory.agency(self.agency).nats_key
        in_use = self._in_use()
        in_use_key = None if in_use is None else nats_public_key(in_use)
        if not refused and listed in (None, in_use_key):
            return
        await self._reload_if_changed()
        seed = wanted_seed(self._keys, listed=listed, in_use=in_use, refused=refused)
        if seed is None or seed == in_use:
            if refused and self._warned != in_use_key:
                self._warned = in_use_key
                self.log.warning("nats_key_refused", nats_key=in_use_key)
            elif listed not in (None, in_use_key):
                # The directory names a NATS key this key file does not hold: another
                # machine rotated this agency's keys, and this one is being cut off.
                self.log.error("nats_key_not_held", listed=listed, nats_key=in_use_key)
            return
        self.log.info("nats_key_switching", nats_key=nats_public_key(seed), previous=in_use_key)
        self._warned = None
        await self._switch(seed)

    async def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self._keys = await asyncio.to_thread(self._load)
        except KeyFileError as e:
            self.log.error("key_reload_failed", error=str(e))
            return
        self._stamp = stamp

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._key_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)
