"""The agency agent: local HTTP API, durable outbox and inbox, JetStream transport."""

from .agent import Agent
from .config import AgentConfig, ApiClient, ConfigError, token_digest
from .transport import Verdict

__all__ = ["Agent", "AgentConfig", "ApiClient", "ConfigError", "Verdict", "token_digest"]
