"""Skip (or, under CI, fail) where network namespaces cannot be made, saying why."""

from __future__ import annotations

import pytest

from ..support import unavailable
from .netns import unavailable_reason


@pytest.fixture
def netns_available() -> None:
    """Namespaces can be made here; else skip saying why, or fail when $CI is set (CI runs
    as root and must run these tests: a skip there would go unnoticed)."""
    reason = unavailable_reason()
    if reason is not None:
        unavailable(f"multi-host test (tests/multihost) cannot run: {reason}")
