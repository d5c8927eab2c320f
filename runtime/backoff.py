"""Capped exponential back-off with full jitter, for anything that retries a remote party.

Attempt n (0-based) waits a uniformly random time in [0, min(cap, initial * 2**n)]
("full jitter"): retries spread out instead of arriving in step, and a party that stays
away is asked at most about once per `cap` seconds. Pure: the random source is injectable.

nats-py's reconnect loop and the agent's loops need a delay per attempt rather than a
wrapped call, so this is a delay policy, not a retry decorator (stamina and tenacity wrap
calls).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_seconds: float
    cap_seconds: float
    #: Returns a float in [0, 1); `random.random` unless a test fixes it.
    uniform: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_seconds <= self.cap_seconds:
            raise ValueError("need 0 < initial_seconds <= cap_seconds")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` (0-based)."""
        if attempt < 0:
            raise ValueError("attempt must be non-negative")
        # 2**64 is far past any cap; bounding the exponent keeps the float finite.
        return min(self.cap_seconds, self.initial_seconds * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        """A random wait in [0, ceiling(attempt)]."""
        return self.uniform() * self.ceiling(attempt)


#: The pacing of a loop that retries a failed bus or store operation: the first retry within
#: `initial` (what these loops once waited every time), then twice as long at most each
#: consecutive failure, up to five seconds.
RETRY_CAP_SECONDS = 5.0


@dataclass(slots=True)
class Retry:
    """The consecutive failures of one retrying loop, paced by a Backoff: `next_delay()`
    after each failure, `succeeded()` once the operation works again.

    Every loop that retries failures goes through this (or, for nats-py's reconnects, a
    Backoff directly); periodic timers (poll intervals, checkpoints) are not retries."""

    backoff: Backoff
    failures: int = 0

    @classmethod
    def after(cls, initial_seconds: float, cap_seconds: float = RETRY_CAP_SECONDS) -> Retry:
        return cls(Backoff(initial_seconds, max(initial_seconds, cap_seconds)))

    def next_delay(self) -> float:
        delay = self.backoff.delay(self.failures)
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0
