"""runtime.clock: wall time, shifted only by the test-only offset file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runtime import clock


def test_without_the_variable_it_is_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No offset file configured: now() is time.time() truncated, from_bus is the identity."""
    monkeypatch.delenv(clock.ENV, raising=False)
    before = int(time.time())
    assert before <= clock.now() <= int(time.time())
    assert clock.from_bus(1234.5) == 1234.5


def test_offset_file_shifts_every_reading_and_is_re_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing the file moves the clock at once, and bus stamps move with it."""
    path = tmp_path / "offset"
    monkeypatch.setenv(clock.ENV, str(path))
    assert abs(clock.now() - int(time.time())) <= 1  # a missing file is no offset
    clock.set_offset(path, 86_400 * 400)
    assert abs(clock.now() - (int(time.time()) + 86_400 * 400)) <= 1
    assert clock.from_bus(10.0) == 10.0 + 86_400 * 400
    clock.set_offset(path, 86_400 * 401)
    assert abs(clock.now() - (int(time.time()) + 86_400 * 401)) <= 1


def test_a_malformed_offset_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that writes garbage gets a ValueError, not a silently unshifted clock."""
    path = tmp_path / "offset"
    path.write_text("soon\n")
    monkeypatch.setenv(clock.ENV, str(path))
    with pytest.raises(ValueError):
        clock.now()
