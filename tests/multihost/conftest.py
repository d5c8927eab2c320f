"""Skip (or, under CI, fail) where network namespaces cannot be made, saying why."""

from __future__ import annotations

import os

import pytest

from .netns import unavailable_reason


@pytest.fixture
def netns_available() -> None:
    """Namespaces can be made here; else skip with the reason, or fail when $CI is set (CI
    runs as root and must run these tests: a skip there would go unnoticed)."""
    reason = unavailable_reason()
    if reason is None:
        return
    message = f"multi-host test (tests/multihost) cannot run: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run it (it runs as root)")
    pytest.skip(message)
