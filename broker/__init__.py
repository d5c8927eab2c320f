"""What the agencies share: the embedded NATS server and the stream provisioning."""

from broker.bus import run_foreground
from broker.server import NatsServer, nats_server_binary
from broker.streams import provision, provision_streams

__all__ = [
    "NatsServer",
    "nats_server_binary",
    "provision",
    "provision_streams",
    "run_foreground",
]
