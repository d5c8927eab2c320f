"""The agent's durable state: the facade of agents/storage/ under its historical name."""

from __future__ import annotations

from .storage import *  # noqa: F403
from .storage import __all__ as __all__
