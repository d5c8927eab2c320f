"""Erasing one message of a JetStream stream, as the agents and the operators both do it."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError

#: What nats-server answers `STREAM.MSG.DELETE` of a sequence the stream does not hold (any
#: more): error code 10057 with this description.
MSG_DELETE_FAILED = 10057
NO_MESSAGE_FOUND = "no message found"


async def erase_message(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Erase message `seq` of `stream`: `STREAM.MSG.DELETE` with its default, erase, so that
    nats-server overwrites the stored bytes (a purge, an ack of a work-queue message or
    `no_erase` only unlink them, leaving them in the block file). True if erased, False if
    the stream held no such message (erased or removed before); raises anything else."""
    try:
        await js.delete_msg(stream, seq)
    except APIError as e:
        if e.err_code == MSG_DELETE_FAILED and e.description == NO_MESSAGE_FOUND:
            return False
        raise
    return True
