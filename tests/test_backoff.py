"""The back-off policy every retry of a remote party uses (runtime/backoff.py)."""

from __future__ import annotations

import pytest

from runtime.backoff import RETRY_CAP_SECONDS, Backoff, Retry


def test_ceiling_doubles_up_to_the_cap() -> None:
    """Attempt n may wait up to initial * 2**n, never more than the cap."""
    b = Backoff(0.5, 8.0)
    assert [b.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert b.ceiling(10_000) == 8.0


def test_delay_is_full_jitter_within_the_ceiling() -> None:
    """The delay is the random draw times the ceiling: 0 up to the ceiling, never above."""
    draws = iter([0.0, 0.5, 0.999])
    b = Backoff(1.0, 60.0, uniform=lambda: next(draws))
    assert [b.delay(3), b.delay(3), b.delay(3)] == [0.0, 4.0, 8.0 * 0.999]


def test_a_party_that_stays_away_is_asked_about_once_per_cap() -> None:
    """With the random source at its mean, a long outage costs about 2 attempts per cap
    interval, not one per initial delay."""
    b = Backoff(0.5, 60.0, uniform=lambda: 0.5)
    elapsed, attempts = 0.0, 0
    while elapsed < 600:
        elapsed += b.delay(attempts)
        attempts += 1
    assert attempts < 30  # a fixed 0.5 s would be 1200


@pytest.mark.parametrize(("initial", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_bad_bounds_are_refused(initial: float, cap: float) -> None:
    """A zero, negative or above-cap initial delay is a misuse."""
    with pytest.raises(ValueError):
        Backoff(initial, cap)


def test_retry_grows_with_consecutive_failures_and_starts_over_after_a_success() -> None:
    """Retry.after(1.0): the first wait within 1 s, then up to 2, 4, capped at 5; a success
    brings the next failure back to the first."""
    retry = Retry(Backoff(1.0, RETRY_CAP_SECONDS, uniform=lambda: 0.5))
    assert [retry.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    retry.succeeded()
    assert retry.next_delay() == 0.5
    assert Retry.after(8.0).backoff.cap_seconds == 8.0  # never below the initial
